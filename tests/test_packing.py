"""Packing keeps samples separate; length-grouped batching; the packed training path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _tokens import tokens_for
import torch

from reprotune.tokenize import IGNORE_INDEX, pack
from reprotune.train import PackedCollator

ROOT = Path(__file__).resolve().parents[1]

# Logit tolerance (fp32).  Packed and unpacked runs do the same arithmetic on differently
# shaped tensors, so matmul/softmax reductions may sum in another order: a few ulp of the
# logits (|logit| < 1 here, fp32 eps 1.2e-7).  Measured worst case on this model: 1.9e-7 for
# sdpa and eager, flattened or padded rows.  1e-5 leaves 50x margin, while one sample
# attending to another (positions not restarted) moves logits by ~0.5 (measured).
ATOL = 1e-5


def _row(ids, first_label=IGNORE_INDEX):
    return {"input_ids": list(ids), "attention_mask": [1] * len(ids), "labels": [first_label] + list(ids[1:])}


def test_pack_is_best_fit_decreasing_and_deterministic():
    rows = [_row(range(10, 10 + n)) for n in (5, 9, 3, 7, 2, 4)]
    packed, stats = pack(rows, 10)
    # longest first, each into the fullest row it still fits: 9 opens A (1 left), 7 opens B (3 left),
    # 5 opens C (5 left), 4 -> C (1 left), 3 -> B (0 left), 2 fits nowhere and opens D
    assert [r["seq_lens"] for r in packed] == [[9], [7, 3], [5, 4], [2]]
    assert stats == {"samples": 6, "rows": 4, "tokens": 30, "fill": 0.75}
    assert packed == pack(rows, 10)[0]
    r = packed[1]
    assert r["position_ids"] == list(range(7)) + list(range(3))
    assert r["input_ids"] == rows[3]["input_ids"] + rows[2]["input_ids"]
    # every sample's first token is never a target, even when the row had a label there
    rows2 = [_row([5, 6, 7], first_label=5), _row([8, 9], first_label=8)]
    (only,), _ = pack(rows2, 8)
    assert only["labels"] == [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]
    with pytest.raises(ValueError, match="more than the packing capacity"):
        pack([_row(range(11))], 10)


def test_pack_fills_rows_with_many_short_samples():
    import random

    rnd = random.Random(0)
    rows = [_row([1] * rnd.randint(20, 300)) for _ in range(500)]
    packed, stats = pack(rows, 1024)
    assert stats["rows"] == -(-stats["tokens"] // 1024)  # optimal: no row more than the bound needs
    assert stats["fill"] > 0.98
    assert all(len(r["input_ids"]) <= 1024 for r in packed)
    assert sorted(n for r in packed for n in r["seq_lens"]) == sorted(len(r["input_ids"]) for r in rows)


def test_packed_collator_layouts():
    packed, _ = pack([_row([4, 5, 6]), _row([7, 8]), _row([9])], 3)  # rows [3], [2, 1]
    b = PackedCollator(pad_id=0)(packed)
    assert set(b) == {"input_ids", "labels", "position_ids"}  # no attention mask: the positions define it
    assert b["input_ids"].tolist() == [[4, 5, 6], [7, 8, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]
    assert b["labels"].tolist() == [[-100, 5, 6], [-100, 8, -100]]
    packed, _ = pack([_row([4, 5, 6]), _row([7, 8])], 3)  # rows [3], [2]: the second is padded
    b = PackedCollator(pad_id=0)(packed)
    assert b["input_ids"].tolist() == [[4, 5, 6], [7, 8, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]  # the pad is a block of its own
    assert b["labels"].tolist() == [[-100, 5, 6], [-100, 8, -100]]
    f = PackedCollator(pad_id=0, flatten=True)(packed)
    assert f["input_ids"].tolist() == [[4, 5, 6, 7, 8]]
    assert f["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert f["labels"].tolist() == [[-100, 5, 6, -100, 8]]


@pytest.fixture(scope="module")
def model_and_rows():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, use_cache=False)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in (7, 13, 3, 20, 1, 9, 30, 2):
        ids = torch.randint(3, 300, (n,), generator=g).tolist()
        rows.append(_row(ids))
    return model, rows


def _segments(packed, flatten):
    """(batch row, start, sample ids) of every sample in the collated batch."""
    out, base = [], 0
    for i, r in enumerate(packed):
        off = 0
        for n in r["seq_lens"]:
            out.append((0 if flatten else i, (base if flatten else 0) + off, r["input_ids"][off:off + n]))
            off += n
        base += len(r["input_ids"])
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("flatten", [False, True])
def test_packed_logits_equal_each_sample_alone(model_and_rows, attn, flatten):
    model, rows = model_and_rows
    model.config._attn_implementation = attn
    packed, stats = pack(rows, 40)
    assert stats["rows"] < len(rows) and max(len(r["seq_lens"]) for r in packed) >= 3
    batch = PackedCollator(pad_id=0, flatten=flatten)(packed)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        worst = 0.0
        for row, start, ids in _segments(packed, flatten):
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            worst = max(worst, (logits[row, start:start + len(ids)] - alone).abs().max().item())
    assert worst < ATOL, worst
    # the check can fail: without restarting positions the later samples see the earlier ones
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"]).logits
    row, start, ids = next(s for s in _segments(packed, flatten) if s[1] > 0)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([ids])).logits[0]
    assert (leaky[row, start:start + len(ids)] - alone).abs().max().item() > 100 * ATOL


@pytest.mark.parametrize("flatten", [False, True])
def test_packed_loss_is_the_token_mean_of_the_samples_and_boundaries_do_not_leak(model_and_rows, flatten):
    model, rows = model_and_rows
    model.config._attn_implementation = "sdpa"
    rows = [dict(r, labels=list(r["input_ids"])) for r in rows]  # a label on every first token too
    packed, _ = pack(rows, 40)
    batch = PackedCollator(pad_id=0, flatten=flatten)(packed)
    labels = batch["labels"]
    # no target sits on a sample's first token (position id 0): nothing is predicted across a boundary
    assert (labels[batch["position_ids"] == 0] == IGNORE_INDEX).all()
    with torch.no_grad():
        packed_loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=labels).loss
        total, count = 0.0, 0
        for r in rows:
            ids = torch.tensor([r["input_ids"]])
            n = len(r["input_ids"]) - 1
            if n == 0:
                continue
            total += model(input_ids=ids, labels=ids).loss.item() * n
            count += n
    assert int((labels != IGNORE_INDEX).sum()) == count
    assert abs(packed_loss.item() - total / count) < ATOL


def test_group_by_length_sampler():
    import random

    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from reprotune.train import _sampling_args

    lengths = list(range(2, 66))
    random.Random(0).shuffle(lengths)
    rows = [_row([1] * n) for n in lengths]
    args = TrainingArguments(output_dir="unused", per_device_train_batch_size=2, use_cpu=True, report_to=[],
                             **_sampling_args(TrainingArguments, True))
    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    torch.manual_seed(0)
    order = list(sampler)
    assert sorted(order) == list(range(len(rows)))

    def padded(seq):  # computed tokens of batches of 2, each padded to its longest row
        return sum(2 * max(seq[i:i + 2]) for i in range(0, len(seq), 2))

    grouped = padded([lengths[i] for i in order])
    assert grouped < 0.5 * (padded(lengths) - sum(lengths)) + sum(lengths)  # less than half the padding
    assert _sampling_args(TrainingArguments, False)["train_sampling_strategy"] == "random"


@pytest.mark.slow
def test_training_with_packing_runs(tmp_path):
    from reprotune import tinybase

    data = tmp_path / "data"
    data.mkdir()
    recs = [{"id": f"t/{i}", "source": "t", "system": "",
             "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(24)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    tinybase.build({"vocab_size": 300}, [data / "train.jsonl"], tmp_path / "base")
    spec = {"recipe": "t", "adapter": "main", "template": "oasst",
            "train": {"method": "lora", "lora": {"r": 2, "alpha": 4}, "max_steps": 3, "max_length": 128,
                      "per_device_batch_size": 2, "learning_rate": 1e-3, "save_steps": 2, "seed": 1,
                      "packing": True, "group_by_length": True}}
    cmd = [sys.executable, "-m", "reprotune.train", "--spec", json.dumps(spec),
           "--data", str(tokens_for(data, tmp_path / "base", spec)),
           "--base", str(tmp_path / "base"), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONHASHSEED="0"))
    assert p.returncode == 0, p.stderr[-4000:]
    assert "packing: on, sdpa: batch flattened into one row, no padding; per-sample causal" in p.stderr
    s = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert s["packing"]["samples"] == 24 and s["packing"]["rows"] < 24 / 3
    assert s["settings"]["effective"]["packing"] is True and s["settings"]["effective"]["group_by_length"] is True
    assert s["steps"] == 3 and s["world_size"] == 1
    # two packed rows per step carry more trained tokens than two single samples could
    one_sample = s["data"]["trainable_tokens"] / 24
    assert all(r["tokens"] > 2 * one_sample for r in map(json.loads, (tmp_path / "out" / "train_log.jsonl")
                                                        .read_text().splitlines()))
