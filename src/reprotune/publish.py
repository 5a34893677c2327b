"""Publish a built model or adapter to the Hugging Face Hub (``python -m reprotune publish``).

``publish(recipe_id, what, repo_id, yes=False, adapter=None, results="results") -> plan``

* ``what="model"``:   ``results/<id>/model/`` plus the card ``results/<id>/README.md``
                      (uploaded as ``README.md``);
* ``what="adapter"``: ``results/<id>/adapters/<adapter>/`` plus its own card
                      ``results/<id>/adapter_cards/<adapter>.md`` (as ``README.md``) -- the
                      tulu card publishes only the adapter.

Default is a dry run: the files that would be uploaded, with sizes, are printed and nothing
leaves the machine. With ``yes=True`` the files go up with ``huggingface_hub.upload_folder``
(the repo is created first if needed), using the token in ``HF_TOKEN`` (or
``HUGGING_FACE_HUB_TOKEN``). The token is handed to the API only: it is never printed,
logged, or written to any file (cards and provenance never see it).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
WHATS = ("model", "adapter")


class PublishError(RuntimeError):
    pass


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def upload_plan(recipe_id: str, what: str, adapter: str | None = None,
                results: str | os.PathLike = "results") -> dict:
    """The folder and card to upload and the resulting file list ``[(path in repo, size)]``."""
    if what not in WHATS:
        raise PublishError(f"--what must be one of {', '.join(WHATS)}, got {what!r}")
    root = Path(results) / recipe_id
    if not root.is_dir():
        raise PublishError(f"no build of recipe {recipe_id!r} under {results}/ (run snakemake first)")
    if what == "model":
        folder, card = root / "model", root / "README.md"
    else:
        adapters = sorted(p.name for p in (root / "adapters").iterdir() if p.is_dir()) \
            if (root / "adapters").is_dir() else []
        if adapter is None:
            if len(adapters) != 1:
                raise PublishError(f"recipe {recipe_id!r} has adapters {adapters}: choose one with --adapter")
            adapter = adapters[0]
        if adapter not in adapters:
            raise PublishError(f"recipe {recipe_id!r} has no built adapter {adapter!r} (built: {adapters})")
        folder, card = root / "adapters" / adapter, root / "adapter_cards" / f"{adapter}.md"
        if not (folder / "adapter_config.json").exists():
            raise PublishError(f"{folder} is not a LoRA adapter (a full fine-tune: publish --what model)")
    if not folder.is_dir():
        raise PublishError(f"{folder} does not exist (run snakemake first)")
    if not card.is_file():
        raise PublishError(f"{card} does not exist (run snakemake first)")
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}
    files["README.md"] = card
    return {"recipe": recipe_id, "what": what, "adapter": adapter, "folder": folder, "card": card,
            "files": sorted((name, p.stat().st_size) for name, p in files.items()), "paths": files}


def _token() -> str | None:
    for name in TOKEN_ENV:
        value = os.environ.get(name)
        if value:
            return value
    return None


def publish(recipe_id: str, what: str, repo_id: str, yes: bool = False, adapter: str | None = None,
            results: str | os.PathLike = "results", private: bool = False,
            echo: Callable[[str], None] = print) -> dict:
    """Dry run (default) or upload; returns the plan (with ``uploaded`` and ``commit_url``)."""
    if not repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"--repo-id must be ORG/NAME, got {repo_id!r}")
    plan = upload_plan(recipe_id, what, adapter, results)
    token = _token() if yes else None
    if yes and not token:
        raise PublishError("--yes needs a Hugging Face token in the environment variable HF_TOKEN; nothing uploaded")
    total = sum(size for _, size in plan["files"])
    src = f"{plan['folder']}" + (f" (+ {plan['card']} as README.md)")
    echo(f"{'uploading' if yes else 'would upload'} {len(plan['files'])} files, {_human(total)}, "
         f"from {src} to https://huggingface.co/{repo_id}")
    for name, size in plan["files"]:
        echo(f"  {size:>14,d}  {name}")
    plan.update(uploaded=False, commit_url=None, repo_id=repo_id)
    if not yes:
        echo("dry run: nothing uploaded (add --yes, with a token in HF_TOKEN, to upload)")
        return plan
    import huggingface_hub

    with tempfile.TemporaryDirectory(prefix="reprotune-publish-") as stage:
        # stage the exact file set with symlinks (no copies of big weights)
        for name, path in plan["paths"].items():
            dst = Path(stage) / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), dst)
        huggingface_hub.create_repo(repo_id, token=token, repo_type="model", exist_ok=True, private=private)
        info = huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=stage, token=token, repo_type="model",
            commit_message=f"reprotune: {recipe_id} {what}" + (f" {plan['adapter']}" if plan["adapter"] else ""),
        )
    url = getattr(info, "commit_url", None) or str(info)
    plan.update(uploaded=True, commit_url=url)
    echo(f"uploaded: {url}")
    return plan
