"""Base-model profiles: one YAML file per real base model in this folder, scanned at load.

A profile (``<org>--<name>.yaml``, validated against ``schemas/base_profile.schema.yaml``)
holds the facts of the real Hub repository that a build depends on -- its ``config.json``
(architecture, attention shape, rope_theta, norms, token ids, dtype), its tokenizer
(family, files shipped, ``tokenizer_config.json`` keys, SentencePiece normalizer facts),
its weight layout (formats and shard counts) -- and the sizes of its *twin*: the
deterministic, scaled-down copy that the tiny build trains on (``reprotune.twin``).

Adding a base is adding one file. Rules checked on load, each a one-line
``BaseProfileError``: the file name is the id's slug; the twin keeps the real base's
query-heads : KV-heads ratio; heads divide the hidden size and KV heads divide the heads;
twin hidden and intermediate sizes are multiples of 64 and the k/v projections' output rows a
multiple of 32 (bitsandbytes' CPU 4-bit kernels assume whole quantization blocks per row and
pack output rows in 32s, so QLoRA runs on the twin); the tokenizer files fit the family.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

PROFILE_DIR = Path(__file__).resolve().parent
BLOCK = 64          # bitsandbytes' 4-bit quantization block: whole blocks per input row
CPU_4BIT_ROWS = 32  # bitsandbytes' CPU 4-bit matmul packs output rows in blocks of 32


class BaseProfileError(ValueError):
    """A profile is invalid or missing; ``str(e)`` is one printable line."""


def slug(base_id: str) -> str:
    return base_id.replace("/", "--")


def _check_sizes(where: str, p: dict) -> None:
    full, twin = p["full"], p["twin"]
    for name, s in (("full", full), ("twin", twin)):
        if s["hidden_size"] % s["num_attention_heads"]:
            raise BaseProfileError(f"{where}: key '{name}.num_attention_heads': {s['num_attention_heads']} "
                                   f"does not divide hidden_size {s['hidden_size']}")
        if s["num_attention_heads"] % s["num_key_value_heads"]:
            raise BaseProfileError(f"{where}: key '{name}.num_key_value_heads': {s['num_key_value_heads']} "
                                   f"does not divide num_attention_heads {s['num_attention_heads']}")
    ratio = full["num_attention_heads"] // full["num_key_value_heads"]
    twin_ratio = twin["num_attention_heads"] // twin["num_key_value_heads"]
    if ratio != twin_ratio:
        raise BaseProfileError(f"{where}: key 'twin.num_key_value_heads': the twin has {twin_ratio} query heads "
                               f"per KV head, the real base {ratio}")
    for key in ("hidden_size", "intermediate_size"):
        if twin[key] % BLOCK:
            raise BaseProfileError(f"{where}: key 'twin.{key}': {twin[key]} is not a multiple of {BLOCK}")
    kv_width = twin["num_key_value_heads"] * twin["hidden_size"] // twin["num_attention_heads"]
    if kv_width % CPU_4BIT_ROWS:
        raise BaseProfileError(f"{where}: key 'twin.num_key_value_heads': the k/v projections have {kv_width} "
                               f"output rows, not a multiple of {CPU_4BIT_ROWS}")


def _check_tokenizer(where: str, tok: dict) -> None:
    files = set(tok["files"])
    need = {"sentencepiece_bpe": {"tokenizer.model", "tokenizer_config.json"},
            "byte_level_bpe": {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"}}[tok["family"]]
    if not need <= files:
        raise BaseProfileError(f"{where}: key 'tokenizer.files': a {tok['family']} tokenizer ships "
                               f"{', '.join(sorted(need))}")
    if tok["family"] == "sentencepiece_bpe" and "sentencepiece" not in tok:
        raise BaseProfileError(f"{where}: key 'tokenizer.sentencepiece': needed for a sentencepiece_bpe tokenizer")


def _load(path: Path) -> dict:
    from reprotune.recipe import RecipeError, read_yaml, validate

    where = str(path)
    try:
        data = read_yaml(path)
        validate(data, "base_profile", where)
    except RecipeError as e:
        raise BaseProfileError(str(e)) from None
    if path.stem != slug(data["id"]):
        raise BaseProfileError(f"{where}: key 'id': {data['id']!r} must be the file name with '/' as '--' "
                               f"(expected {slug(data['id'])}.yaml)")
    _check_sizes(where, data)
    _check_tokenizer(where, data["tokenizer"])
    return data


@lru_cache(maxsize=None)
def _profiles() -> dict[str, tuple[Path, dict]]:
    out = {}
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        data = _load(path)
        out[data["id"]] = (path, data)
    return out


def ids() -> list[str]:
    return sorted(_profiles())


def has(base_id: str) -> bool:
    return base_id in _profiles()


def get(base_id: str) -> dict:
    """The profile of ``base_id`` (a fresh copy), or a one-line error naming what to add."""
    try:
        _, data = _profiles()[base_id]
    except KeyError:
        raise BaseProfileError(
            f"no twin profile for base model {base_id!r} (known: {', '.join(ids())}); the tiny build needs "
            f"src/reprotune/bases/{slug(base_id)}.yaml (see docs/architecture.md, 'Twin bases')") from None
    return copy.deepcopy(data)


def path(base_id: str) -> Path:
    get(base_id)
    return _profiles()[base_id][0]


def weight_files(profile: dict) -> list[str]:
    """The weight files (and shard indexes) the real repo ships, by name."""
    out = []
    for fmt, n in sorted(profile["weights"].items()):
        prefix, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
        if n == 1:
            out.append(f"{prefix}.{ext}")
        else:
            out += [f"{prefix}-{i:05d}-of-{n:05d}.{ext}" for i in range(1, n + 1)] + [f"{prefix}.{ext}.index.json"]
    return out


def is_weight_file(name: str) -> bool:
    return name.endswith((".safetensors", ".bin"))


def repo_files(profile: dict) -> list[str]:
    """Every file of the real repo that the profile knows about (the twin has exactly these)."""
    files = set(weight_files(profile)) | set(profile["tokenizer"]["files"]) | set(profile.get("other_files", []))
    return sorted(files | {"config.json", "generation_config.json"})
