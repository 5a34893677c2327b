"""Per-recipe assets for ``snakemake --report`` (``results/<id>/report/``).

``assets(spec, out_dir)`` writes four self-contained HTML files that the ``report_assets``
rule marks with ``report(...)``:

* ``data.html``  the data reports (rows per source, filters, train/val) of every adapter;
* ``loss.html``  training-loss curves per adapter, drawn as inline SVG from the adapter's
                 ``train_log.jsonl`` (and, if training wrote one, its ``loss.png`` embedded);
                 an adapter without a log says so;
* ``eval.html``  the evaluation table of every evaluated model (merge variants side by side);
* ``card.html``  the rendered model card (``README.md``) as HTML.

``spec`` is ``plan.card_spec(recipe)`` plus ``adapter_dirs`` {adapter: dir} and ``card``
(the README path). Deterministic: no timestamps, no absolute paths.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from .render import _load, _results_variants, average, eval_rows

STYLE = ("<style>body{font-family:sans-serif;max-width:60em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child,th:first-child"
         "{text-align:left}</style>")


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>{STYLE}"
            f"</head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def data_html(spec: dict) -> str:
    parts = []
    for adapter, path in sorted((spec.get("data_reports") or {}).items()):
        rep = _load(path)
        parts.append(f"<h2>Adapter {html.escape(adapter)}</h2>")
        if not rep:
            parts.append("<p>No data report.</p>")
            continue
        rows, frows = [], []
        for src, s in sorted((rep.get("sources") or {}).items()):
            req = s.get("requested") or {}
            rows.append([src, s.get("rows_read"), s.get("rows_cleaned"), ", ".join(f"{k} {v}" for k, v in req.items()),
                         s.get("available"), s.get("taken"), s.get("shortfall"), s.get("train"), s.get("val")])
            cl = s.get("cleaning") or {}
            for reason, n in sorted((cl.get("reader_rejects") or {}).items()):
                frows.append([src, f"reader: {reason}", None, None, n])
            for f in cl.get("filters") or []:
                frows.append([src, f.get("name"), f.get("in"), f.get("out"), f.get("dropped")])
        tot = rep.get("totals") or {}
        rows.append(["total", None, None, None, None, None, None, tot.get("train"), tot.get("val")])
        parts.append(f"<p>mix seed {html.escape(str(rep.get('seed')))}</p>")
        parts.append(_table(["source", "rows read", "kept after cleaning", "requested", "available", "taken",
                             "shortfall", "train", "val"], rows))
        parts.append("<h3>Cleaning</h3>")
        parts.append(_table(["source", "step", "in", "out", "dropped"], frows))
    return _page(f"{spec['recipe']['id']}: data", "\n".join(parts))


def _svg_curve(points: list[tuple[float, float]], w: int = 600, h: int = 240) -> str:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    sx = (w - 60) / ((x1 - x0) or 1)
    sy = (h - 40) / ((y1 - y0) or 1)
    pts = " ".join(f"{50 + (x - x0) * sx:.1f},{h - 25 - (y - y0) * sy:.1f}" for x, y in points)
    return (f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\">"
            f"<rect width=\"{w}\" height=\"{h}\" fill=\"white\" stroke=\"#ccc\"/>"
            f"<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{pts}\"/>"
            f"<text x=\"5\" y=\"15\" font-size=\"11\">loss {y1:.4g}</text>"
            f"<text x=\"5\" y=\"{h - 28}\" font-size=\"11\">{y0:.4g}</text>"
            f"<text x=\"50\" y=\"{h - 8}\" font-size=\"11\">step {x0:g}</text>"
            f"<text x=\"{w - 70}\" y=\"{h - 8}\" font-size=\"11\">step {x1:g}</text></svg>")


def loss_html(spec: dict) -> str:
    parts = []
    for adapter, d in sorted((spec.get("adapter_dirs") or {}).items()):
        d = Path(d)
        parts.append(f"<h2>Adapter {html.escape(adapter)}</h2>")
        log = d / "train_log.jsonl"
        points = []
        if log.is_file():
            for line in log.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    if isinstance(rec.get("loss"), (int, float)) and isinstance(rec.get("step"), (int, float)):
                        points.append((float(rec["step"]), float(rec["loss"])))
        if len(points) >= 2:
            parts.append(_svg_curve(points))
        elif points:
            parts.append(f"<p>One logged step: loss {points[0][1]:.4g}.</p>")
        else:
            parts.append("<p>No training-loss log (train_log.jsonl) for this adapter.</p>")
        png = d / "loss.png"
        if png.is_file():
            b64 = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f"<p>loss.png written by training:</p><img alt=\"loss\" src=\"data:image/png;base64,{b64}\"/>")
    if not parts:
        parts.append("<p>No adapters.</p>")
    return _page(f"{spec['recipe']['id']}: training loss", "\n".join(parts))


def eval_html(spec: dict) -> str:
    variants = _results_variants(spec)
    if not variants:
        return _page(f"{spec['recipe']['id']}: evaluation", "<p>No evaluation results.</p>")
    tables = [(label, eval_rows(res)) for label, res in variants]
    tasks: list[str] = []
    for _, rows in tables:
        for r in rows:
            if r["display"] not in tasks:
                tasks.append(r["display"])
    rows_out = []
    for t in tasks:
        row: list[Any] = [t]
        for _, rows in tables:
            hit = next((r for r in rows if r["display"] == t), None)
            row.append(f"{hit['value']:.2f}" + (f" ± {hit['stderr']:.2f}" if hit and hit["stderr"] is not None else "")
                       if hit else "")
        rows_out.append(row)
    avg_row: list[Any] = ["Avg."]
    for _, rows in tables:
        a = average(rows)
        avg_row.append(f"{a:.2f}" if a is not None else "")
    rows_out.append(avg_row)
    body = ("<p>lm-evaluation-harness scores as percentages (value ± stderr); the first column is the "
            "published model.</p>\n" + _table(["task", *[lab for lab, _ in tables]], rows_out))
    return _page(f"{spec['recipe']['id']}: evaluation", body)


def card_html(spec: dict) -> str:
    path = Path(spec["card"])
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    front, body = "", text
    if text.startswith("---\n"):
        _, front, body = text.split("---\n", 2)
    try:
        from markdown_it import MarkdownIt

        rendered = MarkdownIt("commonmark").enable("table").render(body)
    except ImportError:  # markdown-it-py is in the lock; keep a readable fallback anyway
        rendered = f"<pre>{html.escape(body)}</pre>"
    meta = f"<details><summary>front matter</summary><pre>{html.escape(front)}</pre></details>" if front else ""
    return _page(f"{spec['recipe']['id']}: model card", meta + "\n" + rendered)


def assets(spec: dict, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in (("data.html", data_html), ("loss.html", loss_html), ("eval.html", eval_html),
                     ("card.html", card_html)):
        atomic_write_text(out / name, fn(spec))
        written.append(out / name)
    return written
