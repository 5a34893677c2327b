"""Clean one source: reader (raw rows -> normalized records) + filters.

Output (atomic directory)::

    out_dir/records.jsonl   kept normalized records, in reader order
    out_dir/rejects.jsonl   reader rejects (reader order), then filter rejects
    out_dir/report.json     {"source", "format", "files", "rows_read", "reader_rejects",
                             "filters", "rows_kept"}
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from reprotune.download import DownloadError, match_patterns
from reprotune.filters import apply_filters
from reprotune.io import atomic_dir, atomic_write_json, atomic_write_jsonl, read_json


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


def clean_source(spec: dict, in_dir: Path, out_dir: Path) -> dict:
    """Run the reader and the filters for one source; return the report.

    spec: a recipe source entry plus ``name``: ``{"name", "format", "files", "options", "filters"}``.
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

    records: list[dict] = []
    reader_rejects: list[dict] = []
    for row in read(files, dict(spec.get("options") or {}), name):
        if "reason" in row:
            reader_rejects.append(row)
        elif "messages" in row or "text" in row:
            records.append(row)
        else:
            raise CleanError(f"reader {fmt!r} yielded a row that is neither record nor reject: "
                             f"keys {sorted(row)}")

    kept, filter_rejects, stats = apply_filters(records, list(spec.get("filters") or []))
    reasons = Counter(r["reason"] for r in reader_rejects)
    report = {
        "source": name,
        "format": fmt,
        "files": rel_files,
        "rows_read": len(records) + len(reader_rejects),
        "reader_rejects": {k: reasons[k] for k in sorted(reasons)},
        "filters": stats,
        "rows_kept": len(kept),
    }
    with atomic_dir(out_dir) as tmp:
        atomic_write_jsonl(tmp / "records.jsonl", kept)
        atomic_write_jsonl(tmp / "rejects.jsonl", [*reader_rejects, *filter_rejects])
        atomic_write_json(tmp / "report.json", report)
    return report
