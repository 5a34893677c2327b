"""Load, validate and overlay recipes.

A recipe is pure configuration read from one published model card. It is
validated against ``schemas/recipe.schema.yaml`` plus a few cross-field rules
that a JSON schema cannot express. Every problem is reported as ONE line that
names the file, the key and what was expected (``RecipeError``); callers print
it and exit non-zero, never a traceback.

A recipe's optional ``defaults: {train: {...}}`` is deep-merged under every adapter's ``train``
block first (the adapter's own keys win), so shared settings are written once.
``resolve_train`` is the one place that turns a train block into the settings a run uses
(the schema's ``default:`` values fill what the block leaves out); recipe loading and the
train stage both call it.

An overlay (``overlays/tiny.yaml``) is applied on top of the validated recipe to
change the scale of a build: it swaps the base model, points sources at the
fixture mirror, merges its ``train`` block into every adapter and its ``eval``
block into ``eval``. The result is validated again, so an overlay cannot smuggle
in a setting the recipe schema would reject.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from reprotune.io import load_yaml

from . import eval_tasks

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


class RecipeError(ValueError):
    """A recipe, overlay or config is invalid; str(err) is one printable line."""


@lru_cache(maxsize=None)
def _schema(name: str) -> dict:
    with open(SCHEMA_DIR / f"{name}.schema.yaml", encoding="utf-8") as f:
        schema = load_yaml(f)
    if name == "recipe":
        _add_source_formats(schema["properties"]["sources"]["additionalProperties"])
    return schema


def _add_source_formats(source_schema: dict) -> None:
    """``sources.<name>.format`` and ``.options`` come from the sources registry (the one
    place formats are defined: modules and presets): the format enum, and per format an
    if/then that validates ``options`` against that reader's options schema."""
    from reprotune import sources

    source_schema["properties"]["format"] = {"enum": sources.names()}
    source_schema["allOf"] = [
        {"if": {"properties": {"format": {"const": fmt}}, "required": ["format"]},
         "then": {"properties": {"options": sources.options_schema(fmt)}}}
        for fmt in sources.names()]


def _key_path(path) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


def _describe(err: jsonschema.ValidationError, at: tuple = ()) -> str:
    """Turn a jsonschema error into 'key: problem (expected ...)'; ``at``: where the instance sits."""
    path = [*at, *err.absolute_path]
    key = _key_path(path)
    v = err.validator
    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        pre = f"{key}." if path else ""
        names = ", ".join(f"'{pre}{e}'" for e in extra) or key
        hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        return f"unknown key {names}{hint}"
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        pre = f"{key}." if path else ""
        return f"missing required key '{pre}{missing}'"
    if v == "enum":
        opts = ", ".join(repr(o) for o in err.validator_value)
        return f"key '{key}': {err.instance!r} is not allowed (expected one of: {opts})"
    if v == "const":
        return f"key '{key}': {err.instance!r} is not allowed (expected {err.validator_value!r})"
    if v == "type":
        exp = err.validator_value
        exp = " or ".join(exp) if isinstance(exp, list) else exp
        return f"key '{key}': {err.instance!r} has the wrong type (expected {exp})"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sym = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
        return f"key '{key}': {err.instance!r} is out of range (expected {sym} {err.validator_value})"
    if v == "pattern":
        return f"key '{key}': {err.instance!r} does not match the pattern {err.validator_value}"
    if v == "propertyNames":
        return f"key '{key}': a name does not match {err.validator_value}"
    if v == "oneOf" and isinstance(err.instance, dict) and "fraction" in str(err.schema):
        if {"fraction", "count"} <= set(err.instance):
            return f"key '{key}': give either 'fraction' or 'count', not both"
        if not ({"fraction", "count"} & set(err.instance)):
            return f"key '{key}': needs 'fraction' or 'count'"
    if v == "minProperties":
        return f"key '{key}': must not be empty"
    if v == "minItems":
        return f"key '{key}': needs at least {err.validator_value} item(s)"
    return f"key '{key}': {err.message}"


@lru_cache(maxsize=None)
def _validator(schema_name: str, definition: str | None) -> jsonschema.Draft202012Validator:
    schema = _schema(schema_name)
    if definition is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema)


def validate(data: Any, schema_name: str, source: str, definition: str | None = None, at: tuple = ()) -> None:
    """Validate ``data`` against a repo schema (or one of its ``$defs``, for data that sits at key
    path ``at``); raise RecipeError with one line."""
    errors = list(_validator(schema_name, definition).iter_errors(data))
    if not errors:
        return
    # report the most specific error first (deepest path), deterministically
    def rank(e):
        return (-len(e.absolute_path), _key_path(e.absolute_path), e.validator)
    best = jsonschema.exceptions.best_match(errors)
    # for oneOf/anyOf, descend into the most relevant context error
    while best.context:
        best = sorted(best.context, key=rank)[0]
    raise RecipeError(f"{source}: {_describe(best, at)}")


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return load_yaml(f)
    except FileNotFoundError:
        raise RecipeError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"{path}:{where} invalid YAML ({problem})") from None


def _fill_defaults(value: dict, schema: dict) -> dict:
    """``value`` plus the schema ``default`` of each property it leaves out; the objects it has
    are filled in turn (a block it leaves out gets nothing: lora, quantization)."""
    out = copy.deepcopy(value)
    for key, prop in schema.get("properties", {}).items():
        if key not in out and "default" in prop:
            out[key] = copy.deepcopy(prop["default"])
        elif isinstance(out.get(key), dict) and prop.get("type") == "object":
            out[key] = _fill_defaults(out[key], prop)
    return out


def _check_train(tr: dict, source: str, at: str) -> None:
    """Cross-field rules of one train block."""
    def fail(key: str, msg: str):
        raise RecipeError(f"{source}: key '{at}.{key}': {msg}")

    if tr["method"] in ("lora", "qlora") and "lora" not in tr:
        fail("lora", f"method {tr['method']} needs a 'lora' block (r, alpha)")
    if tr["method"] == "full" and "lora" in tr:
        fail("lora", "a full fine-tune takes no LoRA settings (method is 'full')")
    if tr["method"] != "qlora" and "quantization" in tr:
        fail("quantization", f"quantization is only for method 'qlora' (method is '{tr['method']}')")
    if tr["method"] == "qlora" and "quantization" not in tr:
        fail("quantization", "method qlora needs a 'quantization' block (quant_type, double_quant, compute_dtype)")


def resolve_train(train: Any, source: str = "train spec", at: str = "train") -> dict[str, Any]:
    """The settings a train block runs with -- the one resolver, for recipe loading and the train
    stage: the block is validated (schema ``$defs/train`` and the cross-field rules; RecipeError,
    one line naming the key ``at...``), then every setting it leaves out takes its schema
    ``default``; ``data_seed: null`` becomes the seed."""
    validate(train, "recipe", source, definition="train", at=tuple(at.split(".")))
    _check_train(train, source, at)
    s = _fill_defaults(train, _schema("recipe")["$defs"]["train_settings"])
    if s["data_seed"] is None:
        s["data_seed"] = s["seed"]
    return s


def check_semantics(recipe: dict, source: str) -> None:
    """Cross-field rules the JSON schema cannot express."""
    def fail(key: str, msg: str):
        raise RecipeError(f"{source}: key '{key}': {msg}")

    sources = recipe["sources"]
    adapters = recipe["adapters"]
    for name, ad in sorted(adapters.items()):
        resolve_train(ad["train"], source, f"adapters.{name}.train")
        for src in sorted(ad["data"]["mix"]):
            if src not in sources:
                fail(f"adapters.{name}.data.mix.{src}", f"unknown source (defined sources: {', '.join(sorted(sources))})")
    merge = recipe["merge"]
    method = merge["method"]
    methods = {ad["train"]["method"] for ad in adapters.values()}
    if method == "none":
        if methods != {"full"} or len(adapters) != 1:
            fail("merge.method", "'none' is only for a single full fine-tune adapter")
    elif "full" in methods:
        fail("merge.method", f"'{method}' merges adapters, but an adapter is a full fine-tune (use 'none')")
    if method == "combine":
        comb = merge.get("combine")
        if not comb:
            fail("merge.combine", "merge method 'combine' needs a 'combine' block")
        for a in comb["adapters"]:
            if a not in adapters:
                fail("merge.combine.adapters", f"unknown adapter '{a}' (defined: {', '.join(sorted(adapters))})")
        if len(comb["weights"]) != len(comb["adapters"]):
            fail("merge.combine.weights", f"{len(comb['weights'])} weights for {len(comb['adapters'])} adapters")
        if comb["combination_type"] in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"):
            ranks = {adapters[a]["train"]["lora"]["r"] for a in comb["adapters"]}
            if len(ranks) > 1:
                fail("merge.combine.combination_type",
                     f"'{comb['combination_type']}' needs adapters of equal rank (got r={sorted(ranks)}); use cat or svd")
        if comb["combination_type"].startswith(("ties", "dare", "magnitude")) and comb.get("density") is None:
            fail("merge.combine.density", f"'{comb['combination_type']}' needs a density in (0, 1]")
    elif len(adapters) > 1:
        fail("merge.method", f"'{method}' merges one adapter, but the recipe trains {len(adapters)} (use 'combine')")
    if method == "qlora_dequant" and methods != {"qlora"}:
        fail("merge.method", "'qlora_dequant' is for QLoRA adapters (train.method qlora)")
    if recipe["base_model"].get("trust_remote_code") and not recipe["base_model"].get("revision"):
        fail("base_model.trust_remote_code", "true only with a pinned base_model.revision")
    try:
        eval_tasks.check(recipe["eval"])
    except eval_tasks.EvalConfigError as e:
        fail(e.key, str(e))
    _check_base(recipe["base_model"], fail)


def _check_base(base: dict, fail) -> None:
    """With a profile of the base (src/reprotune/bases/), the recipe's file patterns must select
    what the real repo ships; a twin build needs the profile."""
    from fnmatch import fnmatchcase

    from reprotune import bases

    if not bases.has(base["id"]):
        if base.get("twin") is not None:
            try:
                bases.get(base["id"])
            except bases.BaseProfileError as e:
                fail("base_model.id", str(e))
        return
    shipped = bases.repo_files(bases.get(base["id"]))
    for pat in base.get("files") or []:
        if not any(fnmatchcase(f, pat) for f in shipped):
            fail("base_model.files", f"{pat!r} matches no file of {base['id']} (it ships {', '.join(shipped)})")
    weights = [f for f in shipped if bases.is_weight_file(f)]
    if base.get("files") and not any(fnmatchcase(f, p) for f in weights for p in base["files"]):
        fail("base_model.files", f"no pattern selects the weights of {base['id']}, which ships "
                                 f"{', '.join(weights)}")


def resolve_templates(recipe: dict, path: Path) -> None:
    """Each adapter's ``template`` checked and made self-contained, in place (``templates.resolve``:
    a built-in name, or the recipe's own Jinja template with a ``path`` read relative to the recipe)."""
    from reprotune import templates

    for name, ad in sorted(recipe["adapters"].items()):
        try:
            ad["template"] = templates.resolve(ad["template"], path.parent)
        except templates.TemplateSpecError as e:
            raise RecipeError(f"{path}: key 'adapters.{name}.template{e.key}': {e}") from None


def _deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overlay(recipe: dict, overlay: dict | None) -> dict:
    """Return the resolved recipe: recipe + overlay, plus ``scale`` and ``hub_mirror``."""
    r = copy.deepcopy(recipe)
    if not overlay:
        r["scale"] = "full"
        r["hub_mirror"] = None
        return r
    r["scale"] = overlay["scale"]
    r["hub_mirror"] = overlay.get("hub_mirror")
    if "base_model" in overlay:  # the real base stays the recipe's; the overlay adds how to build its twin
        r["base_model"] = _deep_merge(r["base_model"], overlay["base_model"])
    for ad in r["adapters"].values():
        ad["train"] = _deep_merge(ad["train"], overlay.get("train", {}))
        ad["data"] = _deep_merge(ad["data"], overlay.get("data", {}))
    r["eval"] = _deep_merge(r["eval"], overlay.get("eval", {}))
    r["merge"] = _deep_merge(r["merge"], overlay.get("merge", {}))
    return r


def load_overlay(path: str | Path | None) -> dict | None:
    if not path:
        return None
    data = read_yaml(path)
    validate(data, "overlay", str(path))
    return data


def apply_defaults(recipe: dict) -> dict:
    """``defaults.train`` deep-merged under every adapter's ``train`` (the adapter's keys win).
    The ``defaults`` block stays for validation; :func:`load_recipe` drops it afterwards."""
    shared = recipe.get("defaults", {}).get("train") if isinstance(recipe.get("defaults"), dict) else None
    if not isinstance(shared, dict) or not isinstance(recipe.get("adapters"), dict):
        return recipe
    r = copy.deepcopy(recipe)
    for ad in r["adapters"].values():
        if isinstance(ad, dict) and isinstance(ad.get("train", {}), dict):
            ad["train"] = _deep_merge(shared, ad.get("train", {}))
    return r


def todos(data: Any, at: tuple = ()) -> list[tuple[str, str]]:
    """Every ``"TODO: <question>"`` string left in a recipe (an ``import-card`` draft), by key path."""
    if isinstance(data, dict):
        return [t for k, v in data.items() for t in todos(v, (*at, str(k)))]
    if isinstance(data, list):   # a TODO inside a list is the list's: "files: ['TODO: ...']"
        return [t for v in data for t in todos(v, at)]
    if isinstance(data, str) and data.startswith("TODO:"):
        return [(".".join(at), data[len("TODO:"):].strip())]
    return []


def check_todos(data: Any, source: str) -> None:
    left = todos(data)
    if left:
        listed = "; ".join(f"key '{k}' ({q})" for k, q in left)
        raise RecipeError(f"{source}: {len(left)} TODO{'s' if len(left) > 1 else ''} left: {listed}")


def load_recipe(path: str | Path, overlay: str | Path | dict | None = None) -> dict:
    """Load, merge ``defaults``, validate, overlay and re-validate one recipe. Raises RecipeError."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping at the top level")
    check_todos(data, str(path))
    data = apply_defaults(data)
    validate(data, "recipe", str(path))
    resolve_templates(data, path)
    check_semantics(data, str(path))
    data.pop("defaults", None)
    if data["id"] != path.stem:
        raise RecipeError(f"{path}: key 'id': {data['id']!r} must equal the file name '{path.stem}'")
    ov = load_overlay(overlay) if not isinstance(overlay, dict) else overlay
    resolved = apply_overlay(data, ov)
    check = {k: v for k, v in resolved.items() if k not in ("scale", "hub_mirror")}
    src = f"{path} + {overlay}" if overlay and not isinstance(overlay, dict) else str(path)
    validate(check, "recipe", src)
    check_semantics(check, src)
    return resolved


def load_config(config: dict, source: str = "config") -> dict:
    """Validate the workflow config (already parsed) and fill defaults."""
    validate(config, "config", source)
    cfg = dict(config)
    # `--config overlay=null` arrives as the string "null" from the command line
    for key in ("overlay", "accelerate_config"):
        if isinstance(cfg.get(key), str) and cfg[key].strip().lower() in ("null", "none", "~", ""):
            cfg[key] = None
    cfg.setdefault("recipes_dir", "recipes")
    cfg.setdefault("overlay", None)
    cfg.setdefault("accelerate_config", None)
    cfg.setdefault("images_lock", "docker/images.lock")
    return cfg
