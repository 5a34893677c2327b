"""Integration tests against real software: podman images, `--use-singularity`, one-node SLURM.

They run only with REPROTUNE_INTEGRATION=1 (.ci/run sets it) and as root, because the
session set-up (tests/integration/setup.sh) installs Debian packages and starts daemons
(an image registry, munged, slurmctld, slurmd); teardown.sh stops them by PID.
REPROTUNE_CI_WORK (default /tmp/reprotune-ci) keeps the base image's build files, the
registry's data and the SLURM state between runs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECIPE = "tulu-v2-qlora-70b"
BASE_IMAGE = "localhost/reprotune-ci-base:bookworm"
REGISTRY = "localhost:5000"
VENV_BIN = Path(sys.executable).parent

ENABLED = os.environ.get("REPROTUNE_INTEGRATION") == "1"
SKIP_REASON = ("integration tests are off: set REPROTUNE_INTEGRATION=1 to run them (.ci/run does; "
               "they install podman, slurm-wlm, munge, debootstrap and docker-registry as root)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
            if not ENABLED:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
            elif os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="integration tests need root (Debian packages, daemons)"))


@pytest.fixture(scope="session")
def ci_host():
    """Packages, base image, registry and SLURM up for the session; stopped at the end."""
    work = Path(os.environ.get("REPROTUNE_CI_WORK", "/tmp/reprotune-ci"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, W=str(work))
    r = subprocess.run(["bash", str(HERE / "setup.sh")], env=env, capture_output=True, text=True, timeout=1800)
    print(r.stderr[-4000:], file=sys.stderr)
    try:
        assert r.returncode == 0, f"setup.sh failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
        yield work
    finally:
        subprocess.run(["bash", str(HERE / "teardown.sh")], env=env, timeout=120)


@pytest.fixture(scope="session")
def slurm_plugins():
    """The SLURM executor plugins, kept out of the venv (envs/slurm.in): `make slurm` (which
    `make test` runs) installs them into .venv-slurm/."""
    plugins = Path(os.environ.get("REPROTUNE_SLURM_PLUGINS", REPO / ".venv-slurm"))
    assert (plugins / "snakemake_executor_plugin_slurm").is_dir(), f"no SLURM plugins in {plugins}: run make slurm"
    # off the venv itself, so that the test shows the jobs find them through the entry point
    assert subprocess.run([sys.executable, "-c", "import snakemake_executor_plugin_slurm"], env=env(),
                          capture_output=True).returncode != 0, "the SLURM plugin is installed in the venv itself"
    return plugins


def tree_copy(dst: Path) -> Path:
    """The working tree as git sees it (tracked + untracked, not ignored): what a clone has."""
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def env(extra_path: list[Path] = ()) -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = os.pathsep.join([*map(str, extra_path), str(VENV_BIN), e.get("PATH", "")])
    e.pop("PYTHONPATH", None)
    return e


def run(cmd: list[str], cwd: Path, timeout: int = 1800, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="session")
def host_results():
    """results/ of the host build of RECIPE (shared with tests/test_verify.py's build A)."""
    sys.path.insert(0, str(REPO / "tests"))
    import _tinybuild as tb

    r, a, _ = tb.verified()
    assert r.returncode == 0, r.stdout[-3000:]
    assert tb.RECIPE == RECIPE
    return a / "results"


@pytest.fixture(scope="session")
def cpu_image(ci_host, tmp_path_factory):
    """A tree copy whose docker/images.lock names the CPU image built here and pushed to the
    local registry (base image swapped in by build arg, torch from the local wheel directory)."""
    tree = tree_copy(tmp_path_factory.mktemp("container-tree"))
    ca = "/etc/ssl/certs/ca-certificates.crt"
    cmd = [sys.executable, "-m", "reprotune", "images", "build", "--registry", REGISTRY, "--image", "cpu",
           "--insecure", "--lock", str(tree / "docker/images.lock"),
           "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "TORCH_INDEX=",
           "--build-arg", "PIP_ARGS=--find-links /wheels", "--volume", "/opt/wheels:/wheels:ro"]
    if Path(ca).is_file():  # the host's CA bundle for pip behind a TLS-intercepting proxy
        cmd += ["--build-arg", "PIP_CERT_PATH=/run/host-ca.crt", "--volume", f"{ca}:/run/host-ca.crt:ro"]
    r = run(cmd, cwd=tree, timeout=2400, env=dict(env(), PYTHONPATH=str(tree / "src")))
    print(r.stderr[-2000:], file=sys.stderr)
    return tree
