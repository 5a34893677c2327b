"""Security: tokens never reach an output file; no pickle; trust_remote_code only from a pinned recipe."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _tinybuild as tb  # noqa: E402

from reprotune import plan, provenance  # noqa: E402
from reprotune.recipe import RecipeError, load_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            hits += [f"{p.relative_to(root)}: {n.decode()[:6]}..." for n in needles if n in data]
    return hits


def test_scanner_finds_a_planted_token(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "x.log").write_text(f"oops {tb.FAKE_HF_TOKEN}\n")
    assert _files_holding(tmp_path, [tb.FAKE_HF_TOKEN.encode()]) == ["logs/x.log: hf_FaK..."]


@pytest.mark.slow
def test_build_with_tokens_in_env_writes_them_nowhere():
    """Both verify builds ran with HF_TOKEN and OPENAI_API_KEY set (tests/_tinybuild.py)."""
    r, a, b = tb.verified()
    needles = [tb.FAKE_HF_TOKEN.encode(), tb.FAKE_OPENAI_KEY.encode()]
    for root in (a, b):
        for sub in ("results", "resources", "logs", ".snakemake"):
            assert (root / sub).is_dir(), sub
        assert (root / "logs" / tb.RECIPE / "evaluate.log").is_file()
        assert _files_holding(root, needles) == []  # results/, resources/, logs/, .snakemake/log, metadata
    assert _files_holding(a.parent, needles) == []  # the verify build logs beside the roots
    assert tb.FAKE_HF_TOKEN not in r.stdout + r.stderr


@pytest.mark.slow
def test_no_pickle_files_written():
    """No pickle anywhere a stage reads from. The one place pickles exist is a twin's mirror of a
    repo that really ships them (resources/twins/, its .bin shards, as the Hub serves them); the
    download converts those to safetensors, so resources/base/ holds none."""
    from reprotune import bases

    _, a, _ = tb.verified()
    bad = [str(p.relative_to(a)) for p in (a / "results").rglob("*") if p.suffix in PICKLE_SUFFIXES]
    twins = a / "resources" / "twins"
    bad += [str(p.relative_to(a)) for p in (a / "resources").rglob("*")
            if p.suffix in PICKLE_SUFFIXES and not p.is_relative_to(twins)]
    assert bad == []
    assert list((a / "results").rglob("*.safetensors"))
    for p in twins.rglob("*.bin"):  # only where the real repo ships .bin weights, in its layout
        repo = p.parent.relative_to(p.parents[2]).as_posix()  # hub/models/<org>/<name>/<file>
        assert p.name in bases.weight_files(bases.get(repo)), p


def _calls(text: str, name: str) -> list[str]:
    """The full text of every call ``name(...)`` in ``text`` (balanced parentheses)."""
    out = []
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 0, m.end() - 1
        while i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        out.append(text[m.start():i + 1])
    return out


def _sources():
    return sorted(SRC.rglob("*.py"))


def test_static_no_unsafe_torch_load_or_pickle():
    offenders = []
    for p in _sources():
        text = p.read_text(encoding="utf-8")
        for call in _calls(text, "torch.load"):
            if not re.search(r"weights_only\s*=\s*True", call):
                offenders.append(f"{p.relative_to(REPO)}: {call[:80]}")
        for pat in (r"^\s*from pickle ", r"\bpickle\.loads?\(", r"\bUnpickler\b", r"safe_serialization\s*=\s*False"):
            offenders += [f"{p.relative_to(REPO)}: {pat}" for _ in re.finditer(pat, text, re.M)]
        for pat, allowed in ((r"^\s*import pickle", PICKLE_IMPORT_ALLOWED), (r"\btorch\.save\(", TORCH_SAVE_ALLOWED)):
            if re.search(pat, text, re.M) and p.relative_to(REPO).as_posix() not in allowed:
                offenders.append(f"{p.relative_to(REPO)}: {pat}")
    assert offenders == []


# download.py imports pickle only to name pickle.UnpicklingError (what torch.load(weights_only=True)
# raises for a non-tensor pickle); twin.py writes a twin's .bin shards where the real repo ships them
PICKLE_IMPORT_ALLOWED = {"src/reprotune/download.py"}
TORCH_SAVE_ALLOWED = {"src/reprotune/twin.py"}


def test_static_trust_remote_code_never_hardwired_true():
    """Every ``trust_remote_code=`` in src/ is ``False`` or comes from the recipe (spec/recipe value)."""
    seen = 0
    for p in _sources():
        text = p.read_text(encoding="utf-8")
        for m in re.finditer(r"trust_remote_code\s*=\s*([^,)\s\"]+)", text):
            seen += 1
            value = m.group(1)
            assert value == "False" or re.search(r"spec|recipe|base_model", value), f"{p}: {m.group(0)}"
        assert not re.search(r"trust_remote_code\s*=\s*True", text), p
        for call in _calls(text, "from_pretrained"):
            assert "trust_remote_code=True" not in call.replace(" ", ""), f"{p}: {call[:80]}"
    assert seen > 0  # the scan does look at real calls


def _recipe_with(tmp_path, **base_model):
    data = yaml.safe_load((REPO / "recipes" / "tulu-v2-qlora-70b.yaml").read_text())
    data["base_model"].update(base_model)
    path = tmp_path / "tulu-v2-qlora-70b.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_trust_remote_code_needs_a_pinned_revision_on_the_workflow_path(tmp_path):
    with pytest.raises(RecipeError, match="base_model.trust_remote_code': true only with a pinned"):
        load_recipe(_recipe_with(tmp_path, trust_remote_code=True, revision=None))
    pinned = load_recipe(_recipe_with(tmp_path, trust_remote_code=True, revision="a" * 40))
    assert pinned["base_model"]["trust_remote_code"] is True
    assert plan.base_download_spec(pinned)["revision"] == "a" * 40
    # the default is false
    plain = load_recipe(REPO / "recipes" / "tulu-v2-qlora-70b.yaml")
    assert not plain["base_model"].get("trust_remote_code")


def test_provenance_scrubs_token_like_env_values(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_API_KEY", "not-a-known-shape-0123456789")
    monkeypatch.chdir(tmp_path)
    spec = {"recipe": {"id": "demo", "card": {"notes": [
        f"{tb.FAKE_HF_TOKEN} {tb.FAKE_OPENAI_KEY} not-a-known-shape-0123456789 ghp_" + "x" * 36]}},
        "command": ["snakemake", f"--config=key={tb.FAKE_OPENAI_KEY}"], "containers": {}}
    text = str(provenance.collect(spec, {}))
    for secret in (tb.FAKE_HF_TOKEN, tb.FAKE_OPENAI_KEY, "not-a-known-shape-0123456789", "ghp_xxxx"):
        assert secret not in text
    assert text.count("<redacted>") >= 5
