"""Clean one source: reader (raw rows -> normalized records) + filters.

Output (atomic directory)::

    out_dir/records.jsonl   kept normalized records, in reader order
    out_dir/rejects.jsonl   reader rejects (reader order), then filter rejects
    out_dir/report.json     {"source", "format", "files", "rows_read", "reader_rejects",
                             "filters", "rows_kept"}
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from json.encoder import encode_basestring
from pathlib import Path

from reprotune.download import DownloadError, match_patterns
from reprotune.filters import FilterChain
from reprotune.io import CHUNK, atomic_dir, atomic_write_json, jsonl_line, read_json


class CleanError(RuntimeError):
    """Bad clean input (missing manifest, pattern without match, reader output)."""


def resolve_files(in_dir: Path, patterns) -> list[str]:
    """Sorted repo paths from ``in_dir/manifest.json`` that match ``patterns``."""
    manifest_path = Path(in_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise CleanError(f"no manifest.json in {in_dir} (run the download stage first)")
    available = sorted((read_json(manifest_path).get("files") or {}).keys())
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns or ["*"])
    try:
        chosen = match_patterns(patterns, available, str(manifest_path))
    except DownloadError as e:
        raise CleanError(str(e)) from None
    missing = [p for p in chosen if not (Path(in_dir) / p).is_file()]
    if missing:
        raise CleanError(f"file(s) listed in {manifest_path} are missing: {', '.join(missing)}")
    return chosen


_CHAT_KEYS = frozenset({"id", "messages", "source", "system"})
_CHAT_INPUT_KEYS = _CHAT_KEYS | {"input"}
_MESSAGE_KEYS = frozenset({"content", "role"})


def record_line(rec: dict) -> str:
    """``jsonl_line(rec)``, the same text, built directly for the normalized chat record
    (``id``, ``source``, ``system``, optional ``input``: strings; ``messages``: a list of
    ``{"role", "content"}`` strings): keys in sorted order, the separators of
    ``json.dumps`` and its own string encoder (``ensure_ascii=False``), without the
    generic encoder's per-call set-up and key sorting. Any other shape goes through
    ``jsonl_line``."""
    keys = rec.keys()
    if keys == _CHAT_KEYS:
        head = ""
    elif keys == _CHAT_INPUT_KEYS and type(rec["input"]) is str:
        head = ', "input": ' + encode_basestring(rec["input"])
    else:
        return jsonl_line(rec)
    rid, source, system, messages = rec["id"], rec["source"], rec["system"], rec["messages"]
    if type(rid) is not str or type(source) is not str or type(system) is not str or type(messages) is not list:
        return jsonl_line(rec)
    parts = []
    for m in messages:
        if type(m) is not dict or m.keys() != _MESSAGE_KEYS:
            return jsonl_line(rec)
        content, role = m["content"], m["role"]
        if type(content) is not str or type(role) is not str:
            return jsonl_line(rec)
        parts.append('{"content": ' + encode_basestring(content) + ', "role": ' + encode_basestring(role) + "}")
    return ('{"id": ' + encode_basestring(rid) + head + ', "messages": [' + ", ".join(parts)
            + '], "source": ' + encode_basestring(source) + ', "system": ' + encode_basestring(system) + "}\n")


def clean_source(spec: dict, in_dir: Path, out_dir: Path) -> dict:
    """Run the reader and the filters for one source; return the report.

    spec: a recipe source entry plus ``name``: ``{"name", "format", "files", "options", "filters",
    "tokenizer_dir"?}`` (``tokenizer_dir``: the base model directory for ``tokenizer: base`` filters).

    Streaming: records go from the reader through the filter chain straight to
    ``records.jsonl``; nothing holds a whole file (memory stays flat in the row count,
    apart from the dedup filters' per-row hashes).
    """
    from reprotune.sources import get as get_reader

    name = spec.get("name")
    fmt = spec.get("format")
    if not name or not fmt:
        raise CleanError(f"clean spec needs 'name' and 'format', got keys {sorted(spec)}")
    in_dir = Path(in_dir)
    rel_files = resolve_files(in_dir, spec.get("files"))
    files = [in_dir / p for p in rel_files]
    read = get_reader(fmt)
    context = {"tokenizer_dir": spec["tokenizer_dir"], "tokenizer_use_fast": bool(spec.get("tokenizer_use_fast", True))} \
        if spec.get("tokenizer_dir") else {}
    chain = FilterChain(list(spec.get("filters") or []), context)

    reasons: Counter = Counter()
    n_records = 0
    n_kept = 0
    with atomic_dir(out_dir) as tmp:
        filter_rejects = tmp / ".filter_rejects.jsonl"
        with open(tmp / "records.jsonl", "w", encoding="utf-8") as f_rec, \
                open(tmp / "rejects.jsonl", "w", encoding="utf-8") as f_rej, \
                open(filter_rejects, "w", encoding="utf-8") as f_frej:
            for row in read(files, dict(spec.get("options") or {}), name):
                if "reason" in row:
                    reasons[row["reason"]] += 1
                    f_rej.write(jsonl_line(row))
                elif "messages" in row or "text" in row:
                    n_records += 1
                    rej = chain(row)
                    if rej is None:
                        n_kept += 1
                        f_rec.write(record_line(row))
                    else:
                        f_frej.write(jsonl_line(rej))
                else:
                    raise CleanError(f"reader {fmt!r} yielded a row that is neither record nor reject: "
                                     f"keys {sorted(row)}")
        # rejects.jsonl: reader rejects (reader order), then filter rejects
        with open(tmp / "rejects.jsonl", "ab") as out, open(filter_rejects, "rb") as fin:
            shutil.copyfileobj(fin, out, CHUNK)
        filter_rejects.unlink()
        for f in ("records.jsonl", "rejects.jsonl"):
            os.chmod(tmp / f, 0o644)
        report = {
            "source": name,
            "format": fmt,
            "files": rel_files,
            "rows_read": n_records + sum(reasons.values()),
            "reader_rejects": {k: reasons[k] for k in sorted(reasons)},
            "filters": chain.stats(),
            "rows_kept": n_kept,
        }
        atomic_write_json(tmp / "report.json", report)
    return report
