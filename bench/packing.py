"""How much of the computed sequence is real (non-pad) tokens: naive padding vs length
grouping vs packing.  A benchmark, not a test: it prints ratios measured in one run.

    .venv/bin/python bench/packing.py [--results results] [--base resources/base/tiny] [--batch N]

Two parts:

1. **Tiny mixes** -- every seed recipe's adapters, with the tiny overlay applied (the settings
   the embedded default build trains with: max_length 256, per-device batch 2), reading
   ``<results>/<recipe>/data/<adapter>/train.jsonl`` (built by ``snakemake``) and
   tokenizing with the recipe's template and the tiny tokenizer, exactly as
   ``reprotune.train`` does (``encode_dataset``: truncation, drops).

2. **Synthetic full-scale mixes** -- the same adapters at their full-scale settings
   (max_length, per-device batch, gradient accumulation from the recipe) on sample lengths
   drawn from ASSUMED length distributions of the real datasets (log-normal per source
   format, in Llama-2 tokens, template included; see ``LENGTHS``), mixed by the recipe's
   counts, or by fraction x ``ROWS`` (assumed dataset sizes), scaled to at most 20,000
   samples.  These distributions are assumptions (no dataset access here), chosen from the
   datasets' published descriptions: single-turn instruction sets have medians of a few
   hundred tokens, multi-turn chats around a thousand with a heavy tail, and plain-text
   documents (RedPajama, fanfics) are mostly longer than the context and get truncated.

Layouts (per micro-batch of ``batch`` rows; computed tokens = rows x longest row):

* ``naive``   -- one sample per row, shuffled (seeded), padded to the longest in the batch;
* ``grouped`` -- one sample per row, order from transformers' ``get_length_grouped_indices``
  (what ``group_by_length: true`` uses), padded per batch;
* ``packed``  -- ``reprotune.tokenize.pack`` rows (<= max_length, several samples each),
  shuffled, padded per batch (``PackedCollator(flatten=False)``);
* ``flat``    -- the layout training uses with ``packing: true`` (``PackedCollator(flatten=True)``
  on every attention backend): each batch of packed rows is one flattened row, so computed
  tokens = the packed rows' tokens; real / computed is 100% exactly when ``pack`` neither
  drops nor adds a token.

``rows/sample`` is packed rows / samples (fewer rows = fewer forward passes per epoch).
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reprotune.tokenize import encode_dataset, pack  # noqa: E402

SEED = 1234
MAX_SYNTHETIC = 20_000

# (median tokens, sigma of log) per source format -- ASSUMED, see the module docstring
LENGTHS = {
    "platypus": (260, 0.8),     # short STEM / logic Q&A
    "dolphin": (230, 0.8),      # FLAN instruction + system prompt + GPT-4 answer
    "openorca": (330, 0.75),    # system prompt + question + GPT-4 explanation
    "airoboros": (420, 0.8),
    "oasst1": (420, 0.9),       # best-ranked conversation paths
    "sharegpt": (1100, 0.9),    # multi-turn ChatGPT / GPT-4 chats (samantha, sharegpt4, puffin)
    "orca_chat": (900, 1.0),    # multi-turn Orca chats
    "orca_mini": (300, 0.7),    # explain-tuned WizardLM / Alpaca / Dolly
    "tulu_v2": (650, 1.1),      # mixture incl. ShareGPT, FLAN, CoT, code
    "text": (2500, 1.0),        # plain-text documents, truncated at max_length
}
# approximate rows of each full dataset (for fraction-based mixes) -- ASSUMED
ROWS = {"platypus": 24_926, "dolphin": 890_000, "openorca": 1_000_000, "orca_chat": 198_000,
        "text": 50_000, "orca_mini": 54_000, "tulu_v2": 326_000}


def _batches(lengths: list[int], order: list[int], batch: int) -> tuple[int, int]:
    real = computed = 0
    for i in range(0, len(order), batch):
        chunk = [lengths[j] for j in order[i:i + batch]]
        real += sum(chunk)
        computed += max(chunk) * len(chunk)
    return real, computed


def measure(lengths: list[int], max_length: int, batch: int, group_batch: int) -> dict:
    """Real/computed for the three layouts on one list of (truncated) sample lengths."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    rnd = random.Random(SEED)
    order = list(range(len(lengths)))
    rnd.shuffle(order)
    naive = _batches(lengths, order, batch)
    g = torch.Generator().manual_seed(SEED)
    grouped = _batches(lengths, get_length_grouped_indices(lengths, group_batch, generator=g), batch)
    rows = [{"input_ids": [0] * n, "labels": [0] * n} for n in lengths]
    packed_rows, stats = pack(rows, max_length)
    plens = [len(r["input_ids"]) for r in packed_rows]
    porder = list(range(len(plens)))
    rnd.shuffle(porder)
    packed = _batches(plens, porder, batch)
    g = torch.Generator().manual_seed(SEED)
    pgrouped = _batches(plens, get_length_grouped_indices(plens, group_batch, generator=g), batch)
    return {"samples": len(lengths), "naive": naive[0] / naive[1], "grouped": grouped[0] / grouped[1],
            "packed": packed[0] / packed[1], "packed_grouped": pgrouped[0] / pgrouped[1],
            "flat": sum(lengths) / sum(plens),
            "rows_per_sample": stats["rows"] / len(lengths),
            "mean_len": sum(lengths) / len(lengths)}


def _row(name: str, r: dict, max_length: int, batch: int) -> str:
    return (f"{name:<44} {r['samples']:>7} {r['mean_len']:>8.0f} {max_length:>6} {batch:>3}  "
            f"{100 * r['naive']:>6.1f}% {100 * r['grouped']:>6.1f}% {100 * r['packed']:>6.1f}% "
            f"{100 * r['packed_grouped']:>6.1f}% {100 * r['flat']:>6.1f}%  "
            f"{r['rows_per_sample']:>6.3f}")


HEADER = (f"{'adapter':<44} {'samples':>7} {'mean len':>8} {'maxlen':>6} {'bs':>3}  "
          f"{'naive':>7} {'grouped':>7} {'packed':>7} {'pk+grp':>7} {'flat':>7}  {'rows/sample':>6}")


def synthetic_lengths(recipe: dict, adapter: str, max_length: int, rnd: random.Random) -> list[int]:
    mix = recipe["adapters"][adapter]["data"]["mix"]
    want = {}
    for src, m in sorted(mix.items()):
        fmt = recipe["sources"][src]["format"]
        want[src] = m["count"] if "count" in m else m.get("fraction", 1.0) * ROWS.get(fmt, 50_000)
    scale = min(1.0, MAX_SYNTHETIC / sum(want.values()))
    out = []
    for src, n in want.items():
        median, sigma = LENGTHS[recipe["sources"][src]["format"]]
        for _ in range(max(1, round(n * scale))):
            out.append(min(max_length, max(16, int(rnd.lognormvariate(math.log(median), sigma)))))
    return out


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    from reprotune import templates
    from reprotune.io import read_jsonl
    from reprotune.recipe import load_recipe

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--base", type=Path, default=ROOT / "resources" / "base" / "tiny")
    ap.add_argument("--batch", type=int, default=None, help="override the per-device batch size")
    ns = ap.parse_args(argv)
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    worst_packed = 1.0
    worst_flat = 1.0

    print("1. tiny mixes (tiny overlay settings, tiny tokenizer, real templates)")
    print(HEADER)
    tok = AutoTokenizer.from_pretrained(ns.base) if ns.base.is_dir() else None
    for path in recipes:
        recipe = load_recipe(path, ROOT / "overlays" / "tiny.yaml")
        for adapter in sorted(recipe["adapters"]):
            ad = recipe["adapters"][adapter]
            t = ad["train"]
            data = ns.results / recipe["id"] / "data" / adapter / "train.jsonl"
            if tok is None or not data.is_file():
                print(f"{recipe['id'] + '/' + adapter:<44} (missing {data if tok else ns.base}; run snakemake)")
                continue
            rows, _ = encode_dataset(read_jsonl(data), templates.get(ad["template"]), tok, int(t["max_length"]))
            batch = ns.batch or int(t["per_device_batch_size"])
            r = measure([len(x["input_ids"]) for x in rows], int(t["max_length"]), batch,
                        batch * int(t["gradient_accumulation_steps"]))
            worst_packed = min(worst_packed, r["packed"])
            worst_flat = min(worst_flat, r["flat"])
            print(_row(f"{recipe['id']}/{adapter}", r, int(t["max_length"]), batch))

    print("\n2. synthetic mixes, full-scale settings, ASSUMED real length distributions (see docstring)")
    print(HEADER)
    rnd = random.Random(SEED)
    for path in recipes:
        recipe = load_recipe(path)
        for adapter in sorted(recipe["adapters"]):
            t = recipe["adapters"][adapter]["train"]
            max_length = int(t["max_length"])
            batch = ns.batch or int(t["per_device_batch_size"])
            lengths = synthetic_lengths(recipe, adapter, max_length, rnd)
            r = measure(lengths, max_length, batch, batch * int(t.get("gradient_accumulation_steps", 1)))
            worst_packed = min(worst_packed, r["packed"])
            worst_flat = min(worst_flat, r["flat"])
            print(_row(f"{recipe['id']}/{adapter}", r, max_length, batch))
    print(f"\nworst real-token fraction with packing as trained (flat): {100 * worst_flat:.1f}% (target >= 97%); "
          f"packed rows padded per batch instead: {100 * worst_packed:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
