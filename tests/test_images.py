"""Images lock, per-rule containers, the --use-singularity guard, profiles and the full-scale plan."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from reprotune import images as img
from reprotune.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
DIGESTS = {"cpu": "sha256:" + "1" * 64, "cuda": "sha256:" + "2" * 64}


SLURM_PLUGINS = ROOT / ".venv-slurm"
needs_slurm_plugins = pytest.mark.skipif(
    not (SLURM_PLUGINS / "snakemake_executor_plugin_slurm").is_dir(),
    reason="the SLURM executor plugins are not installed: make slurm (make test does)")


def _env():
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    return e


def snakemake_slurm(*args, **kw) -> subprocess.CompletedProcess:
    """bin/snakemake-slurm (the SLURM entry point) with this interpreter's snakemake."""
    env = dict(_env(), REPROTUNE_PYTHON=sys.executable)
    return subprocess.run([str(ROOT / "bin/snakemake-slurm"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, **kw)


def _built_lock(tmp_path: Path) -> Path:
    data = json.loads((ROOT / "docker/images.lock").read_text())
    for name, e in data["images"].items():
        e.update(repository=f"registry.example/reprotune-{name}", tag="c-0", digest=DIGESTS[name])
    p = tmp_path / "images.lock"
    p.write_text(json.dumps(data))
    return p


def test_committed_lock_is_valid_and_lists_every_image():
    images = img.load()
    assert sorted(images) == ["cpu", "cuda"]
    for name, e in images.items():
        assert (ROOT / e["dockerfile"]).is_file()
        for rel in e["inputs"]:
            assert (ROOT / rel).is_file(), rel
            # what the Dockerfile installs is what the content tag hashes
            assert Path(rel).name in (ROOT / e["dockerfile"]).read_text(), (name, rel)


@pytest.mark.parametrize("digest", ["sha256:12", "md5:" + "a" * 64, 7])
def test_bad_digest_is_one_line_naming_the_key(tmp_path, digest):
    data = json.loads((ROOT / "docker/images.lock").read_text())
    data["images"]["cpu"]["digest"] = digest
    p = tmp_path / "images.lock"
    p.write_text(json.dumps(data))
    with pytest.raises(img.ImagesError, match=r"images\.cpu\.digest must be null or 'sha256:'"):
        img.load(p)


def test_url_and_stage_images(tmp_path):
    built = img.load(_built_lock(tmp_path))
    unbuilt = img.load()
    tiny = load_recipe(ROOT / "recipes/tulu-v2-qlora-70b.yaml", ROOT / "overlays/tiny.yaml")
    full = load_recipe(ROOT / "recipes/tulu-v2-qlora-70b.yaml")
    assert {img.image_for(s, tiny) for s in ("download", "clean", "mix", "train", "merge", "evaluate")} == {"cpu"}
    assert [img.image_for(s, full) for s in ("download", "clean", "mix", "train", "merge", "evaluate", "card")] == \
        ["cpu", "cpu", "cpu", "cuda", "cuda", "cuda", "cpu"]
    assert img.url(built, "cuda") == f"docker://registry.example/reprotune-cuda@{built['cuda']['digest']}"
    assert img.url(unbuilt, "cpu") == "docker://reprotune-cpu:unbuilt"
    with pytest.raises(img.ImagesError, match=r"no digest for them; build and push them first: make images"):
        img.require_built(unbuilt, {"cpu"})
    img.require_built(built, {"cpu", "cuda"})


def test_content_tag_follows_dockerfile_locks_and_build_args(tmp_path):
    for rel in ("docker/Dockerfile.cpu", "envs/cpu.lock"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((ROOT / rel).read_bytes())
    e = img.load()["cpu"]
    t0 = img.content_tag(e, [], tmp_path)
    assert re.fullmatch(r"c-[0-9a-f]{16}", t0)
    assert img.content_tag(e, [], tmp_path) == t0
    assert img.content_tag(e, ["BASE_IMAGE=x"], tmp_path) != t0
    (tmp_path / "envs/cpu.lock").write_bytes((ROOT / "envs/cpu.lock").read_bytes() + b"\n")
    assert img.content_tag(e, [], tmp_path) != t0


def test_every_rule_declares_a_container_from_the_lock(tmp_path):
    """Load the workflow with a lock that has digests and evaluate each rule's container."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    lock = _built_lock(tmp_path)
    images = img.load(lock)
    allowed = {img.url(images, n) for n in img.NAMES}
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[ROOT / "config.yaml"], config={"images_lock": str(lock)}),
            snakefile=ROOT / "Snakefile", workdir=tmp_path)
        rules = list(wf._workflow.rules)
        recipes = wf._workflow.globals["RECIPES"]
    commands = [r for r in rules if r.shellcmd]
    assert len(commands) >= 14
    for rule in commands:
        c = rule.container_img
        assert c, f"rule {rule.name} has no container"
        wcs = [SimpleNamespace(recipe=rid) for rid in recipes] if "recipe" in rule.wildcard_names else [SimpleNamespace()]
        for wc in wcs:
            got = c(wc) if callable(c) else c
            assert got in allowed, (rule.name, got)
    # the rules without a command (the target `all`) are the only ones without a container
    assert {r.name for r in rules if not r.shellcmd} == {"all"}


def test_lint_is_clean():
    r = subprocess.run([SNAKEMAKE, "--lint"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations, your workflow is in a good condition" in r.stdout + r.stderr


def test_use_singularity_without_digests_stops_with_one_line(tmp_path):
    r = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--use-singularity", "--directory", str(tmp_path),
                        "--configfile", str(ROOT / "config.yaml")],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert err == [f"reprotune: error: --use-singularity needs the images cpu but {ROOT / 'docker/images.lock'} "
                   "has no digest for them; build and push them first: make images REGISTRY=<registry> IMAGES='cpu'"]
    assert "Traceback" not in r.stdout + r.stderr


@needs_slurm_plugins
def test_full_scale_plan_with_slurm_profile_asks_gpus_only_where_needed(tmp_path):
    """The plan a cluster user reviews: every job of all five recipes with its resources."""
    r = snakemake_slurm("-n", "--profile", "profiles/slurm", "--configfile", str(ROOT / "config.yaml"),
                        "--config", "overlay=null", "--directory", str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", r.stdout + r.stderr):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m:
            continue
        wc = dict(re.findall(r"(\w+)=([^,\s]+)", (re.search(r"^\s+wildcards: (.*)$", block, re.M) or [None, ""])[1]))
        res = dict(re.findall(r"(\w+)=([^,\s]*)", re.search(r"^\s+resources: (.*)$", block, re.M).group(1)))
        jobs.append((m.group(1), wc, res))
    by_rule = {}
    for rule, wc, res in jobs:
        by_rule.setdefault(rule, []).append((wc, res))
    assert len(by_rule["train"]) == 7
    for wc, res in by_rule["train"]:
        assert int(res["gpu"]) >= 1 and int(res["mem_mb"]) > 0 and int(res["runtime"]) > 0, (wc, res)
        assert res["slurm_partition"] == "gpu"
    qlora70 = [res for wc, res in by_rule["train"] if wc["recipe"] in ("tulu-v2-qlora-70b", "dolphin-orca-platypus-70b")]
    assert len(qlora70) == 2 and all(int(r["gpu"]) == 8 for r in qlora70)
    for rule in ("download_source", "clean_source", "mix", "download_base"):
        assert by_rule[rule], rule
        for wc, res in by_rule[rule]:
            assert int(res.get("gpu", 0)) == 0 and res["slurm_partition"] == "cpu", (rule, wc, res)
    for rule in ("merge", "evaluate"):
        assert all(int(res["gpu"]) == 1 for wc, res in by_rule[rule])
    # the tokenize stage, a CPU job of its own: on the cpu partition, with the profile's 8 CPUs
    assert len(by_rule["tokenize"]) == 7
    assert all(res["slurm_partition"] == "cpu" and res["cpus_per_task"] == "8" for _, res in by_rule["tokenize"])
    assert {wc["recipe"] for wc, _ in by_rule["train"]} == {
        "dolphin-orca-platypus-70b", "fashiongpt-v1.1", "llama2-13b-orca-8k", "tulu-v2-qlora-70b", "orca-mini-13b"}
    # every job asks for the warning signal before its time limit (profiles/slurm: preemption)
    assert {res.get("slurm_extra") for _, _, res in jobs} == {"--signal=TERM@300"}


def test_slurm_entry_point_without_plugins_is_one_line(tmp_path):
    r = subprocess.run([str(ROOT / "bin/snakemake-slurm"), "-n", "--profile", "profiles/slurm"], cwd=ROOT,
                       env=dict(_env(), REPROTUNE_SLURM_PLUGINS=str(tmp_path)), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"reprotune: error: the SLURM executor plugins are not installed in {tmp_path}; "
                                     "install them with: make slurm"]


@needs_slurm_plugins
def test_slurm_profile_retries_and_its_signal_passes_the_plugins_validation(monkeypatch):
    """The plugin refuses slurm_extra options it manages itself (validation.py); --signal is not one."""
    import ast

    import yaml

    monkeypatch.syspath_prepend(str(SLURM_PLUGINS))
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
    from snakemake_interface_common.exceptions import WorkflowError

    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["retries"] >= 2
    # a Python string literal (the plan test above sees Snakemake evaluate it to the same)
    extra = ast.literal_eval(profile["default-resources"]["slurm_extra"])
    assert extra == "--signal=TERM@300"

    def job(value):
        return SimpleNamespace(resources=SimpleNamespace(slurm_extra=value))

    validate_slurm_extra(job(extra))
    with pytest.raises(WorkflowError, match="runtime/time limit"):
        validate_slurm_extra(job(extra + " --time=10"))


def test_provenance_spec_records_the_image_of_every_stage_only_under_containers(tmp_path):
    from reprotune import plan

    images = img.load(_built_lock(tmp_path))
    full = load_recipe(ROOT / "recipes/tulu-v2-qlora-70b.yaml")
    host = plan.provenance_spec(full, None)
    assert host["containers"] == {} and "--use-singularity" not in host["command"]
    spec = plan.provenance_spec(full, None, images)
    cpu, cuda = (f"docker://registry.example/reprotune-{n}@{DIGESTS[n]}" for n in ("cpu", "cuda"))
    assert spec["containers"] == {"clean": cpu, "download": cpu, "evaluate": cuda, "merge": cuda, "mix": cpu,
                                  "tokenize": cpu, "train": cuda}
    assert spec["command"][:4] == ["snakemake", "--cores", "all", "--use-singularity"]


def test_images_build_rejects_a_bad_registry_before_building(tmp_path):
    for bad in ("", " ghcr.io/x", "https://ghcr.io/x"):
        with pytest.raises(img.ImagesError, match="--registry must be a registry host"):
            img.build(["cpu"], bad, lock_path=ROOT / "docker/images.lock")


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_dockerfiles_pin_bases_hash_lock_installs_and_end_non_root(name):
    text = (ROOT / f"docker/Dockerfile.{name}").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    # base images: a build arg whose default is pinned by digest
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    froms = re.findall(r"^FROM \$\{(\w+)\}", text, re.M)
    assert froms and all(re.search(r"@sha256:[0-9a-f]{64}$", args[a]) for a in froms), froms
    # every pip install from an index is hash-checked (the last stage installs local wheels only)
    installs = re.findall(r"pip (?:install|wheel)[^\n]*(?:\\\n[^\n]*)*", text)
    assert installs
    for inst in installs:
        assert "--require-hashes" in inst or "--no-index" in inst, inst
    # the final stage runs as a non-root user and python is the venv's
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^ENV PATH=/opt/venv/bin:\$PATH", text, re.M)
    # no secrets baked in: no ENV/ARG holding tokens, the CA bundle only as a mounted path
    assert not re.search(r"(?i)^(ENV|ARG) \w*(TOKEN|PASSWORD|SECRET)", text, re.M)
    assert "COPY" not in " ".join(ln for ln in lines if "crt" in ln)
