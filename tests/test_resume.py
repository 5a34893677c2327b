"""Resume after SIGKILL: a real training subprocess is killed, the same command is rerun, and the
final adapter is byte-identical to an uninterrupted run's (CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reprotune import tinybase
from reprotune.io import sha256_file
from reprotune.train import COMPLETE_MARKER, checkpoint_is_complete

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPEC = {"recipe": "t", "adapter": "main", "template": "oasst",
        "train": {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "max_steps": 6,
                  "max_length": 96, "per_device_batch_size": 2, "learning_rate": 1e-3, "lr_scheduler": "cosine",
                  "warmup_steps": 1, "save_steps": 2, "seed": 11, "group_by_length": True}}
HOOK_LINE = "test hook: hanging before marking checkpoint-4 complete"


def _cmd(env_dir: Path, name: str, *hooks: str) -> list[str]:
    """``accelerate launch`` of the train stage; with ``hooks`` through the test entry tests/_train_hooks.py."""
    entry = [str(ROOT / "tests" / "_train_hooks.py"), *hooks] if hooks else ["-m", "reprotune.train"]
    return [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "configs/accelerate/cpu.yaml"),
            "--num_cpu_threads_per_process", "1", *entry, "--spec", json.dumps(SPEC),
            "--data", str(env_dir / "data"), "--base", str(env_dir / "base"), "--out", str(env_dir / name),
            "--work", str(env_dir / f"work-{name}")]


def _env(**extra):
    return dict(os.environ, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false", **extra)


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def env_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    (root / "data").mkdir()
    recs = [{"id": f"t/{i}", "source": "t", "system": "be brief" if i % 3 else "",
             "messages": [{"role": "user", "content": "question %d about the quick fox" % i + " and more" * (i % 4)},
                          {"role": "assistant", "content": f"the quick brown fox answer {i}" + " yes" * (i % 5)}]}
            for i in range(14)]
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    tinybase.build({"vocab_size": 512}, [root / "data" / "train.jsonl"], root / "base")
    return root


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_adapter(env_dir):
    ref = subprocess.run(_cmd(env_dir, "ref"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-4000:]

    # run 2: the hook stops it after checkpoint-4's files are written but before its completion
    # marker, i.e. in the middle of saving; then the whole process group gets SIGKILL
    log_path = env_dir / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_cmd(env_dir, "run", "--hang-before-mark", "4"), cwd=ROOT, env=_env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while HOOK_LINE not in log_path.read_text(errors="replace"):
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "the training run never reached checkpoint-4"
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ckpts = env_dir / "work-run" / "checkpoints"
    assert checkpoint_is_complete(ckpts / "checkpoint-2")
    assert (ckpts / "checkpoint-4" / "adapter_model.safetensors").is_file()  # written ...
    assert not (ckpts / "checkpoint-4" / COMPLETE_MARKER).exists()           # ... but never marked complete
    assert not (env_dir / "run").exists()

    # run 3: the same command; it resumes from the last COMPLETE checkpoint
    again = subprocess.run(_cmd(env_dir, "run"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "removing incomplete checkpoint-4" in again.stderr
    assert "resuming from checkpoint-2" in again.stderr
    assert _hashes(env_dir / "run") == _hashes(env_dir / "ref")
    rows = [json.loads(line) for line in (env_dir / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert not ckpts.exists()  # cleaned after success
    # TensorBoard events stay in the work dir, never in the adapter output
    assert any(p.name.startswith("events.out.tfevents") for p in (env_dir / "work-run" / "tensorboard").iterdir())
    assert not any("tfevents" in p.name for p in (env_dir / "run").iterdir())
