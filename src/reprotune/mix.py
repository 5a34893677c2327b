"""Mix cleaned sources into train/val sets for one adapter, deterministically.

Algorithm (all randomness from string-seeded ``random.Random``, which does not
depend on PYTHONHASHSEED, the process count or the platform):

1. For each source in sorted name order, with ``rng = Random(f"{seed}:{source}")``:
   take ``round(fraction * available)`` rows (at least 1 when fraction > 0 and rows
   exist) or ``min(count, available)``, sampled without replacement, kept in file order.
2. Optionally (``system_messages.assign_to_empty``) give chat records whose system is
   ``""`` one of the given system messages, ``rng.choice`` per record in file order.
3. Validation rows per source (chosen with the same rng, kept in file order):
   - global ``validation: {fraction: f}`` -> ``round(f * taken)``;
   - global ``validation: {size: n}`` -> n split over sources proportionally to
     ``taken`` (largest remainder, ties by name);
   - per-source ``max_val: n`` caps that number; with no global validation it is the
     number itself (``min(n, taken)``), as in OpenAssistant's ``max_val_set``;
   - optional ``max_val_share: s`` caps every source's validation rows at
     ``floor(s * taken)`` (the tiny overlay uses it so that a 5000-row ``max_val``
     cannot take a 45-row fixture whole).
4. Train = the rest; the combined train set is shuffled with ``Random(seed)``.
   Val is the concatenation in source order (not shuffled).

Output (atomic directory): ``train.jsonl``, ``val.jsonl`` (maybe empty), ``data_report.json``.

Memory: rows are never all held at once. Each cleaned file is indexed by the byte
offsets of its lines; sampling, the validation split and the shuffle work on
offsets, and rows are read back (seek + one line) while the outputs are written.

Token lengths (``data_report.json`` ``token_lengths``, when a tokenizer directory
is given: the rule passes the recipe's base model): per source and overall, over
the *train* split, the number of tokens of the content (system, input and every
turn, or the text; no template markup, no special tokens), as
``{"n", "min", "median", "p95", "max"}`` with nearest-rank percentiles (integers,
deterministic).

The mix runs in one process; there is no parallel step whose scheduling could
change the result. ``tests/test_mix.py`` checks that a run in a fresh subprocess
with another ``PYTHONHASHSEED`` gives the same bytes as an in-process run.
"""
from __future__ import annotations

import json
import math
import random
from array import array
from pathlib import Path

from reprotune.filters import _contents
from reprotune.io import atomic_dir, atomic_write_json, atomic_write_jsonl, read_json


class MixError(ValueError):
    """Bad mix spec or missing cleaned source."""


def _line_offsets(path: Path) -> array:
    """Byte offsets of the non-empty lines of a JSONL file (8 bytes per row)."""
    out = array("q")
    pos = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                out.append(pos)
            pos += len(line)
    return out


def _read_at(f, offset: int) -> dict:
    f.seek(offset)
    return json.loads(f.readline())


def _percentile(sorted_vals, q: float) -> int:
    """Nearest-rank percentile of a sorted, non-empty sequence."""
    k = max(1, math.ceil(q * len(sorted_vals)))
    return int(sorted_vals[k - 1])


def length_stats(values) -> dict:
    v = sorted(values)
    if not v:
        return {"n": 0, "min": None, "median": None, "p95": None, "max": None}
    return {"n": len(v), "min": int(v[0]), "median": _percentile(v, 0.5), "p95": _percentile(v, 0.95),
            "max": int(v[-1])}


def _n_take(source: str, entry: dict, available: int) -> int:
    if not isinstance(entry, dict):
        raise MixError(f"mix entry for {source!r} must be a mapping, got {entry!r}")
    has_f, has_c = "fraction" in entry, "count" in entry
    if has_f == has_c:
        raise MixError(f"mix entry for {source!r} needs exactly one of 'fraction' or 'count'")
    if has_f:
        f = float(entry["fraction"])
        if not 0.0 <= f <= 1.0:
            raise MixError(f"mix fraction for {source!r} must be in [0, 1], got {f}")
        n = round(f * available)
        if f > 0 and available > 0:
            n = max(n, 1)
        return min(n, available)
    c = entry["count"]
    if not isinstance(c, int) or isinstance(c, bool) or c < 0:
        raise MixError(f"mix count for {source!r} must be a non-negative integer, got {c!r}")
    return min(c, available)


def _apportion(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split ``total`` over names proportionally to weights (largest remainder, ties by name)."""
    wsum = sum(weights.values())
    if total <= 0 or wsum <= 0:
        return {k: 0 for k in weights}
    total = min(total, wsum)
    exact = {k: total * w / wsum for k, w in weights.items()}
    base = {k: math.floor(v) for k, v in exact.items()}
    left = total - sum(base.values())
    order = sorted(weights, key=lambda k: (-(exact[k] - base[k]), k))
    for k in order:
        if left <= 0:
            break
        if base[k] < weights[k]:
            base[k] += 1
            left -= 1
    return base


def _val_counts(spec: dict, taken: dict[str, int]) -> dict[str, int]:
    validation = spec.get("validation") or {}
    mix_spec = spec["mix"]
    if validation and not isinstance(validation, dict):
        raise MixError(f"validation must be a mapping, got {validation!r}")
    if "size" in validation and "fraction" in validation:
        raise MixError("validation takes either 'size' or 'fraction', not both")
    out: dict[str, int] = {}
    if "fraction" in validation:
        f = float(validation["fraction"])
        if not 0.0 <= f <= 1.0:
            raise MixError(f"validation fraction must be in [0, 1], got {f}")
        out = {s: round(f * n) for s, n in taken.items()}
    elif "size" in validation:
        size = validation["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise MixError(f"validation size must be a non-negative integer, got {size!r}")
        out = _apportion(size, taken)
    global_given = "fraction" in validation or "size" in validation
    for s, n in taken.items():
        mv = mix_spec[s].get("max_val")
        if mv is not None:
            if not isinstance(mv, int) or isinstance(mv, bool) or mv < 0:
                raise MixError(f"max_val for {s!r} must be a non-negative integer, got {mv!r}")
            out[s] = min(out.get(s, 0), mv) if global_given else mv
        out[s] = min(out.get(s, 0), n)
    share = spec.get("max_val_share")
    if share is not None:
        if not 0.0 <= float(share) <= 1.0:
            raise MixError(f"max_val_share must be in [0, 1], got {share!r}")
        # never let validation eat a source whole (tiny fixtures vs a 5000-row max_val)
        out = {s: min(v, math.floor(float(share) * taken[s])) for s, v in out.items()}
    return out


def _system_messages(spec: dict) -> list[str] | None:
    sm = spec.get("system_messages")
    if not sm or not sm.get("assign_to_empty"):
        return None
    msgs = sm.get("messages") or []
    # the empty string is a legitimate choice (Orca's system message #1 is empty)
    if not msgs or not all(isinstance(m, str) for m in msgs):
        raise MixError("system_messages.messages must be a non-empty list of strings")
    return list(msgs)


COMPARE_ROWS = 20_000  # rows of the train split whose fast and slow encodings data_report compares


def _use_fast(spec: dict) -> bool:
    return bool((spec.get("tokenizer") or {}).get("use_fast", True))


def tokenizer_report(spec: dict, tokenizer_dir: Path, train_file: Path) -> dict:
    """Which tokenizer training uses, and -- where the base has both a fast and a slow
    (SentencePiece) tokenizer that load -- how many train rows (rendered with the adapter's
    template, first :data:`COMPARE_ROWS`) they encode differently."""
    from reprotune import templates
    from reprotune.base_tokenizer import TokenizerLoadError, describe, load
    from reprotune.io import read_jsonl
    from reprotune.tokenize import compare_tokenizers

    out = {"training": "fast" if _use_fast(spec) else "slow"}
    try:
        fast, slow = load(tokenizer_dir), load(tokenizer_dir, use_fast=False)
    except TokenizerLoadError as e:
        out["fast_vs_slow"] = {"compared": False, "reason": str(e).replace(str(tokenizer_dir), "<base>")}
        return out
    out.update({"fast": describe(fast), "slow": describe(slow)})
    if spec.get("template"):
        cmp = compare_tokenizers(read_jsonl(train_file), templates.get(spec["template"]), fast, slow, COMPARE_ROWS)
        out["fast_vs_slow"] = {"compared": True, "template": spec["template"], **cmp}
    return out


def mix(spec: dict, clean_dirs: dict[str, Path], out_dir: Path, tokenizer_dir: Path | None = None) -> dict:
    """Sample, split and shuffle the cleaned sources of one adapter; return data_report.

    spec: ``{"recipe", "adapter", "seed", "mix": {source: {"fraction"|"count", "max_val"?}},
    "validation"?: {"size"|"fraction"}, "system_messages"?: {"assign_to_empty", "messages"}}``.
    ``tokenizer_dir``: count train token lengths with this tokenizer (the base model's).
    """
    mix_spec = spec.get("mix") or {}
    if not mix_spec:
        raise MixError("mix spec lists no sources")
    seed = spec.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise MixError(f"mix seed must be an integer, got {seed!r}")
    missing = sorted(set(mix_spec) - set(clean_dirs))
    if missing:
        raise MixError(f"no cleaned data given for source(s): {', '.join(missing)}")
    sysmsgs = _system_messages(spec)
    count_tokens = None
    if tokenizer_dir is not None:
        from reprotune.filters import token_counter

        count_tokens = token_counter(tokenizer_dir, _use_fast(spec))

    sources = sorted(mix_spec)
    rngs: dict[str, random.Random] = {}
    taken: dict[str, array] = {}          # source -> offsets of the taken rows, file order
    assigned_sys: dict[str, dict[int, str]] = {}  # source -> {position in taken: system message}
    paths: dict[str, Path] = {}
    info: dict[str, dict] = {}
    for s in sources:
        d = Path(clean_dirs[s])
        rec_path = d / "records.jsonl"
        if not rec_path.is_file():
            raise MixError(f"source {s!r}: {rec_path} not found (run the clean stage first)")
        paths[s] = rec_path
        offsets = _line_offsets(rec_path)
        available = len(offsets)
        n = _n_take(s, mix_spec[s], available)
        rng = random.Random(f"{seed}:{s}")
        rngs[s] = rng
        idx = sorted(rng.sample(range(available), n))
        taken[s] = array("q", (offsets[i] for i in idx))
        del offsets
        assigned_sys[s] = {}
        if sysmsgs is not None:
            with open(rec_path, "rb") as f:
                for pos, off in enumerate(taken[s]):
                    r = _read_at(f, off)
                    if "messages" in r and not r.get("system"):
                        assigned_sys[s][pos] = rng.choice(sysmsgs)
        report_path = d / "report.json"
        clean_report = read_json(report_path) if report_path.is_file() else {}
        entry = mix_spec[s]
        info[s] = {
            "rows_read": clean_report.get("rows_read"),
            "rows_cleaned": clean_report.get("rows_kept", available),
            "cleaning": {"reader_rejects": clean_report.get("reader_rejects", {}),
                         "filters": clean_report.get("filters", [])},
            "requested": dict(entry),
            "available": available,
            "taken": n,
            "shortfall": max(entry["count"] - n, 0) if "count" in entry else 0,
        }
        if sysmsgs is not None:
            info[s]["system_messages_assigned"] = len(assigned_sys[s])

    val_n = _val_counts(spec, {s: len(taken[s]) for s in sources})
    train: list[tuple[int, int]] = []     # (source index, position in taken)
    val: list[tuple[int, int]] = []
    for si, s in enumerate(sources):
        n = len(taken[s])
        val_idx = set(rngs[s].sample(range(n), val_n[s])) if val_n[s] else set()
        n_val = 0
        for pos in range(n):
            if pos in val_idx:
                val.append((si, pos))
                n_val += 1
            else:
                train.append((si, pos))
        info[s]["train"] = n - n_val
        info[s]["val"] = n_val

    random.Random(seed).shuffle(train)

    lengths: dict[str, array] = {s: array("l") for s in sources}

    def rows(items, measure: bool):
        handles = {}
        batch: list[tuple[str, list[str]]] = []

        def flush():
            if batch:
                flat = [p for _, parts in batch for p in parts]
                counts = count_tokens(flat)
                k = 0
                for src, parts in batch:
                    lengths[src].append(sum(counts[k:k + len(parts)]))
                    k += len(parts)
                batch.clear()

        try:
            for si, pos in items:
                s = sources[si]
                if s not in handles:
                    handles[s] = open(paths[s], "rb")
                r = _read_at(handles[s], taken[s][pos])
                if pos in assigned_sys[s]:
                    r["system"] = assigned_sys[s][pos]
                if measure and count_tokens is not None:
                    batch.append((s, _contents(r)))
                    if len(batch) >= 512:
                        flush()
                yield r
            if measure and count_tokens is not None:
                flush()
        finally:
            for f in handles.values():
                f.close()

    report = {
        "recipe": spec.get("recipe"),
        "adapter": spec.get("adapter"),
        "seed": seed,
        "sources": info,
        "totals": {"train": len(train), "val": len(val)},
    }
    if spec.get("validation"):
        report["validation"] = dict(spec["validation"])
    with atomic_dir(out_dir) as tmp:
        atomic_write_jsonl(tmp / "train.jsonl", rows(train, True))
        atomic_write_jsonl(tmp / "val.jsonl", rows(val, False))
        if count_tokens is not None:
            report["token_lengths"] = {
                "counted": "train split; tokens of system, input and turns (or text), base tokenizer, "
                           "no template, no special tokens; nearest-rank percentiles",
                "sources": {s: length_stats(lengths[s]) for s in sources},
                "overall": length_stats([v for s in sources for v in lengths[s]]),
            }
            report["tokenizers"] = tokenizer_report(spec, tokenizer_dir, tmp / "train.jsonl")
        atomic_write_json(tmp / "data_report.json", report)
    return report
