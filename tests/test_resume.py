"""Resume after SIGKILL, and after SIGTERM / SIGUSR1 through ``reprotune.launch``: a real training
subprocess is stopped, the same command is rerun, and the final adapter is byte-identical to an
uninterrupted run's (CPU)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _tokens import tokens_for

from reprotune import tinybase
from reprotune.io import sha256_file
from reprotune.train import COMPLETE_MARKER, _read_log_rows, checkpoint_is_complete

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPEC = {"recipe": "t", "adapter": "main", "template": "oasst",
        "train": {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "max_steps": 6,
                  "max_length": 96, "per_device_batch_size": 2, "learning_rate": 1e-3, "lr_scheduler": "cosine",
                  "warmup_steps": 1, "save_steps": 2, "seed": 11, "group_by_length": True}}
HOOK_LINE = "test hook: hanging before marking checkpoint-4 complete"
DEADLINE_S = 300  # guards against a hung run; nothing is asserted about durations


def _cmd(env_dir: Path, name: str, *hooks: str) -> list[str]:
    """``accelerate launch`` of the train stage; with ``hooks`` through the test entry tests/_train_hooks.py."""
    entry = [str(ROOT / "tests" / "_train_hooks.py"), *hooks] if hooks else ["-m", "reprotune.train"]
    return [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "configs/accelerate/cpu.yaml"),
            "--num_cpu_threads_per_process", "1", *entry, "--spec", json.dumps(SPEC),
            "--data", str(tokens_for(env_dir / "data", env_dir / "base", SPEC)), "--base", str(env_dir / "base"),
            "--out", str(env_dir / name),
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


@pytest.fixture(scope="module")
def ref(env_dir):
    """The uninterrupted run's output directory."""
    p = subprocess.run(_cmd(env_dir, "ref"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return env_dir / "ref"


def _steps(partial_log: Path) -> list[int]:
    """The steps in a running job's step log (a line being written is left out)."""
    return [r["step"] for r in _read_log_rows(partial_log)] if partial_log.is_file() else []


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        tree = []
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait(timeout=60)


@pytest.mark.slow
# SIGTERM: held at step 3's end, so the stop is exactly there. SIGUSR1: the run goes on freely after
# the signal is sent at step 2 and stops at the first step end after it arrives; the hold at the
# last step (6) only keeps a fast machine from finishing the run before the signal lands.
@pytest.mark.parametrize("sig,hooks,first,last",
                         [(signal.SIGTERM, ("--wait-for-stop-at", "3"), 3, 3),
                          (signal.SIGUSR1, ("--wait-for-stop-at", "6"), 3, 6)],
                         ids=["SIGTERM-held-at-step-3", "SIGUSR1"])
def test_signal_to_the_launcher_checkpoints_and_a_rerun_resumes(env_dir, ref, sig, hooks, first, last):
    name = f"sig-{sig.name}"
    launcher = [sys.executable, "-m", "reprotune.launch", "--"]
    partial = env_dir / f"work-{name}" / "train_log.partial.jsonl"
    log_path = env_dir / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*launcher, *_cmd(env_dir, name, *hooks)], cwd=ROOT, env=_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + DEADLINE_S
            while max(_steps(partial), default=0) < 2:
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "the training run never reached step 2"
                time.sleep(0.1)
            proc.send_signal(sig)
            proc.wait(timeout=DEADLINE_S)
        finally:
            if proc.poll() is None:
                _kill_tree(proc)
    text = log_path.read_text()
    assert proc.returncode != 0, text[-4000:]
    assert f"[reprotune.launch] forwarding {sig.name} to process group" in text
    assert "returned non-zero exit status 75" in text  # train's EX_TEMPFAIL, seen by accelerate
    m = re.search(rf"interrupted by {sig.name} at step (\d+): checkpoint-(\d+) is complete; "
                  r"rerunning the same command resumes from it", text)
    assert m and m.group(1) == m.group(2), text[-4000:]
    step = int(m.group(1))
    assert first <= step <= last  # at the first step end after the signal
    assert checkpoint_is_complete(env_dir / f"work-{name}" / "checkpoints" / f"checkpoint-{step}")
    assert _steps(partial) == list(range(1, step + 1))
    assert not (env_dir / name).exists()

    again = subprocess.run([*launcher, *_cmd(env_dir, name)], cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=DEADLINE_S)
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"resuming from checkpoint-{step}" in again.stderr
    assert _hashes(env_dir / name) == _hashes(ref)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_adapter(env_dir, ref):
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
    assert _hashes(env_dir / "run") == _hashes(ref)
    rows = [json.loads(line) for line in (env_dir / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert not ckpts.exists()  # cleaned after success
    # TensorBoard events stay in the work dir, never in the adapter output
    assert any(p.name.startswith("events.out.tfevents") for p in (env_dir / "work-run" / "tensorboard").iterdir())
    assert not any("tfevents" in p.name for p in (env_dir / "run").iterdir())


CHILD = """
import os, signal, sys, time
got = []
inherited = [signal.getsignal(s) is signal.SIG_IGN for s in (signal.SIGTERM, signal.SIGUSR1)]
signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
print("ready", *inherited, os.getpgid(0) == os.getpid(), flush=True)
while not got:
    time.sleep(0.05)
print("child got", signal.Signals(got[0]).name, flush=True)
"""


# the way torchrun starts its workers: each in a session (and process group) of its own
NEW_SESSION = """
import subprocess, sys
sys.exit(subprocess.run([sys.executable, "-c", sys.argv[1]], start_new_session=True).returncode)
"""


@pytest.mark.parametrize("program", [["-c", CHILD], ["-c", NEW_SESSION, CHILD]],
                         ids=["child", "grandchild-in-its-own-session"])
def test_launcher_ignores_in_the_child_forwards_and_never_reports_success(program):
    proc = subprocess.Popen([sys.executable, "-m", "reprotune.launch", "--", sys.executable, *program],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # inherited SIG_IGN for SIGTERM and SIGUSR1, own process group
        assert proc.stdout.readline().split() == ["ready", "True", "True", "True"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.strip() == "child got SIGTERM"
    assert "[reprotune.launch] forwarding SIGTERM to process group" in err
    assert proc.returncode == 75  # the child exited 0, but it was told to stop: never a success


def test_launcher_exit_status():
    from reprotune.launch import exit_status, main

    run = [sys.executable, "-m", "reprotune.launch", "--", sys.executable, "-c"]
    assert subprocess.run([*run, "import sys; sys.exit(3)"], cwd=ROOT).returncode == 3
    assert subprocess.run([*run, "import os; os.kill(os.getpid(), 9)"], cwd=ROOT).returncode == 128 + 9
    assert exit_status(0, forwarded=False) == 0 and exit_status(0, forwarded=True) == 75
    assert exit_status(-15, forwarded=True) == 128 + 15
    assert main([]) == 2 and main(["--", "/nonexistent/command"]) == 127
