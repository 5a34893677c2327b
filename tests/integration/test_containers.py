"""The CPU image built from docker/ + envs/, and a tiny build run with --use-singularity in it."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from reprotune.verify import tree_hashes

from .conftest import HERE, RECIPE, env, run

# files that record the build's environment (Python of the image, container digests) and are
# allowed to differ from the host build; everything else must be byte-identical
ENV_RECORDS = {"provenance.json", "README.md", "adapter_cards/main.md", "report/card.html"}


def _lock(tree: Path) -> dict:
    return json.loads((tree / "docker/images.lock").read_text())["images"]


def _podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True, timeout=600).stdout.strip()


def test_image_is_pushed_pinned_non_root_and_runs_the_locked_versions(cpu_image):
    e = _lock(cpu_image)["cpu"]
    assert e["repository"] == "localhost:5000/reprotune-cpu"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", e["digest"]) and re.fullmatch(r"c-[0-9a-f]{16}", e["tag"])
    ref = f"{e['repository']}@{e['digest']}"
    # the registry serves the digest the lock names
    manifest = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{http_code}",
                               "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
                               "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json",
                               f"http://localhost:5000/v2/reprotune-cpu/manifests/{e['digest']}"],
                              capture_output=True, text=True, timeout=60)
    assert manifest.stdout == "200"
    _podman("pull", "-q", ref)
    assert _podman("image", "inspect", "--format", "{{.Config.User}}", ref) == "reprotune"
    assert _podman("run", "--rm", ref, "id", "-u") == "1000"
    assert _podman("run", "--rm", ref, "python", "--version").startswith("Python 3.11.")
    # the image has exactly the pinned versions of envs/cpu.lock (host .venv installs the same lock)
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (cpu_image / "envs/cpu.lock").read_text(), re.M))
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    frozen = dict(ln.split("==", 1) for ln in _podman("run", "--rm", ref, "python", "-m", "pip", "freeze", "--all")
                  .splitlines() if "==" in ln and not ln.startswith("pip=="))
    assert {norm(k): v for k, v in frozen.items()} == {norm(k): v for k, v in pins.items()}
    # the build-time CA bundle and wheel mounts left nothing behind (at most an empty mount point)
    left = _podman("run", "--rm", ref, "sh", "-c", "cat /run/host-ca.crt 2>/dev/null | wc -c; ls -A /wheels 2>/dev/null | wc -l")
    assert left.split() == ["0", "0"]


def test_tiny_build_with_use_singularity_runs_every_rule_in_the_image(cpu_image, host_results, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    shutil.copy2(HERE / "apptainer-podman-adapter", shim / "apptainer")  # test-only adapter
    run([str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--use-singularity",
         "--config", f"recipes=[{RECIPE}]"], cwd=cpu_image, env=env([shim]), timeout=1500)
    lock = _lock(cpu_image)["cpu"]
    url = f"docker://{lock['repository']}@{lock['digest']}"
    # each rule ran inside the image: its log starts with the runtime line written from within
    logs = sorted(p for p in (cpu_image / "logs" / RECIPE).rglob("*.log") if "tensorboard" not in p.parts)
    base_logs = sorted((cpu_image / "logs" / "base").glob("*.log"))  # the twin's build and its download
    assert len(base_logs) == 2, base_logs
    logs += base_logs
    assert len(logs) >= 12
    for log in logs:
        text = log.read_text()
        assert re.search(r"^reprotune [\w -]+(\(rank 0\))?: python 3\.11\.\d+ \(/opt/venv/bin/python3?\), uid 0, "
                         r"container: podman \(/run/\.containerenv\)", text, re.M), (log, text[:500])
    # same bytes as the host build, except the files that record where it ran
    got, want = tree_hashes(cpu_image / "results" / RECIPE), tree_hashes(host_results / RECIPE)
    assert set(got) == set(want)
    differ = {k for k in got if got[k] != want[k]}
    assert differ <= ENV_RECORDS, sorted(differ - ENV_RECORDS)
    assert len(got) - len(ENV_RECORDS) >= 25
    prov = json.loads((cpu_image / "results" / RECIPE / "provenance.json").read_text())
    host = json.loads((host_results / RECIPE / "provenance.json").read_text())
    assert prov["containers"] == {s: url for s in ("clean", "download", "evaluate", "merge", "mix", "tokenize", "train")}
    assert prov["containers_note"] is None and "--use-singularity" in prov["command"]
    assert host["containers"] == {}
    changed = {k for k in set(prov) | set(host) if prov.get(k) != host.get(k)}
    assert changed <= {"python", "containers", "containers_note", "command"}, changed
    assert url in (cpu_image / "results" / RECIPE / "README.md").read_text()
