"""Throughput and memory of the data path: clean + template + tokenize vs raw ``tokenizer(batch)``.

For each N (``--sizes``, default 0.5M, 1M, 2M) this writes N OpenOrca-shaped rows (columns id,
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

Peer (``--peer-rows``, default 50,000; 0 skips it): TRL's SFT data preparation against our
tokenize stage on the same rows: N clean rows of the same generator written as a mix-stage
``train.jsonl`` (normalized records), the ``tulu`` template, the tiny tokenizer. In fresh
subprocesses, imports done before the clock:

* ``TRL``: ``trl.SFTTrainer`` with ``SFTConfig(assistant_only_loss=True, max_length=4096)`` on
  a ``datasets.Dataset`` of the rows' messages (built before the clock), the tokenizer's chat
  template the tulu one with ``{% generation %}`` around what tulu trains (answer, ``</s>``,
  newline) and ``{{ bos_token }}`` first. The constructor prepares the dataset (render,
  tokenize, assistant masks, labels, truncation, filter); it is timed on all rows less once on
  one row (its fixed cost: accelerator, model, tokenizer), so the time is the preparation's;
* ``stage``: ``reprotune.dataset.build`` on that train.jsonl (read, render, encode with labels,
  Arrow chunks, ``save_to_disk``), threads=1 and threads=2 (process CPU time includes the
  worker processes');
* ``tokenizer(batch)`` on the rendered texts (the naive version: no labels, nothing written;
  only its calls are timed): the tokenization both sides do.

Checked (asserted): TRL's trained-token count equals the stage's, the 2-process output is
byte-identical to the 1-process one; a note says when train.jsonl has fewer than 8 chunks
(too few for the threads=2 ratio to mean much). The four runs are repeated in
``--peer-repeat`` interleaved rounds (default 2; each round's two ratios are printed) and the
fastest run of each kind is kept: another load on a shared machine only slows runs down. Printed: rows/s
(wall) and rows per CPU-second of each, the ratios stage / TRL (target >= 3) and threads=2 /
threads=1 (target >= 1.7), and how many rows have identical input_ids and labels.

    .venv/bin/python bench/data_prep.py                       # 0.5M, 1M, 2M and the peer (a long run)
    .venv/bin/python bench/data_prep.py --sizes 20000 --per-record --peer-rows 0   # smoke run
    .venv/bin/python bench/data_prep.py --sizes '' --peer-rows 50000              # the peer only
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


def child_baseline(records, template: str) -> dict:
    """``tokenizer(batch)`` on the rendered texts of ``records`` (only the tokenizer calls are timed)."""
    from reprotune import templates

    tok = _tokenizer()
    tpl = templates.get(template)
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

    for rec in records:
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
    """The tiny tokenizer (``tinybase``'s byte-level BPE, its default spec) trained on the fixture text."""
    sys.path.insert(0, str(REPO / "src"))
    from reprotune import tinybase

    out = work / "tiny"
    texts = sorted(p for p in (REPO / "fixtures" / "hub").rglob("*") if p.is_file())
    tinybase.build({}, texts, out)
    return out


# ----------------------------------------------------------------------------- peer: TRL's SFT data preparation
PEER_TEMPLATE = "tulu"


def generation_template() -> str:
    """The tulu template itself (its ``{% generation %}`` blocks mark what it trains: the answer,
    ``</s>`` and the newline), with the bos token first: TRL tokenizes the rendered chat without
    special tokens, our stage with them (the tokenizer adds bos)."""
    from reprotune import templates

    return "{{ bos_token }}" + templates.get(PEER_TEMPLATE).chat_template


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the stage's worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def child_stage(work: Path, threads: int) -> dict:
    """The tokenize stage, ``reprotune.dataset.build`` (Arrow written), at ``threads`` processes."""
    import datasets  # noqa: F401  (imports before the clock, as for TRL: the process's, not the stage's)

    from reprotune import dataset

    _tokenizer()  # imports torch among others (via the tokenizer's config.json)

    spec = {"recipe": "bench", "adapter": "main", "template": PEER_TEMPLATE, "max_length": MAX_LENGTH,
            "packing": False, "tokenizer": {"use_fast": True}}
    t0, c0 = time.perf_counter(), _cpu_seconds()
    report = dataset.build(spec, work / "data", Path(os.environ["BENCH_TOKENIZER"]), work / f"tokens{threads}",
                           threads=threads)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu_seconds() - c0, "stats": report["train"],
            "chunks": len(dataset.line_chunks(work / "data" / "train.jsonl"))}


def _trl_trainer(rows, tokdir: Path, out: Path):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = _tokenizer()
    tok.chat_template = generation_template()
    args = SFTConfig(output_dir=str(out), assistant_only_loss=True, max_length=MAX_LENGTH, packing=False,
                     dataset_num_proc=None, report_to=[], use_cpu=True)
    return SFTTrainer(model=AutoModelForCausalLM.from_pretrained(str(tokdir)), args=args, train_dataset=rows,
                      processing_class=tok)


def child_trl(work: Path) -> dict:
    """TRL's SFT data preparation (SFTTrainer with assistant_only_loss on a tiny model) on the same rows.

    Timed: the SFTTrainer construction on all rows, less one on a single row (the trainer's and
    the model's fixed cost), so the time is TRL's dataset preparation; imports come before."""
    import datasets
    import trl  # noqa: F401
    from trl import SFTTrainer  # noqa: F401  (trl imports it lazily)

    from reprotune import dataset, templates
    from reprotune.io import read_jsonl

    datasets.disable_progress_bars()
    tpl, tokdir = templates.get(PEER_TEMPLATE), Path(os.environ["BENCH_TOKENIZER"])
    rows = datasets.Dataset.from_list([{"messages": tpl.to_messages(r)}
                                       for r in read_jsonl(work / "data" / "train.jsonl")])
    timed = []
    for part in (rows.select([0]), rows):
        t0, c0 = time.perf_counter(), time.process_time()
        trainer = _trl_trainer(part, tokdir, work / "trl")
        timed.append((time.perf_counter() - t0, time.process_time() - c0))
    prepared = trainer.train_dataset
    ours = dataset.load(work / "tokens1").rows
    same = sum(a == b for a, b in zip(prepared["labels"], ours["labels"]))
    same_ids = sum(a == b for a, b in zip(prepared["input_ids"], ours["input_ids"]))
    return {"seconds": timed[1][0] - timed[0][0], "cpu_seconds": timed[1][1] - timed[0][1],
            "fixed_seconds": timed[0][0], "rows": len(prepared), "rows_same_labels": same, "rows_same_ids": same_ids,
            "trainable_tokens": sum(len(x) - x.count(-100) - (x[0] != -100) for x in prepared["labels"])}


PEER_RUNS = {"stage1": ["--child", "stage", "--threads", "1"], "stage2": ["--child", "stage", "--threads", "2"],
             "trl": ["--child", "trl"], "floor": ["--child", "floor"]}


def _peer_round(work: Path, tokdir: Path) -> dict:
    env = {"BENCH_TOKENIZER": str(tokdir)}
    res = {kind: run_child(__file__, args + ["--work", str(work)], env) for kind, args in PEER_RUNS.items()}
    print(f"   round: stage/TRL {res['trl']['seconds'] / res['stage1']['seconds']:.2f}x, threads=2/1 "
          f"{res['stage1']['seconds'] / res['stage2']['seconds']:.2f}x", flush=True)
    return res


def peer(root: Path, tokdir: Path, n: int, repeat: int) -> None:
    """Our tokenize stage (1 and 2 processes) against TRL's SFT data preparation on the same N rows;
    ``repeat`` interleaved rounds, the fastest run of each kind kept (another load on the machine
    only ever slows a run down)."""
    from reprotune.verify import tree_hashes

    work = root / f"peer{n}"
    (work / "data").mkdir(parents=True, exist_ok=True)
    size = write_chat_jsonl(work / "data" / "train.jsonl", n)
    rounds = [_peer_round(work, tokdir) for _ in range(repeat)]
    res = {k: min((r[k] for r in rounds), key=lambda x: x["seconds"]) for k in PEER_RUNS}
    one, trl = res["stage1"], res["trl"]
    assert tree_hashes(work / "tokens1") == tree_hashes(work / "tokens2"), "1- and 2-process outputs differ"
    assert trl["trainable_tokens"] == one["stats"]["trainable_tokens"], (trl, one["stats"])
    print(f"\npeer: {n:,} rows ({size / 1e6:.0f} MB train.jsonl, {one['chunks']} chunks), template {PEER_TEMPLATE}, "
          f"tiny tokenizer; trained tokens: ours {one['stats']['trainable_tokens']:,}, "
          f"TRL {trl['trainable_tokens']:,}; rows with identical input_ids / labels: "
          f"{trl['rows_same_ids']:,} / {trl['rows_same_labels']:,} of {trl['rows']:,}; "
          f"2-process output byte-identical to 1-process")
    if one["chunks"] < 8:
        print(f"   note: {one['chunks']} chunks of {dataset_chunk_mb()} MB are too few to spread evenly over 2 "
              "processes: the threads=2 ratio says little at this size")
    peer_table(n, res)


def dataset_chunk_mb() -> int:
    from reprotune.dataset import CHUNK_BYTES

    return CHUNK_BYTES >> 20


def peer_table(n: int, res: dict) -> None:
    one, two, trl, floor = res["stage1"], res["stage2"], res["trl"], res["floor"]
    print("   what                                          rows/s  rows/CPU-s   wall s   CPU s")
    for name, r in (("TRL SFTTrainer data preparation", trl), ("tokenizer(batch) alone (naive, no labels)", floor),
                    ("reprotune.dataset.build, threads=1", one), ("reprotune.dataset.build, threads=2", two)):
        print(f"   {name:<43} {n / r['seconds']:>8,.0f}  {n / r['cpu_seconds']:>11,.0f}  {r['seconds']:>7.1f} "
              f"{r['cpu_seconds']:>7.1f}")
    print(f"ratio stage(1 process) / TRL rows/s: {trl['seconds'] / one['seconds']:.2f}x (target >= 3; CPU time "
          f"{trl['cpu_seconds'] / one['cpu_seconds']:.2f}x; TRL's fixed cost {trl['fixed_seconds']:.1f}s not counted)")
    print(f"ratio stage(1 process) / tokenizer(batch) rows/s: {floor['seconds'] / one['seconds']:.2f}x "
          f"(TRL / tokenizer(batch): {floor['seconds'] / trl['seconds']:.2f}x; both sides run this tokenization)")
    print(f"ratio stage threads=2 / threads=1 rows/s: {one['seconds'] / two['seconds']:.2f}x (target >= 1.7; "
          f"CPU time 2 / 1 processes: {two['cpu_seconds'] / one['cpu_seconds']:.2f}x)")


# ----------------------------------------------------------------------------- main
def _one_size(root: Path, tokdir: Path, n: int, per_record: bool) -> dict:
    from reprotune.io import sha256_file

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
    if per_record:
        row["per_record"] = _run_child("per_record", work, tokdir)
    p, b = row["pipeline"], row["baseline"]
    line = (f"N={n}: pipeline {n / p['seconds']:,.0f} rows/s ({p['seconds']:.0f}s, clean {p['seconds_clean']:.0f}s, "
            f"peak RSS {p['peak_rss_mb']:.0f} MB, clean peak {p['peak_rss_clean_mb']:.0f} MB) | "
            f"baseline tokenizer(batch) {n / b['seconds']:,.0f} rows/s "
            f"(peak RSS {b['peak_rss_mb']:.0f} MB) | ratio {b['seconds'] / p['seconds']:.3f} "
            f"(CPU-time ratio {b['cpu_seconds'] / p['cpu_seconds']:.3f})")
    if per_record:
        q = row["per_record"]
        line += f" | per-record encode {n / q['seconds']:,.0f} rows/s, ratio {b['seconds'] / q['seconds']:.3f}"
    print(line, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return row


def sizes_table(results: list[dict], per_record: bool) -> None:
    print("\n   N        pipeline rows/s  baseline rows/s  ratio   pipeline peak RSS MB" +
          ("   per-record rows/s  ratio" if per_record else ""))
    for r in results:
        p, b = r["pipeline"], r["baseline"]
        s = (f"{r['n']:>9,}  {r['n'] / p['seconds']:>15,.0f}  {r['n'] / b['seconds']:>15,.0f}  "
             f"{b['seconds'] / p['seconds']:>5.3f}  {p['peak_rss_mb']:>20.0f}")
        if per_record:
            q = r["per_record"]
            s += f"  {r['n'] / q['seconds']:>15,.0f}  {b['seconds'] / q['seconds']:>5.3f}"
        print(s)
    if len(results) > 1:
        peaks = [r["pipeline"]["peak_rss_mb"] for r in results]
        print(f"pipeline peak RSS spread across N: {100 * (max(peaks) - min(peaks)) / min(peaks):.1f}% (target <= 10%)")
    print("target: ratio >= 0.7 (wall time; the CPU-time ratio in the per-N lines is the same "
          "comparison on process CPU time, which another load on the machine does not inflate)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500000,1000000,2000000", help="comma-separated row counts ('' for none)")
    ap.add_argument("--per-record", action="store_true", help="also time per-record encode() (the naive path)")
    ap.add_argument("--peer-rows", type=int, default=50_000, help="rows of the TRL peer comparison (0: skip it)")
    ap.add_argument("--peer-repeat", type=int, default=2, help="interleaved rounds of the peer runs (fastest kept)")
    ap.add_argument("--work", type=Path, help="work dir (default: a new temp dir, deleted afterwards)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", choices=["pipeline", "per_record", "baseline", "stage", "trl", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child:
        print(json.dumps(_child(a)))
        return 0

    sys.path.insert(0, str(REPO / "src"))
    root = a.work or Path(tempfile.mkdtemp(prefix="bench-data-prep-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        tokdir = _tokenizer_dir(root)
        sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
        if sizes:
            sizes_table([_one_size(root, tokdir, n, a.per_record) for n in sizes], a.per_record)
        if a.peer_rows:
            peer(root, tokdir, a.peer_rows, a.peer_repeat)
    finally:
        if not a.keep and a.work is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _child(a) -> dict:
    if a.child == "baseline":
        return child_baseline(_records_from_parquet(a.work / "raw" / "data.parquet"), TEMPLATE)
    if a.child == "floor":
        from reprotune.io import read_jsonl

        return child_baseline(read_jsonl(a.work / "data" / "train.jsonl"), PEER_TEMPLATE)
    if a.child == "stage":
        return child_stage(a.work, a.threads)
    if a.child == "trl":
        return child_trl(a.work)
    return child_pipeline(a.work, a.child == "per_record")


if __name__ == "__main__":
    sys.exit(main())
