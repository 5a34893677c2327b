# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
CORES  ?= all

.PHONY: demo test venv clean-results verify
venv: $(VENV)/.installed

$(VENV)/.installed: envs/requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	# every version is pinned in the lock; torch==2.13.0 resolves to the local CPU wheel here
	$(PY) -m pip install -q -r envs/requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

demo: venv
	# rules call `python -m reprotune` and `accelerate`: put the venv first on PATH
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" snakemake --cores $(CORES) --configfile config.yaml

test: venv
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

verify: venv
	# build the default tiny configuration twice from scratch (two temp roots), compare the
	# sha256 of every file under results/; exits non-zero if any differ (VERIFY_ARGS: --keep, --recipes ...)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m reprotune verify $(VERIFY_ARGS)

clean-results:
	rm -rf results resources .snakemake
