"""The tokenize stage: an adapter's mixed rows encoded once, as a memory-mapped Arrow dataset.

``build(spec, data_dir, base_dir, out_dir, threads=1)`` runs in a CPU job (rule ``tokenize``)
between ``mix`` and ``train``: it renders every row of ``train.jsonl`` / ``val.jsonl`` with the
adapter's template, encodes it with the base tokenizer (assistant-only labels, truncation:
``reprotune.tokenize.encode_columns``, the label sanity check included) and, when the adapter
packs, packs the train rows (``reprotune.tokenize.pack_plan``). Output (atomic directory)::

    out_dir/train/        datasets ``save_to_disk``: int32 columns input_ids, labels, length
                          (+ position_ids, seq_lens when packing): what training iterates
    out_dir/val/          the validation rows (never packed); absent when there are none
    out_dir/probe/        the first PROBE_ROWS encoded train rows, unpacked: train measures its
                          loss on their assistant tokens before and after training
    out_dir/stats.json    encode counts of train and val, packing counts, template, tokenizer

``load(out_dir)`` opens it for training: ``datasets.load_from_disk`` memory-maps the Arrow
files, so a training process holds no copy of the tokens (8 GPU processes share one page
cache) and never tokenizes.

Threads: the train file is cut into chunks of ``CHUNK_BYTES`` at line ends; up to ``threads``
worker processes encode chunks in parallel, each into its own Arrow file, and the chunks are
joined in file order. Chunking does not depend on ``threads``, so the output bytes do not
either (tests compare 1 and 2 processes). The tokenizer is loaded once, before the workers
start, which inherit it (loading it imports torch: seconds of CPU in every worker otherwise);
each chunk is encoded by ``encode_columns`` (the rows of ``encode_dataset`` as flat arrays, a batch
at a time), whose arrays become the Arrow columns as they are.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from reprotune.io import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

PROBE_ROWS = 64
CHUNK_BYTES = 4 << 20
MAX_SHARD_SIZE = "500MB"
UNPACKED = ("input_ids", "labels", "length")


class DatasetError(ValueError):
    """The tokenized dataset cannot be built or read; one printable line."""


class Tokens(NamedTuple):
    """What ``train`` gets from :func:`load`."""

    rows: Any            # datasets.Dataset (memory-mapped): the rows training iterates
    stats: dict          # encode counts of the train split
    packing: dict | None  # pack counts, None without packing
    probe: list          # the probe rows (input_ids, labels), in memory
    spec: dict           # what they were built with (:func:`spec_for`)


def spec_for(train_spec: dict) -> dict:
    """The tokenize stage's settings from an adapter's train spec (``plan.train_spec``): one
    resolver (``recipe.resolve_train``) decides max_length and packing for both stages."""
    from reprotune.recipe import resolve_train

    t = resolve_train(train_spec.get("train"), "train")
    return {"recipe": train_spec.get("recipe"), "adapter": train_spec.get("adapter"),
            "template": train_spec.get("template") or "raw", "max_length": int(t["max_length"]),
            "packing": bool(t["packing"]), "tokenizer": {"use_fast": bool((train_spec.get("tokenizer") or {})
                                                                         .get("use_fast", True))}}


# --------------------------------------------------------------------------- encoding (workers)
_TOKENIZER: dict = {}


def _tokenizer(base_dir, spec: dict):
    """The spec's tokenizer of ``base_dir``, loaded once per process (forked workers inherit it)."""
    key = (str(base_dir), bool((spec.get("tokenizer") or {}).get("use_fast", True)))
    if key not in _TOKENIZER:
        from reprotune.base_tokenizer import load

        _TOKENIZER[key] = load(key[0], use_fast=key[1])
    return _TOKENIZER[key]


def line_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """``[start, end)`` byte ranges of ``path`` of about ``chunk_bytes``, each ending at a line end."""
    size = path.stat().st_size
    out, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(start + chunk_bytes, size))
            f.readline()  # to the end of the line the cut fell in
            end = min(f.tell(), size)
            out.append((start, end))
            start = end
    return out


_DECODER = json.JSONDecoder()


def _loads(line: bytes):
    """``json.loads(line)``, the same value and the same errors, at about half its cost on a UTF-8
    line: decoded and stripped of JSON whitespace here, then parsed without the encoding detection
    and the regex scans around the value; anything else (another encoding, a BOM, a surrogate, a
    malformed line) takes ``json.loads`` itself."""
    try:
        text = line.decode("utf-8").strip(" \t\n\r")
        value, end = _DECODER.raw_decode(text)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return json.loads(line)
    return value if end == len(text) else json.loads(line)


def _records(path: Path, start: int, end: int):
    with open(path, "rb") as f:
        f.seek(start)
        for line in f.read(end - start).splitlines():
            if line.strip():
                yield _loads(line)


def _table(cols):
    """Encoded rows (``reprotune.tokenize.Columns``) -> an Arrow table of int32 list columns
    (input_ids, labels) and their lengths, built from the flat arrays as they are."""
    import numpy as np
    import pyarrow as pa

    lengths = cols.lengths.astype(np.int32)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])

    def column(values):
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int32, copy=False)))

    return pa.table({"input_ids": column(cols.input_ids), "labels": column(cols.labels), "length": pa.array(lengths)})


def _write_arrow(table, path: Path) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _encode_table(path: str, start: int, end: int, spec: dict, base_dir: str):
    """One chunk of a jsonl file -> (an Arrow table of its rows, stats)."""
    from reprotune import templates
    from reprotune.tokenize import encode_columns

    cols, stats = encode_columns(_records(Path(path), start, end), templates.get(spec["template"]),
                                 _tokenizer(base_dir, spec), int(spec["max_length"]))
    return _table(cols), stats


def encode_chunk(job: tuple) -> tuple[str, dict]:
    """One chunk in a worker process: ``(jsonl path, start, end, spec, base_dir, arrow path)`` ->
    ``(arrow path, stats)`` (the table goes back through the file)."""
    path, start, end, spec, base_dir, out = job
    table, stats = _encode_table(path, start, end, spec, base_dir)
    _write_arrow(table, Path(out))
    return out, stats


# --------------------------------------------------------------------------- the stage
def _add(total: dict, part: dict) -> dict:
    return {k: total.get(k, 0) + v for k, v in part.items()}


def _encode_file(path: Path, spec: dict, base_dir: Path, tmp: Path, threads: int, chunk_bytes: int):
    """Encode one jsonl file in chunks; the joined Arrow table (memory-mapped chunk files when
    worker processes wrote them) and the counts."""
    import datasets
    import pyarrow as pa

    from reprotune.tokenize import new_stats

    jobs = [(str(path), a, b, spec, str(base_dir), str(tmp / f"{path.stem}-{i:05d}.arrow"))
            for i, (a, b) in enumerate(line_chunks(path, chunk_bytes))]
    if threads > 1 and len(jobs) > 1:
        _tokenizer(base_dir, spec)  # here, not in every worker: loading it imports torch (seconds)
        with ProcessPoolExecutor(max_workers=min(threads, len(jobs))) as pool:
            results = list(pool.map(encode_chunk, jobs))
        tables = [datasets.Dataset.from_file(p).data.table for p, _ in results]
    else:  # in this process: the tables stay in memory (no temporary files)
        results = [_encode_table(*job[:5]) for job in jobs]
        tables = [t for t, _ in results]
    stats = new_stats()
    for _, part in results:
        stats = _add(stats, part)
    return (pa.concat_tables(tables) if tables else None), stats


def packed_table(unpacked, capacity: int):
    """The packed rows (``reprotune.tokenize.pack``'s, column for column) from an unpacked table."""
    import numpy as np
    import pyarrow as pa

    from reprotune.tokenize import IGNORE_INDEX, pack_plan, pack_stats

    lengths = unpacked.column("length").to_numpy()
    bins = pack_plan(lengths, capacity)
    order = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=len(lengths))
    taken = unpacked.take(pa.array(order))
    seq = lengths[order].astype(np.int64)
    starts = np.zeros(len(seq), dtype=np.int64)
    np.cumsum(seq[:-1], out=starts[1:])
    ids = taken.column("input_ids").combine_chunks().flatten().to_numpy()
    labels = taken.column("labels").combine_chunks().flatten().to_numpy().copy()
    labels[starts] = IGNORE_INDEX  # no sample learns its first token from the one before it
    position = (np.arange(len(ids), dtype=np.int64) - np.repeat(starts, seq)).astype(np.int32)
    bin_sizes = np.fromiter((len(b) for b in bins), dtype=np.int32, count=len(bins))
    bin_tokens = np.add.reduceat(seq, np.concatenate([[0], np.cumsum(bin_sizes)[:-1]])) if len(bins) else seq[:0]
    row_off = pa.array(np.concatenate([[0], np.cumsum(bin_tokens)]).astype(np.int32))
    lens_off = pa.array(np.concatenate([[0], np.cumsum(bin_sizes)]).astype(np.int32))
    table = pa.table({
        "input_ids": pa.ListArray.from_arrays(row_off, pa.array(ids.astype(np.int32))),
        "labels": pa.ListArray.from_arrays(row_off, pa.array(labels.astype(np.int32))),
        "position_ids": pa.ListArray.from_arrays(row_off, pa.array(position)),
        "seq_lens": pa.ListArray.from_arrays(lens_off, pa.array(seq.astype(np.int32))),
        "length": pa.array(bin_tokens.astype(np.int32)),
    })
    return table, pack_stats(len(lengths), len(bins), int(seq.sum()), capacity)


def _save(table, out: Path, fingerprint: str) -> None:
    """``save_to_disk`` with a fingerprint derived from the inputs (``datasets`` would otherwise
    derive one from the temp paths of the chunk files, and state.json would differ per run)."""
    import datasets

    datasets.Dataset(table, fingerprint=fingerprint).save_to_disk(str(out), max_shard_size=MAX_SHARD_SIZE)


def _fingerprint(spec: dict, path: Path, base_dir: Path, split: str) -> str:
    """A digest of what the split's rows are made from: the spec, the jsonl and the tokenizer files."""
    import hashlib

    from reprotune.base_tokenizer import COPIED_FILES
    from reprotune.io import canonical_json, sha256_file

    h = hashlib.sha256(canonical_json(spec).encode())
    h.update(split.encode())
    h.update(sha256_file(path).encode())
    for name in COPIED_FILES:
        if (Path(base_dir) / name).is_file():
            h.update(name.encode() + sha256_file(Path(base_dir) / name).encode())
    return h.hexdigest()[:16]


def build(spec: dict, data_dir: Path, base_dir: Path, out_dir: Path, threads: int = 1,
          chunk_bytes: int = CHUNK_BYTES) -> dict:
    """The tokenize stage (see the module docstring); returns ``stats.json``. ``chunk_bytes``: the
    size of the pieces of a jsonl file the workers encode (the bytes do not depend on it either)."""
    import datasets

    from reprotune.base_tokenizer import describe

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    train_file = data_dir / "train.jsonl"
    if not train_file.is_file():
        raise DatasetError(f"missing training data: {train_file} (run the mix stage first)")
    datasets.disable_progress_bars()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tokenize-", dir=out_dir.parent) as scratch, \
            atomic_dir(out_dir) as tmp:
        train, stats = _encode_file(train_file, spec, Path(base_dir), Path(scratch), threads, chunk_bytes)
        if train is None or stats["kept"] == 0:
            raise DatasetError(f"no trainable rows in {train_file} (stats: {stats})")
        log.info("train: %s", json.dumps(stats, sort_keys=True))
        fp = _fingerprint(spec, train_file, Path(base_dir), "train")
        table = train
        _save(table.slice(0, PROBE_ROWS), tmp / "probe", fp + "p")
        report = {"spec": spec, "train": stats,
                  "tokenizer": describe(_tokenizer(base_dir, spec)),
                  "packing": None}
        if spec.get("packing"):
            table, report["packing"] = packed_table(table, int(spec["max_length"]))
            log.info("packing: %s", json.dumps(report["packing"], sort_keys=True))
        _save(table, tmp / "train", fp)
        val_file = data_dir / "val.jsonl"
        if val_file.is_file() and val_file.stat().st_size:
            val, report["val"] = _encode_file(val_file, spec, Path(base_dir), Path(scratch), threads, chunk_bytes)
            if val is not None and len(val):
                _save(val, tmp / "val", _fingerprint(spec, val_file, Path(base_dir), "val"))
        atomic_write_json(tmp / "stats.json", report)
    return report


def load(tokens_dir: Path) -> Tokens:
    """The tokenized train split, memory-mapped, with its counts and the probe rows."""
    import datasets

    tokens_dir = Path(tokens_dir)
    stats_file = tokens_dir / "stats.json"
    if not stats_file.is_file():
        raise DatasetError(f"{tokens_dir} is not a tokenized dataset (no stats.json: run the tokenize stage)")
    report = json.loads(stats_file.read_text(encoding="utf-8"))
    rows = datasets.load_from_disk(str(tokens_dir / "train"))
    probe = datasets.load_from_disk(str(tokens_dir / "probe"))
    return Tokens(rows, report["train"], report.get("packing"),
                  [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in probe], report["spec"])


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
