"""Throughput and memory of the data path: clean + template + tokenize vs raw ``tokenizer(batch)``.

For each N (default 0.5M, 1M, 2M) this writes N OpenOrca-shaped rows (columns id,
system_prompt, question, response; seeded; ~500 characters of question + response)
to one parquet file, then runs in fresh subprocesses, so each peak RSS is that
step's own:

* ``pipeline``: the real path of an OpenOrca source: ``clean.clean_source`` (the
  ``openorca`` reader streaming parquet batches, the recipe's filters empty_turns,
  refusals, exact_dedup, records.jsonl written), then every kept record read back,
  rendered with the ``alpaca`` template and encoded by
  ``reprotune.tokenize.encode_dataset`` (what training uses: one Rust tokenizer call
  per 1000 records, assistant-only labels from the few tokens at each trainable
  span's ends) with the tiny tokenizer;
* ``per_record`` (with ``--per-record``): the same, except each record is encoded by
  its own ``reprotune.tokenize.encode`` call (the naive version);
* ``baseline``: the same rendered texts tokenized by ``tokenizer(batch)`` (1000 per
  call, no offsets); only the tokenizer calls are timed.

Printed per N: rows/s of each, ``ratio = pipeline rows/s / baseline rows/s`` (target
>= 0.7) and peak RSS (target: flat within +-10% across N); the per-N line also gives
the pipeline's peak RSS at the end of the clean step (``clean peak``), to tell the
clean step's memory (reader, filters) from the encode step's. Throughput is rows of
input per second of wall time; both sides run single-threaded
(TOKENIZERS_PARALLELISM=false, as the rules do). The per-N line also gives the same
ratio on process CPU time (``time.process_time`` over the same timed parts): on a
shared machine another load stretches wall time unevenly between the two children
run one after the other, not CPU time.

    .venv/bin/python bench/data_prep.py                       # 0.5M, 1M, 2M (a long run)
    .venv/bin/python bench/data_prep.py --sizes 20000 --per-record   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 1000
FILTERS = [{"name": "empty_turns"}, {"name": "refusals"}, {"name": "exact_dedup"}]
TEMPLATE = "alpaca"
MAX_LENGTH = 4096

WORDS = ("the of and to in is was that for on with as by at from this which an be are it or his has "
         "have not had but were they their one all also been more after first new other two when "
         "people time year city river music water school history system number group company world "
         "between during under small large early later known because several before following "
         "government language example science question answer explain reason therefore step").split()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ----------------------------------------------------------------------------- data
PREFIXES = ("niv.", "t0.", "cot.", "flan.")


def chat_rows(n: int, seed: int = 0, dirty: bool = True):
    """N deterministic OpenOrca-shaped rows ``(id, system_prompt, question, response)``: three
    sentences of question and of answer from a seeded pool; ``dirty``: 0.5% empty answers and 0.5%
    refusals (what the clean step's filters drop)."""
    rng = random.Random(seed)
    systems = json.loads((REPO / "src/reprotune/data/orca_system_messages.json").read_text())
    pool = []
    for _ in range(20000):
        k = rng.randrange(8, 16)
        s = " ".join(rng.choice(WORDS) for _ in range(k))
        pool.append(s[0].upper() + s[1:] + ".")
    picks = range(len(pool))
    for i in range(n):
        q = " ".join(pool[j] for j in rng.choices(picks, k=3))
        a = " ".join(pool[j] for j in rng.choices(picks, k=3))
        r = rng.random() if dirty else 1.0
        if r < 0.005:
            a = ""                                    # empty turn
        elif r < 0.01:
            a = "As an AI language model, I cannot answer that."  # refusal
        yield f"{PREFIXES[i % 4]}{i}", systems[i % len(systems)], q, a


def chat_record(row: tuple, source: str = "openorca") -> dict:
    """One row of :func:`chat_rows` as a normalized record (what clean and mix write)."""
    rid, system, question, response = row
    return {"id": rid, "source": source, "system": system or "",
            "messages": [{"role": "user", "content": question or ""},
                         {"role": "assistant", "content": response or ""}]}


def write_chat_jsonl(path: Path, n: int, seed: int = 0) -> int:
    """N clean rows as normalized records in ``path`` (the mix stage's train.jsonl); returns its bytes."""
    from reprotune.io import atomic_write_jsonl

    atomic_write_jsonl(path, (chat_record(r, "bench") for r in chat_rows(n, seed, dirty=False)))
    return path.stat().st_size


def generate(path: Path, n: int, seed: int = 0) -> None:
    """N rows streamed to parquet in chunks (the generator itself stays small)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.string()) for c in ("id", "system_prompt", "question", "response")])
    rows = chat_rows(n, seed)
    with pq.ParquetWriter(path, schema) as w:
        done = 0
        while done < n:
            m = min(50_000, n - done)
            cols = list(zip(*(next(rows) for _ in range(m))))
            w.write_table(pa.table(dict(zip(schema.names, map(list, cols))), schema=schema), row_group_size=10_000)
            done += m


def _tokenizer():
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from transformers import AutoTokenizer

    d = Path(os.environ["BENCH_TOKENIZER"])
    return AutoTokenizer.from_pretrained(str(d))


def _records_from_parquet(path: Path):
    import pyarrow.parquet as pq

    cols = ("id", "system_prompt", "question", "response")
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield chat_record(tuple(row[c] for c in cols))


# ----------------------------------------------------------------------------- children
def child_pipeline(work: Path, per_record: bool) -> dict:
    from reprotune import templates
    from reprotune.clean import clean_source
    from reprotune.io import read_jsonl
    from reprotune.tokenize import encode, encode_dataset

    tok = _tokenizer()
    tpl = templates.get(TEMPLATE)
    rss_imports = _peak_rss_mb()
    spec = {"name": "openorca", "format": "openorca", "files": ["data.parquet"], "options": {}, "filters": FILTERS}
    out = work / ("clean_r" if per_record else "clean")
    t0 = time.perf_counter()
    c0 = time.process_time()
    rep = clean_source(spec, work / "raw", out)
    t_clean = time.perf_counter() - t0
    rss_clean = _peak_rss_mb()
    tokens = 0
    kept = 0
    if per_record:
        # per-record ``encode`` (the reference the batched path must equal)
        for rec in read_jsonl(out / "records.jsonl"):
            enc = encode(rec, tpl, tok, MAX_LENGTH)
            if enc is not None:
                kept += 1
                tokens += len(enc["input_ids"])
    else:
        # the real ``encode_dataset`` (one tokenizer call per BATCH records, numpy labels),
        # fed in chunks so rows are dropped as soon as they are counted
        def flush(recs):
            nonlocal tokens, kept
            _, st = encode_dataset(recs, tpl, tok, MAX_LENGTH, batch_size=BATCH)
            kept += st["kept"]
            tokens += st["tokens"]

        buf = []
        for rec in read_jsonl(out / "records.jsonl"):
            buf.append(rec)
            if len(buf) >= BATCH:
                flush(buf)
                buf = []
        if buf:
            flush(buf)
    t = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {"rows": rep["rows_read"], "cleaned": rep["rows_kept"], "encoded": kept, "tokens": tokens,
            "seconds": t, "seconds_clean": t_clean, "peak_rss_mb": _peak_rss_mb(), "rss_after_imports_mb": rss_imports,
            "peak_rss_clean_mb": rss_clean, "cpu_seconds": cpu}


def child_baseline(work: Path) -> dict:
    from reprotune import templates

    tok = _tokenizer()
    tpl = templates.get(TEMPLATE)
    rss_imports = _peak_rss_mb()
    t_tok = cpu_tok = 0.0
    rows = tokens = 0
    batch: list[str] = []

    def flush():
        nonlocal t_tok, cpu_tok, tokens
        t0, c0 = time.perf_counter(), time.process_time()
        enc = tok(batch)
        t_tok += time.perf_counter() - t0
        cpu_tok += time.process_time() - c0
        tokens += sum(len(x) for x in enc["input_ids"])

    for rec in _records_from_parquet(work / "raw" / "data.parquet"):
        rows += 1
        batch.append("".join(t for t, _ in tpl.render_segments(rec, tok.eos_token)))
        if len(batch) >= BATCH:
            flush()
            batch = []
    if batch:
        flush()
    return {"rows": rows, "tokens": tokens, "seconds": t_tok, "cpu_seconds": cpu_tok, "peak_rss_mb": _peak_rss_mb(),
            "rss_after_imports_mb": rss_imports}


def run_child(script: str, args: list[str], env_extra: dict | None = None) -> dict:
    """Run ``script args`` in a fresh interpreter (single-threaded, src/ importable); its last stdout line as JSON."""
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env_extra or {}))
    p = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"child {' '.join(args)} failed ({p.returncode})")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _run_child(kind: str, work: Path, tokdir: Path) -> dict:
    return run_child(__file__, ["--child", kind, "--work", str(work)], {"BENCH_TOKENIZER": str(tokdir)})


def _tokenizer_dir(work: Path) -> Path:
    tiny = REPO / "resources" / "base" / "tiny"
    if (tiny / "tokenizer.json").is_file():
        return tiny
    sys.path.insert(0, str(REPO / "src"))
    import yaml

    from reprotune import tinybase

    spec = yaml.safe_load((REPO / "overlays" / "tiny.yaml").read_text())["base_model"]["tiny"]
    out = work / "tiny"
    texts = sorted(p for p in (REPO / "fixtures" / "hub").rglob("*") if p.is_file())
    tinybase.build(spec, texts, out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500000,1000000,2000000", help="comma-separated row counts")
    ap.add_argument("--per-record", action="store_true", help="also time per-record encode() (the naive path)")
    ap.add_argument("--work", type=Path, help="work dir (default: a new temp dir, deleted afterwards)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", choices=["pipeline", "per_record", "baseline"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child:
        res = child_baseline(a.work) if a.child == "baseline" else child_pipeline(a.work, a.child == "per_record")
        print(json.dumps(res))
        return 0

    sys.path.insert(0, str(REPO / "src"))
    from reprotune.io import sha256_file

    root = a.work or Path(tempfile.mkdtemp(prefix="bench-data-prep-"))
    root.mkdir(parents=True, exist_ok=True)
    tokdir = _tokenizer_dir(root)
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    results = []
    try:
        for n in sizes:
            work = root / f"n{n}"
            raw = work / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            generate(raw / "data.parquet", n)
            size = (raw / "data.parquet").stat().st_size
            (raw / "manifest.json").write_text(json.dumps({"repo": "bench/openorca", "revision": "bench", "files": {
                "data.parquet": {"sha256": sha256_file(raw / "data.parquet"), "size": size}}}))
            print(f"N={n}: generated {size / 1e6:.0f} MB parquet in {time.perf_counter() - t0:.0f}s", flush=True)
            row = {"n": n, "pipeline": _run_child("pipeline", work, tokdir), "baseline": _run_child("baseline", work, tokdir)}
            if a.per_record:
                row["per_record"] = _run_child("per_record", work, tokdir)
            results.append(row)
            p, b = row["pipeline"], row["baseline"]
            line = (f"N={n}: pipeline {n / p['seconds']:,.0f} rows/s ({p['seconds']:.0f}s, clean {p['seconds_clean']:.0f}s, "
                    f"peak RSS {p['peak_rss_mb']:.0f} MB, clean peak {p['peak_rss_clean_mb']:.0f} MB) | "
                    f"baseline tokenizer(batch) {n / b['seconds']:,.0f} rows/s "
                    f"(peak RSS {b['peak_rss_mb']:.0f} MB) | ratio {b['seconds'] / p['seconds']:.3f} "
                    f"(CPU-time ratio {b['cpu_seconds'] / p['cpu_seconds']:.3f})")
            if a.per_record:
                q = row["per_record"]
                line += f" | per-record encode {n / q['seconds']:,.0f} rows/s, ratio {b['seconds'] / q['seconds']:.3f}"
            print(line, flush=True)
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if not a.keep and a.work is None:
            shutil.rmtree(root, ignore_errors=True)

    print("\n   N        pipeline rows/s  baseline rows/s  ratio   pipeline peak RSS MB" +
          ("   per-record rows/s  ratio" if a.per_record else ""))
    for r in results:
        p, b = r["pipeline"], r["baseline"]
        s = (f"{r['n']:>9,}  {r['n'] / p['seconds']:>15,.0f}  {r['n'] / b['seconds']:>15,.0f}  "
             f"{b['seconds'] / p['seconds']:>5.3f}  {p['peak_rss_mb']:>20.0f}")
        if a.per_record:
            q = r["per_record"]
            s += f"  {r['n'] / q['seconds']:>15,.0f}  {b['seconds'] / q['seconds']:>5.3f}"
        print(s)
    if len(results) > 1:
        peaks = [r["pipeline"]["peak_rss_mb"] for r in results]
        print(f"pipeline peak RSS spread across N: {100 * (max(peaks) - min(peaks)) / min(peaks):.1f}% (target <= 10%)")
    print("target: ratio >= 0.7 (wall time; the CPU-time ratio in the per-N lines is the same "
          "comparison on process CPU time, which another load on the machine does not inflate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
