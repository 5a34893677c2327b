"""Resident memory a training process spends on its data, per training token: in-process encoding
vs the tokenize stage's memory-mapped Arrow.

For each size (default about 5M and 20M training tokens: the tokens of the kept rows, bos and
eos included) this writes that many synthetic chat rows as a mix-stage ``train.jsonl``
(normalized records, seeded: ``data_prep.chat_rows``), builds a Llama-2 twin tokenizer
(``twin.write_tokenizer`` on the fixture text, SentencePiece BPE, fast), and runs in fresh
subprocesses, each reading ``/proc/self/status`` after its imports and again at the end:

* ``stage``: the tokenize stage, ``reprotune.dataset.build(threads=1)`` (rows encoded with the
  ``tulu`` template, Arrow written); its rows/s, one process, Arrow write included;
* ``encode`` (what train did before the tokenize stage): ``reprotune.tokenize.encode_dataset`` on
  train.jsonl in the training process, the rows kept as Python lists;
* ``rows``: the memory-mapped data path alone: ``reprotune.dataset.load`` on the stage's output,
  then ``ds[i]`` for every row in order, so every page of the Arrow files is touched;
* ``mmap`` (what train does now): the same load, then one pass over every row the way the
  Trainer reads them: a ``torch.utils.data.DataLoader`` with a seeded ``RandomSampler`` (the
  Trainer's default), batches of ``--batch-size`` fetched through ``Dataset.__getitems__`` and
  padded by the train collator (``reprotune.train.make_collator``).

Reported per child: growth of VmRSS, of RssAnon and of RssFile (each in bytes per training token,
current values at the end, the rows still held), and of the peak (VmHWM).

Which one is the per-process cost: RssAnon is memory only this process has (heap, Python
objects, the tokenizer's buffers); eight training processes on a node pay it eight times and
the kernel can only swap it. RssFile is pages of files mapped into the process, here the
memory-mapped Arrow files: they are the node's page cache, one copy shared by every process
that maps them, and clean (the kernel drops and re-reads them under memory pressure instead of
failing). So the per-process cost of the memory-mapped path is its RssAnon growth (target: at most 1 byte
per token, flat across sizes); its RssFile growth is one node-wide copy of the tokens (int32
input_ids and labels: about 8 bytes per token). For ``encode`` nearly all growth is RssAnon. The
difference between ``mmap`` and ``rows`` is the Trainer's, not the data's: ``RandomSampler``
holds ``torch.randperm(n).tolist()``, a Python list of one int per row (about 36 bytes a row).

Printed: one table (one line per size and child), then per size the ratios encode / mmap of RSS
and of RssAnon growth per token, the RssAnon of ``rows`` and ``mmap`` against the target, and
the stage's rows/s. Wall and process CPU seconds are given for
each child (the machine may be shared: a wall time far above its CPU time was stretched by
another load).

    .venv/bin/python bench/train_memory.py                         # ~5M and ~20M tokens
    .venv/bin/python bench/train_memory.py --tokens 200000,800000  # smoke run
"""
from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_prep import REPO, chat_record, chat_rows, run_child, write_chat_jsonl  # noqa: E402

BASE = "meta-llama/Llama-2-70b-hf"
TEMPLATE = "tulu"
MAX_LENGTH = 4096
FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
KINDS = ("stage", "encode", "rows", "mmap")


def status_kb() -> dict[str, int]:
    """The memory fields of /proc/self/status, in KiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in FIELDS:
                out[key] = int(value.split()[0])
    return out


def _spec() -> dict:
    return {"recipe": "bench", "adapter": "main", "template": TEMPLATE, "max_length": MAX_LENGTH,
            "packing": False, "tokenizer": {"use_fast": True}}


# --------------------------------------------------------------------------- children
def _imports() -> None:
    """What a training process has imported anyway, before the first reading (so that the growth
    is the data's, not the libraries')."""
    import datasets  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401

    from reprotune import base_tokenizer, tokenize  # noqa: F401


def _measured(fn) -> dict:
    """Run ``fn()`` between two status readings; its result plus growth, wall and CPU seconds."""
    gc.collect()
    before = status_kb()
    t0, c0 = time.perf_counter(), time.process_time()
    result, keep = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.collect()
    after = status_kb()
    del keep
    return {**result, "wall_s": wall, "cpu_s": cpu, "before_kb": before,
            "growth_kb": {k: after[k] - before[k] for k in FIELDS}}


def child_stage(work: Path) -> dict:
    _imports()
    from reprotune import dataset

    def run():
        report = dataset.build(_spec(), work / "data", work / "tok", work / "tokens", threads=1)
        return {"rows": report["train"]["kept"], "tokens": report["train"]["tokens"]}, None

    res = _measured(run)
    res["arrow_bytes"] = sum(p.stat().st_size for p in (work / "tokens" / "train").glob("*.arrow"))
    return res


def child_encode(work: Path) -> dict:
    _imports()
    from reprotune import templates
    from reprotune.base_tokenizer import load
    from reprotune.io import read_jsonl
    from reprotune.tokenize import encode_dataset

    tok = load(work / "tok")
    tpl = templates.get(TEMPLATE)

    def run():
        rows, stats = encode_dataset(read_jsonl(work / "data" / "train.jsonl"), tpl, tok, MAX_LENGTH)
        return {"rows": stats["kept"], "tokens": stats["tokens"]}, rows

    return _measured(run)


def child_mmap(work: Path, batch_size: int) -> dict:
    """The Trainer's way: a DataLoader with a seeded random sampler and the train collator."""
    _imports()
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from reprotune import dataset
    from reprotune.base_tokenizer import load
    from reprotune.train import make_collator

    collator = make_collator(load(work / "tok"), packing=False)

    def run():
        tokens = dataset.load(work / "tokens")
        sampler = RandomSampler(tokens.rows, generator=torch.Generator().manual_seed(0))
        seen = 0
        for batch in DataLoader(tokens.rows, batch_size=batch_size, sampler=sampler, collate_fn=collator):
            seen += int(batch["attention_mask"].sum())
        return {"rows": len(tokens.rows), "tokens": seen}, tokens

    return _measured(run)


def child_rows(work: Path) -> dict:
    """The data path alone: ``ds[i]`` for every row, in order (no sampler, no collator)."""
    _imports()
    from reprotune import dataset

    def run():
        rows = dataset.load(work / "tokens").rows
        seen = sum(len(rows[i]["input_ids"]) for i in range(len(rows)))
        return {"rows": len(rows), "tokens": seen}, rows

    return _measured(run)


# --------------------------------------------------------------------------- parent
def _tokenizer(out: Path) -> Path:
    from reprotune import bases, twin

    corpus = sorted({line for p in (REPO / "fixtures" / "hub").rglob("*.json*") if p.is_file()
                     for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()})
    profile = bases.get(BASE)
    out.mkdir(parents=True, exist_ok=True)
    twin.write_tokenizer(corpus, profile, out)
    (out / "config.json").write_text(json.dumps({"model_type": profile["config"]["model_type"]}))
    return out


def tokens_per_row(tokdir: Path, n: int = 2000) -> float:
    """Mean tokens of one kept row (tulu template, this tokenizer), from the first ``n`` rows."""
    from reprotune import templates
    from reprotune.base_tokenizer import load
    from reprotune.tokenize import encode_dataset

    _, stats = encode_dataset((chat_record(r) for r in chat_rows(n, dirty=False)), templates.get(TEMPLATE),
                              load(tokdir), MAX_LENGTH)
    return stats["tokens"] / stats["kept"]


def _line(target: int, kind: str, r: dict) -> str:
    g = {k: v * 1024 / r["tokens"] for k, v in r["growth_kb"].items()}
    return (f"{target / 1e6:>6.1f}M {r['rows']:>8,} {r['tokens']:>11,}  {kind:<7} {g['VmRSS']:>9.2f} "
            f"{g['RssAnon']:>9.2f} {g['RssFile']:>9.2f} {g['VmHWM']:>9.2f} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f}")


def _per_token(r: dict, key: str) -> float:
    return r["growth_kb"][key] * 1024 / r["tokens"]


def measure(root: Path, tokdir: Path, target: int, rows: int, batch_size: int) -> dict:
    work = root / f"t{target}"
    (work / "data").mkdir(parents=True, exist_ok=True)
    if not (work / "tok").exists():
        (work / "tok").symlink_to(tokdir)
    size = write_chat_jsonl(work / "data" / "train.jsonl", rows)
    print(f"{target / 1e6:.1f}M tokens: {rows:,} rows, train.jsonl {size / 1e6:.0f} MB", flush=True)
    out = {}
    for kind in KINDS:
        out[kind] = run_child(__file__, ["--child", kind, "--work", str(work), "--batch-size", str(batch_size)])
        print("  " + _line(target, kind, out[kind]), flush=True)
    return out


def report(results: list[tuple[int, dict]]) -> None:
    print("\n target     rows      tokens  child   RSS B/tok anon B/tok file B/tok peak B/tok  wall s   cpu s")
    for target, r in results:
        for kind in KINDS:
            print(_line(target, kind, r[kind]))
    print()
    for target, r in results:
        e, m, s = r["encode"], r["mmap"], r["stage"]
        assert len({r[k]["tokens"] for k in KINDS}) == 1, {k: r[k]["tokens"] for k in KINDS}
        anon, rows_anon = _per_token(m, "RssAnon"), _per_token(r["rows"], "RssAnon")
        print(f"{target / 1e6:.1f}M: encode/mmap per-token growth: RSS {_per_token(e, 'VmRSS') / _per_token(m, 'VmRSS'):.1f}x, "
              f"RssAnon {_per_token(e, 'RssAnon') / max(anon, 1e-3):.0f}x | RssAnon per process: mmap {anon:.3f}, "
              f"rows {rows_anon:.3f} B/token ({'ok' if max(anon, rows_anon) <= 1 else 'over'}: target <= 1) | "
              f"Arrow files {s['arrow_bytes'] / s['tokens']:.2f} B/token")
        print(f"      stage (1 process, Arrow write included): {s['rows'] / s['wall_s']:,.0f} rows/s wall, "
              f"{s['rows'] / s['cpu_s']:,.0f} rows per CPU-s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="5000000,20000000", help="comma-separated training-token counts")
    ap.add_argument("--batch-size", type=int, default=8, help="rows per DataLoader batch (mmap child)")
    ap.add_argument("--work", type=Path, help="work dir (default: a new temp dir, deleted afterwards)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        fn = {"stage": child_stage, "encode": child_encode, "rows": child_rows}.get(a.child)
        print(json.dumps(fn(a.work) if fn else child_mmap(a.work, a.batch_size)))
        return 0

    sys.path.insert(0, str(REPO / "src"))
    root = a.work or Path(tempfile.mkdtemp(prefix="bench-train-memory-"))
    try:
        tokdir = _tokenizer(root / "tokenizer")
        per_row = tokens_per_row(tokdir)
        print(f"{BASE} twin tokenizer, {TEMPLATE} template: {per_row:.1f} tokens per row", flush=True)
        results = []
        for target in (int(float(t)) for t in a.tokens.split(",") if t.strip()):
            results.append((target, measure(root, tokdir, target, round(target / per_row), a.batch_size)))
            if not a.keep:
                shutil.rmtree(root / f"t{target}", ignore_errors=True)
        report(results)
    finally:
        if not a.keep and a.work is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
