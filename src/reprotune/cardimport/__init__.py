"""``reprotune import-card``: a model card -> a recipe draft, with every guess listed.

:func:`draft` reads the card (:mod:`.markdown`: front matter, sections, tables, bullets,
fences; a card whose newlines were collapsed is restored first), gathers what it states
(:mod:`.facts` training settings, :mod:`.base` the base model, :mod:`.data` datasets and mix
shares, :mod:`.prompt` the prompt format, :mod:`.meta` license, citations, results) and writes
the recipe the schema expects:

- a value the card states is written with a ``# from: <where>`` comment;
- a value inferred from the card is written, and the inference is a sentence in ``card.notes``;
- a value the card does not give is ``"TODO: <question>"`` at its key (``validate`` lists them
  all in one error until they are replaced);
- a contradiction inside the card is a ``Contradiction: ...`` note; it is never resolved
  silently.

Registries are data: keys.yaml (what cards call each setting) and datasets/*.yaml (known Hub
datasets: files, reader format, names used in prose).
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

from reprotune import bases

from . import base as base_mod
from . import data, emit, facts, markdown, meta, prompt
from . import train as train_mod
from .synth import synthesize


class Draft(NamedTuple):
    recipe: dict[str, Any]
    todos: list[tuple[str, str]]
    notes: list[str]
    sources: dict[str, str]       # dotted key path -> where in the card
    yaml: str


class _Acc:
    """What the draft accumulates: values' origins, TODOs, notes."""

    def __init__(self):
        self.where: dict[tuple, str] = {}
        self.todos: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def todo(self, path: tuple, question: str) -> str:
        self.todos.append((".".join(path), question))
        return f"TODO: {question}"

    def at(self, path: tuple, where: str) -> None:
        if where:
            self.where[path] = where


def _card_block(card: markdown.Card, recipe_id: str, acc: _Acc) -> dict:
    c: dict[str, Any] = {}
    c["title"], w = meta.title(card, recipe_id)
    acc.at(("card", "title"), w)
    langs, w = meta.language(card)
    c["language"] = langs if langs else acc.todo(("card", "language"), "Which languages (ISO codes) is the model for?")
    acc.at(("card", "language"), w)
    lic = meta.license_(card)
    for key in ("license", "license_name", "license_link"):
        if key in lic:
            c[key] = lic[key][0]
            acc.at(("card", key), lic[key][1])
    if "license" not in c:
        c["license"] = acc.todo(("card", "license"), "Under which license is the model published (a Hub license id)?")
    if card.meta.get("library_name") in ("transformers", "peft"):
        c["library_name"] = card.meta["library_name"]
        acc.at(("card", "library_name"), "front matter 'library_name'")
    desc, w = meta.description(card)
    c["description"] = desc or acc.todo(("card", "description"), "What does the model do (a short description)?")
    acc.at(("card", "description"), w)
    for key, found in (("limitations", meta.limitations(card)), ("license_text", meta.license_text(card))):
        if found:
            c[key] = found[0]
            acc.at(("card", key), f"section '{found[1]}'")
    cites = meta.citations(card)
    if cites:
        c["citations"] = cites
        acc.at(("card", "citations"), "BibTeX blocks")
    links = meta.links(card)
    if links:
        c["links"] = links
    results, w = meta.reported_results(card)
    if results:
        c["reported_results"] = results
        acc.at(("card", "reported_results"), w)
    return c


def _base_block(card: markdown.Card, title: str, license_: str, revision: str | None, acc: _Acc) -> dict:
    found = base_mod.evidence(card, title)
    base_id, where, notes = base_mod.choose(found, license_, title)
    acc.notes += notes
    out: dict[str, Any] = {"id": base_id or acc.todo(("base_model", "id"), "Which Hub model was fine-tuned (org/name)?")}
    acc.at(("base_model", "id"), where or "")
    out["revision"] = revision
    if base_id and bases.has(base_id):
        out["files"] = _base_files(base_id)
        acc.at(("base_model", "files"), f"what {base_id} ships (src/reprotune/bases)")
    elif base_id:
        acc.notes.append(f"{base_id} has no base profile (src/reprotune/bases/): base_model.files is left out, "
                         "so every file of the repo is fetched; a tiny build needs a profile.")
    out["trust_remote_code"] = False
    if revision is None:
        acc.notes.append("base_model.revision is null: the first full-scale download resolves and locks it "
                         "(or pass --base-revision).")
    return out


def _base_files(base_id: str) -> list[str]:
    profile = bases.get(base_id)
    shipped = bases.repo_files(profile)
    weights = ["*.safetensors"] if any(f.endswith(".safetensors") for f in shipped) else ["pytorch_model*.bin"]
    return weights + ["*.json"] + (["tokenizer.model"] if "tokenizer.model" in shipped else [])


def draft(text: str, recipe_id: str, base_revision: str | None = None) -> Draft:
    card = markdown.parse(text)
    acc = _Acc()
    if card.collapsed:
        acc.notes.append("The card's newlines were collapsed into spaces; its structure was restored before "
                         "reading, and prompt blocks were compared ignoring whitespace: check the template's newlines.")
    if card.meta_error:
        acc.notes.append(f"The card's front matter is not valid YAML ({card.meta_error}); it was not read.")
    recipe: dict[str, Any] = {"id": recipe_id}
    recipe["card"] = _card_block(card, recipe_id, acc)
    lic = str(recipe["card"].get("license_name") or recipe["card"].get("license") or "")
    recipe["base_model"] = _base_block(card, recipe["card"]["title"], lic, base_revision, acc)
    sources, mix = _sources(card, acc)
    recipe["sources"] = sources
    found, unread = facts.read(card)
    tb = train_mod.resolve(found, card.meta.get("library_name"))
    _unread_notes(unread, tb, acc)
    train, where = train_mod.nested(tb)
    acc.notes += tb.notes
    acc.todos += [(f"adapters.main.train.{k}", q) for k, q in tb.todos.items()]
    for path, w in where.items():
        acc.at(("adapters", "main", "train", *path), w)
    adapter = {"template": _template(card, recipe_id, sources, mix, acc), "data": {"seed": _seed(tb, acc), "mix": mix},
               "train": train}
    recipe["adapters"] = {"main": adapter}
    if re.search(r"\b(?:multiple|several|\d+|many)\s+(?:\w+\s+)?adapters\b|combin\w*[^.]{0,40}\badapters\b", card.text, re.I):
        acc.notes.append("The card describes several adapters combined into one model; the draft has one adapter "
                         "(main): split its data and training per adapter and set merge.method combine.")
    recipe["merge"] = _merge(train, acc)
    recipe["eval"] = _eval(recipe["card"].get("reported_results") or {}, acc)
    recipe["card"]["notes"] = acc.notes
    return _finish(recipe, acc)


def _finish(recipe: dict, acc: _Acc) -> Draft:
    header = [f"Recipe draft for {recipe['id']}, written by `reprotune import-card` from its model card.",
              "Values with '# from:' were read from the card; card.notes lists what was inferred and any",
              "contradiction; every 'TODO:' is a question to answer before `reprotune validate` accepts it."]
    text = emit.dump(recipe, acc.where, header)
    sources = {".".join(p): w for p, w in sorted(acc.where.items())}
    return Draft(recipe, acc.todos, acc.notes, sources, text)


def _sources(card: markdown.Card, acc: _Acc) -> tuple[dict, dict]:
    """The card's datasets as sources (registry facts for known ones, TODOs otherwise) and the mix."""
    found = data.mentions(card)
    repos = _resolve_repos(found, acc)
    table = data.shares(card)
    found_shares = {repo: data.share_for(repo, table) for repo in repos}
    stated = any(v is not None for v in found_shares.values())
    sources, mix = {}, {}
    for repo, where in repos.items():
        share = found_shares[repo]
        if stated and share is None and len(repos) > 1:
            acc.notes.append(f"{repo} is named in the card ({where}) but not in its stated mix: left out.")
            continue
        name = base = data.source_name(repo)
        n = 1
        while name in sources:    # org1/data and org2/data
            n += 1
            name = f"{base}_{n}"
        sources[name] = _source(repo, name, where, acc)
        mix[name] = _mix_entry(repo, name, share, len(repos), stated, acc)
    if not sources:
        sources["data"] = _unknown_source("data", None, acc)
        mix["data"] = {"fraction": 1.0}
    return sources, mix


def _resolve_repos(found: list[data.Mention], acc: _Acc) -> dict[str, str]:
    """Each dataset once (first mention's place); a link whose text names another repo than its
    target is a contradiction (the text wins); a front-matter id superseded by a longer one of
    the same name ("X" vs "X-Sample") is dropped."""
    out: dict[str, str] = {}
    for m in found:
        out.setdefault(m.repo, m.where)
    for m in found:
        if m.kind == "link_text":
            target = next((x for x in found if x.kind == "link" and x.where.endswith(f"'{m.repo}')")), None)
            if target and target.repo in out and target.repo != m.repo:
                acc.notes.append(f"Contradiction: a link reads {m.repo} but points to {target.repo} ({m.where}); "
                                 f"the draft uses {m.repo}, the name the card gives.")
                del out[target.repo]
    for repo in list(out):
        longer = [r for r in out if r != repo and r.lower().startswith(repo.lower() + "-")]
        if longer:
            acc.notes.append(f"{repo} ({out[repo]}) is taken to be {longer[0]}, which the card names too.")
            del out[repo]
    return out


def _source(repo: str, name: str, where: str, acc: _Acc) -> dict:
    entry = data.registry().get(repo)
    acc.at(("sources", name, "repo"), where)
    if entry is None:
        return _unknown_source(name, repo, acc)
    src = {"repo": repo, "revision": None, "files": list(entry["files"]), "format": entry["format"]}
    for key in ("options", "license"):
        if key in entry:
            src[key] = entry[key]
    src["filters"] = entry["filters"]
    if entry.get("files_note"):
        acc.notes.append(f"sources.{name}.files: {entry['files_note']}; check which part the card means.")
    return src


def _unknown_source(name: str, repo: str | None, acc: _Acc) -> dict:
    """A source the registry does not know (or, without ``repo``, a card naming no dataset): its
    repo, files and reader format are questions."""
    what = repo or "the dataset"
    return {"repo": repo or acc.todo(("sources", name, "repo"), "Which Hub dataset(s) was it trained on?"),
            "revision": None,
            "files": [acc.todo(("sources", name, "files"), f"Which files of {what} were used (glob patterns)?")],
            "format": acc.todo(("sources", name, "format"), f"Which reader format fits the rows of {what}?"),
            "filters": [{"name": "empty_turns"}, {"name": "exact_dedup"}]}


def _mix_entry(repo: str, name: str, share: data.Share | None, n: int, stated: bool, acc: _Acc) -> dict:
    path = ("adapters", "main", "data", "mix", name)
    if share is None and not stated:
        acc.notes.append(f"The card states no share for {repo}: all of it is used." if n == 1 else
                         f"The card states no mix: all of {repo} is used (fraction 1.0).")
        acc.at(path, "inferred (see card.notes)")
        return {"fraction": 1.0}
    if share is None or share.fraction is None:
        return {"fraction": acc.todo((*path, "fraction"), f"What share of {repo} is in the training mix?")}
    acc.at(path, share.where)
    if share.approximate:
        acc.notes.append(f"The card gives an approximate share for {repo} ('{share.wording}'): "
                         f"{share.fraction:g} is used.")
    entry: dict[str, Any] = {"fraction": share.fraction}
    if share.max_val is not None:
        entry["max_val"] = int(share.max_val)
    return entry


def _unread_notes(unread: list, tb, acc: _Acc) -> None:
    for u in unread:
        key = u.setting
        if key == "deepspeed" and "deepspeed" not in tb.values:
            tb.todo("deepspeed", f"The card names a DeepSpeed config ('{u.raw}', {u.where}) but not its ZeRO "
                                 "stage: zero2, zero3 or null?")
        elif key not in tb.values:
            acc.notes.append(f"The card gives '{u.raw}' ({u.where}), which the importer could not read as {key}.")


def _template(card: markdown.Card, recipe_id: str, sources: dict, mix: dict, acc: _Acc):
    path = ("adapters", "main", "template")
    found = prompt.find(card)
    if found:
        acc.at(path, f"{found.where}: renders like the built-in '{found.spec}'")
        if found.loose:
            acc.notes.append(f"The prompt block ({found.where}) lost its whitespace with the card's newlines: it "
                             f"matches the built-in template '{found.spec}' only ignoring whitespace.")
        return found.spec
    named = prompt.from_config(card)
    if named:
        acc.at(path, named[1])
        return named[0]
    made = synthesize(prompt.candidates(card), recipe_id)
    if made:
        spec, where, note = made
        acc.at(path, where)
        acc.notes.append(note)
        return spec
    hint = _template_of_data(sources, mix)
    if hint:
        name, repo, fraction = hint
        acc.at(path, f"inferred from {repo} (see card.notes)")
        acc.notes.append(f"The card shows no prompt format; '{name}' is inferred from {repo} (fraction {fraction:g} "
                         "of the mix), whose own releases train with it.")
        return name
    return acc.todo(path, "Which prompt format was used (a built-in template name, or {name, chat_template})?")


def _template_of_data(sources: dict, mix: dict) -> tuple[str, str, float] | None:
    """The registry's prompt format of the dataset with the largest stated share of the mix."""
    shares = [(entry.get("fraction"), name) for name, entry in mix.items() if isinstance(entry.get("fraction"), float)]
    for fraction, name in sorted(shares, key=lambda x: -x[0]):
        template = data.registry().get(sources[name]["repo"], {}).get("template")
        if template:
            return template, sources[name]["repo"], fraction
    return None


def _seed(tb, acc: _Acc) -> int:
    if isinstance(tb.values.get("seed"), int):
        acc.at(("adapters", "main", "data", "seed"), tb.where.get("seed", ""))
        return tb.values["seed"]
    acc.notes.append("The card states no seed: data.seed is reprotune's default 42.")
    return 42


def _eval(results: dict, acc: _Acc) -> dict:
    """The Open LLM Leaderboard suite whose tasks the card reports (v2 when it reports v2 tasks);
    open_llm_v1 when it reports none."""
    v2 = any(task.startswith("leaderboard_") for task in results)
    suite = "open_llm_v2" if v2 else "open_llm_v1"
    acc.at(("eval", "suite"), "the tasks of card.reported_results" if results else "")
    acc.notes.append(f"eval.suite {suite}: " + ("the suite of the results the card reports." if results else
                                               "reprotune's default suite; the card reports no results."))
    return {"suite": suite, "batch_size": 1}


def _merge(train: dict, acc: _Acc) -> dict:
    method = train["method"]
    acc.at(("merge", "method"), f"follows from train.method {method}")
    if method == "full":
        return {"method": "none"}
    if method == "qlora":
        acc.notes.append("merge.method qlora_dequant (dequantize the NF4 base, then merge) follows from the QLoRA "
                         "training; the card's own merge script may differ.")
        q = train.get("quantization") or {}
        return {"method": "qlora_dequant", "quantization": {"quant_type": q.get("quant_type", "nf4"),
                                                            "double_quant": q.get("double_quant", True), "blocksize": 64}}
    if isinstance(method, str) and method.startswith("TODO"):
        return {"method": acc.todo(("merge", "method"), "plain, qlora_dequant or none (a full fine-tune)?")}
    return {"method": "plain"}
