"""Command line: ``python -m reprotune <stage> ...`` — what the Snakemake rules call.

Each sub-command parses paths and a JSON ``--spec`` (the slice of the resolved
recipe the stage needs, handed over by the rule's ``params`` so that Snakemake
reruns a job exactly when its slice changes) and calls one stage function.

Errors that are the user's to fix (bad recipe, hash mismatch, schema mismatch of
a data file, unknown names) are printed as one line ``reprotune: error: ...``
with exit status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("reprotune")


def _pairs(values: list[str] | None) -> dict[str, Path]:
    out = {}
    for v in values or []:
        name, sep, path = v.partition("=")
        if not sep or not name:
            raise SystemExit(f"reprotune: error: expected NAME=PATH, got {v!r}")
        out[name] = Path(path)
    return out


def _spec(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"reprotune: error: --spec is not valid JSON ({e})") from None


def cmd_validate(a) -> int:
    from .recipe import load_recipe

    for path in a.recipes:
        r = load_recipe(path, a.overlay)
        print(f"ok  {path}  ({r['scale']} scale, adapters: {', '.join(sorted(r['adapters']))})")
    return 0


def cmd_import_card(a) -> int:
    from .cardimport import cli as import_cli

    return import_cli.run(Path(a.card), a.id, Path(a.out), a.base_revision, a.force)


def cmd_twin(a) -> int:
    from . import twin

    twin.build(_spec(a.spec), sorted(Path(p) for p in a.texts), Path(a.out))
    return 0


def cmd_download(a) -> int:
    from . import download

    mirror = Path(a.mirror) if a.mirror else None
    if a.model:
        download.fetch_model(_spec(a.spec), Path(a.out), mirror)
    else:
        download.fetch_dataset(_spec(a.spec), Path(a.out), mirror)
    return 0


def cmd_clean(a) -> int:
    from . import clean

    report = clean.clean_source(_spec(a.spec), Path(a.input), Path(a.out))
    log.info("cleaned %s: %s read, %s kept", report.get("source"), report.get("rows_read"), report.get("rows_kept"))
    return 0


def cmd_mix(a) -> int:
    from . import mix

    mix.mix(_spec(a.spec), _pairs(a.clean), Path(a.out), Path(a.tokenizer) if a.tokenizer else None)
    return 0


def cmd_tokenize(a) -> int:
    from . import dataset

    stats = dataset.build(_spec(a.spec), Path(a.data), Path(a.base), Path(a.out), threads=a.threads)
    log.info("tokenized: %s train rows kept of %s", stats["train"]["kept"], stats["train"]["records"])
    return 0


def cmd_misconceptions(a) -> int:
    from . import misconception

    rep = misconception.generate(_spec(a.spec), Path(a.out))
    log.info("misconceptions: %s written after %s request(s)", rep["written"], rep["requests"])
    return 0


def cmd_merge(a) -> int:
    from . import merge

    merge.merge(_spec(a.spec), Path(a.base), _pairs(a.adapter), Path(a.out))
    return 0


def cmd_evaluate(a) -> int:
    from . import evaluate

    evaluate.evaluate(_spec(a.spec), Path(a.model), Path(a.out), _pairs(a.eval_data))
    if a.runinfo:
        # lm-eval's run-dependent sidecar (dates, wall times, paths) belongs in logs/, not results/
        sidecar = Path(a.out).with_suffix(".runinfo.json")
        Path(a.runinfo).parent.mkdir(parents=True, exist_ok=True)
        if sidecar.exists():
            os.replace(sidecar, a.runinfo)
    return 0


def cmd_provenance(a) -> int:
    from . import provenance

    provenance.write(_spec(a.spec), _pairs(a.input), Path(a.out))
    return 0


def cmd_card(a) -> int:
    from .card import render, render_adapter

    spec = _spec(a.spec)
    render(spec, Path(a.out))
    for name, path in sorted(_pairs(a.adapter_readme).items()):
        render_adapter(spec, name, path)
    return 0


def cmd_diff(a) -> int:
    from . import provenance
    from .io import read_json

    lines = provenance.diff(read_json(a.a), read_json(a.b))
    for line in lines:
        print(line)
    if not lines:
        print("identical")
    return 1 if lines else 0


def cmd_verify(a) -> int:
    from . import verify

    return verify.verify(a.recipes, keep=a.keep, workdir=a.workdir, cores=a.cores, configfile=a.configfile,
                         report=a.report, compare_roots=tuple(a.compare) if a.compare else None)


def cmd_report_assets(a) -> int:
    from .card.report import assets

    assets(_spec(a.spec), Path(a.out))
    return 0


def cmd_publish(a) -> int:
    from . import publish

    publish.publish(a.recipe, a.what, a.repo_id, yes=a.yes, adapter=a.adapter, results=a.results,
                    private=a.private)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reprotune", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("validate", help="validate recipes (and an overlay)")
    s.add_argument("recipes", nargs="+")
    s.add_argument("--overlay")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("import-card", help="draft a recipe from a model card (every guess listed, TODOs for the rest)")
    s.add_argument("card", help="the model card to read (a README.md, or a model repo directory holding one)")
    s.add_argument("--id", required=True, help="the recipe id (also the file name recipes/<id>.yaml)")
    s.add_argument("--out", required=True, help="where to write the draft")
    s.add_argument("--base-revision", default=None, help="pin base_model.revision (a commit sha)")
    s.add_argument("--force", action="store_true", help="overwrite an existing --out")
    s.set_defaults(fn=cmd_import_card)
    s = sub.add_parser("twin", help="build the twin of a base model (a one-repo mirror in the real layout)")
    s.add_argument("--spec", required=True, help="JSON: {profile, seed, pretrain}")
    s.add_argument("--texts", nargs="+", required=True, help="files whose text trains the tokenizer and pre-trains")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_twin)

    s = sub.add_parser("download", help="fetch pinned files of a dataset (or model) repo")
    s.add_argument("--spec", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--mirror", help="read from this local mirror instead of the Hub")
    s.add_argument("--model", action="store_true", help="the repo is a model repo")
    s.set_defaults(fn=cmd_download)

    s = sub.add_parser("clean", help="read one source into normalized records and filter them")
    s.add_argument("--spec", required=True)
    s.add_argument("--input", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_clean)

    s = sub.add_parser("mix", help="sample cleaned sources into one adapter's training data")
    s.add_argument("--spec", required=True)
    s.add_argument("--clean", nargs="+", required=True, metavar="SOURCE=DIR")
    s.add_argument("--out", required=True)
    s.add_argument("--tokenizer", help="tokenizer dir (the base model) for token-length stats in data_report.json")
    s.set_defaults(fn=cmd_mix)

    s = sub.add_parser("tokenize", help="encode an adapter's mixed rows once into a memory-mapped Arrow dataset")
    s.add_argument("--spec", required=True, help="JSON: {template, max_length, packing, tokenizer}")
    s.add_argument("--data", required=True, help="the mix stage's directory (train.jsonl, val.jsonl)")
    s.add_argument("--base", required=True, help="the base model directory (its tokenizer)")
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1, help="worker processes (the output does not depend on it)")
    s.set_defaults(fn=cmd_tokenize)

    s = sub.add_parser("generate-misconceptions",
                       help="generate airoboros-style misconception pairs from an OpenAI-compatible endpoint")
    s.add_argument("--spec", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_misconceptions)

    s = sub.add_parser("merge", help="merge adapters into the base model")
    s.add_argument("--spec", required=True)
    s.add_argument("--base", required=True)
    s.add_argument("--adapter", nargs="+", required=True, metavar="NAME=DIR")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_merge)

    s = sub.add_parser("evaluate", help="run lm-evaluation-harness on a model")
    s.add_argument("--spec", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--eval-data", nargs="+", metavar="TASK=DIR",
                   help="each task's downloaded eval data (resources/eval/<recipe>/<task>)")
    s.add_argument("--runinfo", help="move lm-eval's run-info sidecar here (a log path)")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("provenance", help="write provenance.json")
    s.add_argument("--spec", required=True)
    s.add_argument("--input", nargs="*", metavar="NAME=PATH")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_provenance)

    s = sub.add_parser("card", help="render the model card")
    s.add_argument("--spec", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--adapter-readme", nargs="*", metavar="ADAPTER=PATH")
    s.set_defaults(fn=cmd_card)

    s = sub.add_parser("report-assets", help="write results/<id>/report/*.html for snakemake --report")
    s.add_argument("--spec", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_report_assets)

    s = sub.add_parser("publish", help="upload a built model or adapter to the Hub (dry run unless --yes)")
    s.add_argument("--recipe", required=True, help="recipe id (results/<id>/)")
    s.add_argument("--what", required=True, choices=["model", "adapter"])
    s.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    s.add_argument("--adapter", help="which adapter (recipes with several)")
    s.add_argument("--results", default="results", help="results root (default: results)")
    s.add_argument("--private", action="store_true", help="create the repo private")
    s.add_argument("--yes", action="store_true", help="really upload (needs HF_TOKEN in the environment)")
    s.set_defaults(fn=cmd_publish)

    s = sub.add_parser("diff", help="say what differs between two provenance.json files")
    s.add_argument("a")
    s.add_argument("b")
    s.set_defaults(fn=cmd_diff)

    s = sub.add_parser("images", help="build/push the images of docker/ and show docker/images.lock")
    isub = s.add_subparsers(dest="images_cmd", required=True)
    b = isub.add_parser("build", help="build, tag by content, push to --registry, write the digest into the lock")
    b.add_argument("--registry", required=True, help="where to push, e.g. ghcr.io/me or localhost:5000")
    b.add_argument("--image", action="append", choices=["cpu", "cuda"], help="which image (repeatable; default both)")
    b.add_argument("--build-arg", action="append", metavar="KEY=VALUE", help="passed to the build (repeatable)")
    b.add_argument("--volume", action="append", metavar="HOST:CTR[:ro]", help="mounted during the build (podman)")
    b.add_argument("--insecure", action="store_true", help="push over plain HTTP (a local test registry)")
    b.add_argument("--no-push", action="store_true", help="build and tag only; the lock gets no digest")
    b.add_argument("--lock", help="images lock to rewrite (default docker/images.lock)")
    b.set_defaults(fn=lambda a: _images().main_build(a))
    sh = isub.add_parser("show", help="print each image's container URL")
    sh.add_argument("--lock", help="images lock (default docker/images.lock)")
    sh.set_defaults(fn=lambda a: _images().main_show(a))

    s = sub.add_parser("verify", help="build twice from scratch and compare every file under results/")
    s.add_argument("--recipes", nargs="+", help="recipe ids (default: those of the config file)")
    s.add_argument("--configfile", help="workflow config (default: the repository's config.yaml)")
    s.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores per build (default: all)")
    s.add_argument("--workdir", help="create the two build roots under this directory (default: system temp)")
    s.add_argument("--keep", action="store_true", help="keep both build roots")
    s.add_argument("--report", help="also write the table to this file")
    s.add_argument("--compare", nargs=2, metavar=("ROOT_A", "ROOT_B"),
                   help="compare two existing build roots instead of building")
    s.set_defaults(fn=cmd_verify)
    return p


def _images():
    from . import images

    return images


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from .runtime import log_runtime

    log_runtime(args.cmd)
    try:
        return args.fn(args)
    except Exception as e:  # user-facing errors: one line, no traceback
        if type(e).__module__.startswith("reprotune") and type(e).__name__.endswith("Error"):
            print(f"reprotune: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
