# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
CORES  ?= all

.PHONY: demo test venv slurm bench-deps clean-results verify locks images
venv: $(VENV)/.installed

# The same hash-locked set as the CPU image (docker/Dockerfile.cpu): host and image run the
# same versions. torch==2.13.0+cpu comes from /opt/wheels here (pip's find-links), from
# TORCH_CPU_INDEX elsewhere; pip refuses any file whose sha256 is not in the lock.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
LOCAL_TORCH := $(wildcard /opt/wheels/torch-*)
PIP_TORCH := $(if $(LOCAL_TORCH),--find-links /opt/wheels,--extra-index-url $(TORCH_CPU_INDEX))
$(VENV)/.installed: envs/cpu.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps $(PIP_TORCH) -r envs/cpu.lock
	@# moved to envs/slurm.lock (see `slurm`): off a .venv made before, or every snakemake imports them
	$(PY) -m pip uninstall -q -y snakemake-executor-plugin-slurm snakemake-executor-plugin-slurm-jobstep 2>/dev/null
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

# The SLURM executor plugins (envs/slurm.lock) go into their own directory, which only
# bin/snakemake-slurm puts on the import path: Snakemake imports every executor plugin it can
# find at start-up, and importing the slurm one runs sinfo/sacct/squeue/scontrol (seconds of
# time-outs where no SLURM controller answers). `pip check` fails if one of their
# dependencies is missing from envs/cpu.lock.
SLURM_PLUGINS := .venv-slurm
slurm: $(SLURM_PLUGINS)/.installed
$(SLURM_PLUGINS)/.installed: envs/slurm.lock $(VENV)/.installed
	rm -rf $(SLURM_PLUGINS)
	$(PY) -m pip install -q --require-hashes --no-deps --target $(SLURM_PLUGINS) -r envs/slurm.lock
	PYTHONPATH=$(SLURM_PLUGINS) $(PY) -m pip check
	@touch $@

# Bench-only extras (TRL) into .venv: --no-deps, so they can never pull or replace torch.
bench-deps: $(VENV)/.bench-installed
$(VENV)/.bench-installed: envs/bench.lock $(VENV)/.installed
	$(PY) -m pip install -q --require-hashes --no-deps -r envs/bench.lock
	$(PY) -m pip check
	@touch $@

# Re-resolve envs/*.in into hash-locked envs/*.lock (needs PyPI). Versions already in a lock
# are kept unless the spec asks otherwise; `make locks UPGRADE=--upgrade` moves everything.
TOOLS := .venv-tools
UV_COMPILE = $(TOOLS)/bin/uv pip compile --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --no-header --no-annotate $(UPGRADE)
UV_TORCH_CPU := $(if $(LOCAL_TORCH),--find-links /opt/wheels,--extra-index-url $(TORCH_CPU_INDEX) --index-strategy unsafe-best-match)
$(TOOLS)/bin/uv: envs/tools.lock
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --require-hashes --no-deps -r envs/tools.lock
	@touch $@
locks: $(TOOLS)/bin/uv
	$(UV_COMPILE) envs/tools.in -o envs/tools.lock
	$(UV_COMPILE) $(UV_TORCH_CPU) envs/cpu.in -o envs/cpu.lock
	$(UV_COMPILE) envs/cuda.in -o envs/cuda.lock
	$(UV_COMPILE) --no-deps envs/cuda-build.in -o envs/cuda-build.lock
	$(UV_COMPILE) --no-deps envs/slurm.in -o envs/slurm.lock
	$(UV_COMPILE) --no-deps envs/bench.in -o envs/bench.lock

# Build the images of docker/, tag them by content, push them to REGISTRY and write their
# digests into docker/images.lock (IMAGES=cpu or cuda for one; IMAGE_ARGS for build args,
# e.g. IMAGE_ARGS="--build-arg BASE_IMAGE=... --volume /opt/wheels:/wheels:ro").
IMAGES ?= cpu cuda
images: venv
	$(PY) -m reprotune images build --registry "$(REGISTRY)" $(foreach i,$(IMAGES),--image $(i)) $(IMAGE_ARGS)

demo: venv
	# rules call `python -m reprotune` and `accelerate`: put the venv first on PATH
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" snakemake --cores $(CORES) --configfile config.yaml

# with the SLURM plugins: the slurm-profile plan and the integration tests use them
test: venv slurm
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

verify: venv
	# build the default tiny configuration twice from scratch (two temp roots), compare the
	# sha256 of every file under results/; exits non-zero if any differ (VERIFY_ARGS: --keep, --recipes ...)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m reprotune verify $(VERIFY_ARGS)

clean-results:
	rm -rf results resources .snakemake
