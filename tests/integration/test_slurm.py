"""A tiny build submitted through a real one-node SLURM with the Snakemake slurm executor."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from reprotune.verify import tree_hashes

from .conftest import HERE, RECIPE, REPO, env, run, tree_copy


def test_tiny_build_through_slurm_equals_the_local_build(ci_host, slurm_plugins, host_results, tmp_path):
    tree = tree_copy(tmp_path / "tree")
    profile = HERE / "profiles" / "slurm-ci"
    # the SLURM entry point: the plugins are on the import path of this snakemake and, through
    # the job environment (sbatch --export=ALL), of the jobstep snakemake inside each job
    r = run([str(REPO / "bin" / "snakemake-slurm"), "--profile", str(profile), "--config", f"recipes=[{RECIPE}]"],
            cwd=tree, env=dict(env(), REPROTUNE_PYTHON=sys.executable, REPROTUNE_SLURM_PLUGINS=str(slurm_plugins)),
            timeout=1500)
    out = r.stdout + r.stderr
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out)
    # every job but the target `all` (a local rule) went through sbatch
    n_jobs = int(re.search(r"^(\d+) of \1 steps \(100%\) done", out, re.M).group(1))
    assert len(submitted) == n_jobs - 1 >= 10
    slurm_ids = {sid for _, sid, _ in submitted}
    assert len(slurm_ids) == len(submitted)
    for _, sid, log in submitted:
        assert Path(log.rstrip(").")).is_file(), log  # job logs kept (slurm-keep-successful-logs)
    # inside each job the stage saw its SLURM job id (the runtime line of every rule log)
    seen = set()
    base_logs = sorted((tree / "logs" / "base").glob("*.log"))  # the twin's build and its download
    assert len(base_logs) == 2, base_logs
    for log in [*(tree / "logs" / RECIPE).rglob("*.log"), *base_logs]:
        if "tensorboard" in log.parts or "slurm" in log.parts:
            continue
        m = re.search(r"^reprotune [^:]+: .* slurm job: (\d+)$", log.read_text(), re.M)
        assert m, log
        seen.add(m.group(1))
    assert seen <= slurm_ids and len(seen) >= 12
    # nothing left in the queue, and the outputs equal the local build's, byte for byte
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=60).stdout.strip() == ""
    assert tree_hashes(tree / "results" / RECIPE) == tree_hashes(host_results / RECIPE)
