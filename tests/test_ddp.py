"""Multi-process training: real 2-process DDP on CPU (gloo), and the launch configs the recipes select."""
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

import psutil
import pytest
from _tokens import tokens_for
import yaml

from reprotune import plan, tinybase
from reprotune.recipe import load_recipe
from reprotune.train import _read_log_rows, checkpoint_is_complete

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ACC = ROOT / "configs" / "accelerate"


def _records(n=16):
    return [{"id": f"t/{i}", "source": "t", "system": "",
             "messages": [{"role": "user", "content": f"question {i} about the fox"},
                          {"role": "assistant", "content": f"the quick brown fox answer {i}"}]} for i in range(n)]


def _ddp_cmd(tmp_path: Path, **train) -> list[str]:
    """Two-process DDP training on CPU (gloo) of a tiny adapter; builds data and base on first use."""
    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()), encoding="utf-8")
        tinybase.build({"vocab_size": 400}, [data / "train.jsonl"], tmp_path / "base")
    spec = {"recipe": "t", "adapter": "main", "template": "tulu",
            "train": {"method": "lora", "lora": {"r": 2, "alpha": 4}, "max_steps": 3, "max_length": 64,
                      "per_device_batch_size": 2, "learning_rate": 1e-3, "save_steps": 2, "seed": 3, **train}}
    # NOT `--cpu --num_processes 2`: accelerate then silently starts one process
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
            "-m", "reprotune.train", "--spec", json.dumps(spec), "--data", str(tokens_for(data, tmp_path / "base", spec)),
            "--base", str(tmp_path / "base"),
            "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]


ENV = dict(os.environ, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false")


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    p = subprocess.run(_ddp_cmd(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=400, env=ENV)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-6000:]
    err = p.stderr
    assert "world size 2 (this is process 0)" in err and "world size 2 (this is process 1)" in err
    assert err.count("[reprotune.train] wrote ") == 1  # one process writes the output
    out = tmp_path / "out"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # tokens are summed over both processes: 2 processes x 2 rows per step, every sample trains tokens
    one = summary["data"]["trainable_tokens"] / summary["data"]["kept"]
    assert all(r["tokens"] > 3 * one for r in rows), (rows, one)
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss_curve.png").is_file()
    assert sorted(q.name for q in tmp_path.iterdir() if not q.name.startswith("tokens-")) == ["base", "data", "out", "work"]  # no temp dirs left
    assert not (tmp_path / "work" / "checkpoints").exists()


def _worker(launcher: psutil.Process, rank: int) -> psutil.Process | None:
    for p in launcher.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "reprotune.train" in p.cmdline() and p.environ().get("RANK") == str(rank):
                return p
    return None


@pytest.mark.slow
def test_ddp_ranks_agree_on_a_stop_signal_only_one_of_them_got(tmp_path):
    """SIGUSR1 to rank 1 alone: both ranks checkpoint at the same step end and stop.  SIGTERM to the
    torchrun agent (the launcher's child): it keeps the ignore the launcher set and goes on."""
    partial = tmp_path / "work" / "train_log.partial.jsonl"
    log_path = tmp_path / "ddp.log"
    cmd = [sys.executable, "-m", "reprotune.launch", "--", *_ddp_cmd(tmp_path, max_steps=8, save_steps=100)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        launcher = psutil.Process(proc.pid)
        try:
            deadline = time.monotonic() + 400  # guards against a hung run; no duration is asserted
            while not (partial.is_file() and partial.read_text().count("\n") >= 1):
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "the DDP run never logged a step"
                time.sleep(0.1)
            launcher.children()[0].send_signal(signal.SIGTERM)  # accelerate launch = the torchrun agent
            _worker(launcher, 1).send_signal(signal.SIGUSR1)
            proc.wait(timeout=400)
        finally:
            for p in [*launcher.children(recursive=True), launcher] if proc.poll() is None else []:
                with contextlib.suppress(psutil.Error):
                    p.kill()
    text = log_path.read_text()
    assert proc.returncode != 0 and "SignalException" not in text, text[-4000:]
    m = re.search(r"interrupted by SIGUSR1 at step (\d+): checkpoint-\1 is complete", text)  # logged by rank 0
    assert m, text[-4000:]
    step = int(m.group(1))
    assert text.count("exitcode  : 75") == 2  # both ranks exit with EX_TEMPFAIL (torchrun's failure report)
    assert checkpoint_is_complete(tmp_path / "work" / "checkpoints" / f"checkpoint-{step}")
    assert [r["step"] for r in _read_log_rows(partial)] == list(range(1, step + 1))
    assert not (tmp_path / "out").exists()


def test_launch_configs_select_the_deepspeed_jsons():
    want = {"single_gpu": ("NO", 1), "multi_gpu": ("MULTI_GPU", 8), "deepspeed_zero2": ("DEEPSPEED", 8),
            "deepspeed_zero3": ("DEEPSPEED", 8), "cpu": ("NO", 1)}
    for name, (dist, n) in want.items():
        cfg = yaml.safe_load((ACC / f"{name}.yaml").read_text())
        assert cfg["distributed_type"] == dist and cfg["num_processes"] == n, name
        assert cfg["use_cpu"] is (name == "cpu"), name
    for stage in (2, 3):
        cfg = yaml.safe_load((ACC / f"deepspeed_zero{stage}.yaml").read_text())
        ds = ROOT / cfg["deepspeed_config"]["deepspeed_config_file"]
        assert ds == ROOT / "configs" / "deepspeed" / f"zero{stage}.json"
        assert json.loads(ds.read_text())["zero_optimization"]["stage"] == stage
        assert cfg["deepspeed_config"]["zero3_init_flag"] is (stage == 3)


@pytest.mark.parametrize("num_gpus,deepspeed,expected", [
    (0, None, "cpu.yaml"),
    (1, None, "single_gpu.yaml"),
    (4, None, "multi_gpu.yaml --num_processes 4"),
    (8, "zero2", "deepspeed_zero2.yaml --num_processes 8"),
    (8, "zero3", "deepspeed_zero3.yaml --num_processes 8"),
])
def test_accelerate_args_pick_the_config(num_gpus, deepspeed, expected):
    recipe = load_recipe(ROOT / "recipes" / "tulu-v2-qlora-70b.yaml")
    recipe["adapters"]["main"]["train"].update(num_gpus=num_gpus, deepspeed=deepspeed)
    args = plan.accelerate_args(recipe, "main", None)
    assert args == f"--config_file {ACC / expected}"
    cfg_path = Path(args.split()[1])
    assert cfg_path.is_file()
    # an explicit override (config.yaml accelerate_config) wins
    assert plan.accelerate_args(recipe, "main", "configs/accelerate/cpu.yaml") == f"--config_file {ACC / 'cpu.yaml'}"


def test_runtime_choices_name_the_deepspeed_json_only_on_gpu(caplog):
    import logging

    from reprotune.recipe import resolve_train
    from reprotune.train import runtime_choices

    s = resolve_train({"method": "full", "learning_rate": 1e-5, "per_device_batch_size": 1, "max_length": 64,
                       "deepspeed": "zero3", "num_gpus": 8})
    with caplog.at_level(logging.INFO, logger="reprotune.train"):
        assert runtime_choices(s, cuda=False)["deepspeed"] is None
    assert "deepspeed: zero3 is ignored on CPU" in caplog.text
    assert runtime_choices(s, cuda=True)["deepspeed"] == str(ROOT / "configs" / "deepspeed" / "zero3.json")
