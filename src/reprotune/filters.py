"""Named, parameterised filters over normalized records.

A recipe source lists filters as ``[{"name": "refusals"}, {"name": "length", "max_chars": 8000}]``.
``apply_filters`` runs them in order, record by record (streaming: each record goes
through the chain until a filter drops it), and counts what each one saw and dropped.

Chat records (with ``messages``) and text records (``{"id", "source", "text"}``) are
both accepted. Chat-only filters (``alternating``, ``refusals``, ``identity``) pass
text records through untouched; ``empty_turns``, ``length``, ``exact_dedup`` and
``near_dedup`` use the text.

Register a new filter with ``@register("name")`` on a factory
``factory(**params) -> keep(record) -> bool``.

Token counts (``length`` with ``min_tokens``/``max_tokens``): with
``tokenizer: base`` the recipe's base-model tokenizer is used (the clean rule
then takes the base model directory as an input and passes it in the context as
``tokenizer_dir``); ``tokenizer: <dir>`` names a tokenizer directory; without
``tokenizer`` a token is a whitespace-separated word. Tokens are counted per
part (system, input, each turn; or the text) without special tokens and summed.

Language: only oasst1 carries language metadata; its reader filters on it
(option ``lang``, counted as ``lang`` reader rejects). The generic ``lang``
filter keeps records whose ``lang`` field is allowed, for readers that keep one.
"""
from __future__ import annotations

import bisect
import hashlib
import mmap
import re
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

Keep = Callable[[dict], bool]


class FilterError(ValueError):
    """Bad filter configuration (unknown name or parameter)."""


_REGISTRY: dict[str, Callable[..., Keep]] = {}


def register(name: str):
    def deco(factory):
        if name in _REGISTRY:
            raise FilterError(f"filter {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory
    return deco


def known() -> list[str]:
    return sorted(_REGISTRY)


# filter parameters the build sets from ``context`` (never a recipe): ``use_fast`` follows the
# recipe's ``tokenizer.use_fast`` for ``tokenizer: base``
CONTEXT_PARAMS = frozenset({"use_fast"})


def make(spec: dict, context: dict | None = None) -> Keep:
    """Build one filter from ``{"name": ..., **params}``.

    ``context`` carries build facts a recipe cannot spell out, e.g. ``tokenizer_dir``
    (the base model directory) for ``tokenizer: base``.
    """
    if not isinstance(spec, dict) or "name" not in spec:
        raise FilterError(f"filter spec must be a mapping with a 'name' key, got {spec!r}")
    name = spec["name"]
    factory = _REGISTRY.get(name)
    if factory is None:
        raise FilterError(f"unknown filter {name!r}; known filters: {', '.join(known())}")
    params = {k: v for k, v in spec.items() if k != "name"}
    if params.get("tokenizer") == "base":
        tdir = (context or {}).get("tokenizer_dir")
        if not tdir:
            raise FilterError(f"filter {name!r}: tokenizer 'base' needs the base model directory "
                              "(clean spec key 'tokenizer_dir')")
        params["tokenizer"] = str(tdir)
        params["use_fast"] = bool((context or {}).get("tokenizer_use_fast", True))
    try:
        return factory(**params)
    except TypeError as exc:
        raise FilterError(f"bad parameters for filter {name!r}: {exc}") from None


class FilterChain:
    """Filters in order, applied one record at a time (streaming), with counts.

    ``chain(rec)`` returns None when every filter keeps ``rec``, else the reject
    ``{"id", "source", "reason": "filter:<name>", "row": rec}``.
    """

    def __init__(self, filters: list[dict] | None, context: dict | None = None):
        filters = list(filters or [])
        self.chain = [(f["name"] if isinstance(f, dict) else None, make(f, context)) for f in filters]
        self.n_in = [0] * len(self.chain)
        self.n_drop = [0] * len(self.chain)

    def __call__(self, rec: dict) -> dict | None:
        for i, (name, keep) in enumerate(self.chain):
            self.n_in[i] += 1
            if not keep(rec):
                self.n_drop[i] += 1
                return {"id": rec.get("id"), "source": rec.get("source"), "reason": f"filter:{name}", "row": rec}
        return None

    def stats(self) -> list[dict]:
        """``[{"name", "in", "out", "dropped"}]`` one per filter, in order."""
        return [{"name": name, "in": self.n_in[i], "out": self.n_in[i] - self.n_drop[i], "dropped": self.n_drop[i]}
                for i, (name, _) in enumerate(self.chain)]


def apply_filters(records: Iterable[dict], filters: list[dict],
                  context: dict | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """Apply ``filters`` in order. Returns ``(kept, rejects, stats)`` (in memory; see FilterChain
    for the streaming form ``clean`` uses).

    stats: ``[{"name", "in", "out", "dropped"}]`` one per filter, in order.
    rejects: ``{"id", "source", "reason": "filter:<name>", "row": record}``.
    """
    chain = FilterChain(filters, context)
    kept: list[dict] = []
    rejects: list[dict] = []
    for rec in records:
        rej = chain(rec)
        if rej is None:
            kept.append(rec)
        else:
            rejects.append(rej)
    return kept, rejects, chain.stats()


def token_counter(tokenizer_dir: str | Path, use_fast: bool = True) -> Callable[[list[str]], list[int]]:
    """``count(texts) -> [n_tokens]`` with a tokenizer directory's tokenizer (no special tokens).

    Loaded as training loads it (``reprotune.base_tokenizer``: fast, or the slow SentencePiece
    one with ``use_fast=False``); a fast tokenizer counts through its Rust backend in batches.
    """
    from reprotune.base_tokenizer import load

    tok = load(tokenizer_dir, use_fast=use_fast)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        def count(texts: list[str]) -> list[int]:
            # ids only: the same tokens as encode_batch, without computing their offsets
            return [len(e.ids) for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]

        return count

    def count_slow(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]

    return count_slow


# --------------------------------------------------------------------------- helpers


def is_chat(rec: dict) -> bool:
    return "messages" in rec


def _contents(rec: dict) -> list[str]:  # also used by mix (token-length stats)
    """All text of a record: system, input and message contents (or the text)."""
    if not is_chat(rec):
        return [str(rec.get("text") or "")]
    parts = [str(rec.get("system") or "")]
    if rec.get("input"):
        parts.append(str(rec["input"]))
    parts += [str(m.get("content") or "") for m in rec.get("messages") or []]
    return parts


def normalize_text(s: str) -> str:
    """NFKC, lower case, whitespace runs collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", s).lower().split())


def dedup_key_text(rec: dict) -> str:
    """The normalized text two records are compared on (roles included for chats)."""
    if not is_chat(rec):
        return "T\x00" + normalize_text(str(rec.get("text") or ""))
    parts = ["S\x01" + normalize_text(str(rec.get("system") or ""))]
    if rec.get("input"):
        parts.append("I\x01" + normalize_text(str(rec["input"])))
    for m in rec.get("messages") or []:
        parts.append(f"{m.get('role')}\x01" + normalize_text(str(m.get("content") or "")))
    return "C\x00" + "\x00".join(parts)


def _assistant_texts(rec: dict) -> list[str]:
    return [str(m.get("content") or "") for m in rec.get("messages") or [] if m.get("role") == "assistant"]


def load_phrases(path: str | Path | None, default: str) -> list[str]:
    """Phrases from a file (one a line, ``#`` comments); ``default`` is a packaged file name."""
    if path is None:
        text = resources.files("reprotune").joinpath("data", default).read_text(encoding="utf-8")
    else:
        p = Path(path)
        if not p.is_file():
            raise FilterError(f"phrases file not found: {path}")
        text = p.read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'"})


def _fold(s: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", s).translate(_APOSTROPHES).lower().split())


# --------------------------------------------------------------------------- filters


@register("empty_turns")
def _empty_turns(include_system: bool = False) -> Keep:
    """Drop chats with no messages or any whitespace-only message (and text records with empty text)."""

    def keep(rec: dict) -> bool:
        if not is_chat(rec):
            return bool(str(rec.get("text") or "").strip())
        msgs = rec.get("messages") or []
        if not msgs:
            return False
        if include_system and not str(rec.get("system") or "").strip():
            return False
        return all(isinstance(m.get("content"), str) and m["content"].strip() for m in msgs)

    return keep


@register("alternating")
def _alternating(first: str = "user", last: str | None = "assistant") -> Keep:
    """Roles must alternate user/assistant, start with ``first`` and end with ``last``."""
    other = {"user": "assistant", "assistant": "user"}
    if first not in other or (last is not None and last not in other):
        raise FilterError("alternating: first/last must be 'user' or 'assistant'")

    def keep(rec: dict) -> bool:
        if not is_chat(rec):
            return True
        roles = [m.get("role") for m in rec.get("messages") or []]
        if not roles:
            return False
        expected = first
        for r in roles:
            if r != expected:
                return False
            expected = other[expected]
        return last is None or roles[-1] == last

    return keep


@register("refusals")
def _refusals(phrases_file: str | None = None, phrases: list[str] | None = None) -> Keep:
    """Drop chats whose assistant turns contain a refusal phrase (case-insensitive substring)."""
    plist = load_phrases(phrases_file, "refusal_phrases.txt") + list(phrases or [])
    folded = sorted({_fold(p) for p in plist if _fold(p)})
    if not folded:
        return lambda rec: True
    pattern = re.compile("|".join(re.escape(p) for p in folded))

    def keep(rec: dict) -> bool:
        if not is_chat(rec):
            return True
        return not any(pattern.search(_fold(t)) for t in _assistant_texts(rec))

    return keep


@register("identity")
def _identity(phrases_file: str | None = None, phrases: list[str] | None = None,
              roles: list[str] | None = None) -> Keep:
    """Drop chats where an assistant turn names OpenAI/ChatGPT/GPT-4... (whole word, case-insensitive)."""
    plist = load_phrases(phrases_file, "identity_phrases.txt") + list(phrases or [])
    folded = sorted({_fold(p) for p in plist if _fold(p)}, key=lambda p: (-len(p), p))
    check_roles = set(roles or ["assistant"])
    if not folded:
        return lambda rec: True
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in folded) + r")(?!\w)")

    def keep(rec: dict) -> bool:
        if not is_chat(rec):
            return True
        texts = [str(m.get("content") or "") for m in rec.get("messages") or [] if m.get("role") in check_roles]
        if "system" in check_roles:
            texts.append(str(rec.get("system") or ""))
        return not any(pattern.search(_fold(t)) for t in texts)

    return keep


@register("length")
def _length(min_chars: int | None = None, max_chars: int | None = None,
            min_tokens: int | None = None, max_tokens: int | None = None,
            tokenizer: str | None = None, use_fast: bool = True) -> Keep:
    """Bounds (inclusive) on total characters / tokens of system + input + messages (or text).

    Tokens: the given tokenizer directory's tokens (``tokenizer: base`` = the base
    model's, resolved by :func:`make`, loaded fast or slow as the recipe's ``tokenizer.use_fast``
    says), else whitespace-separated words.
    """
    count = token_counter(tokenizer, use_fast) if tokenizer is not None else None

    def keep(rec: dict) -> bool:
        parts = _contents(rec)
        if min_chars is not None or max_chars is not None:
            n = sum(len(p) for p in parts)
            if min_chars is not None and n < min_chars:
                return False
            if max_chars is not None and n > max_chars:
                return False
        if min_tokens is not None or max_tokens is not None:
            n = sum(count(parts)) if count is not None else sum(len(p.split()) for p in parts)
            if min_tokens is not None and n < min_tokens:
                return False
            if max_tokens is not None and n > max_tokens:
                return False
        return True

    return keep


_M64 = (1 << 64) - 1


def digest64(text: str) -> int:
    """A 64-bit blake2b digest of ``text`` as an int: the key :class:`HashSet64` keeps for
    a string (exact dedup, source row ids). Lone surrogates are hashed as their code
    points (``surrogatepass``) instead of raising."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class HashSet64:
    """An exact set of 64-bit ints (the exact-dedup digests) in about 8 bytes per entry.

    * ``sorted``: every entry but the latest ones, ascending, as uint64 in an anonymous
      ``mmap``. It grows in place (``mremap``: no copy, no freed block left behind on
      the heap) and the latest entries are merged into it in place, back to front, a
      chunk at a time, so a merge never holds a second copy of the array.
    * an index of where each top-16-bit bucket starts in ``sorted``, so a lookup
      bisects one bucket (about n / 65536 entries);
    * ``recent``: a Python set of up to ``flush`` latest entries (bounded, ~5 MB).

    A Python set of the digests would cost ~70-100 bytes per entry; a hash table
    12-24 plus a copy while it grows.
    """

    _BUCKET_SHIFT = 48  # 2**16 buckets by the top 16 bits
    _CHUNK = 1 << 16

    def __init__(self, flush: int = 1 << 16):
        if flush < 1:
            raise ValueError("HashSet64: flush must be >= 1")
        self.flush = flush
        self.recent: set[int] = set()
        self._n = 0  # entries in the sorted part
        self._mm: mmap.mmap | None = None
        self._sorted: memoryview | None = None  # 'Q' view of the first _n slots of _mm
        self._index: list[int] = []  # bucket b -> first position of its entries in sorted

    def _in_sorted(self, h: int) -> bool:
        """Whether ``h`` (0 <= h < 2**64) is in the sorted part: a bisection of its bucket."""
        if not self._n:
            return False
        b = h >> self._BUCKET_SHIFT
        lo, hi = self._index[b], self._index[b + 1]
        i = bisect.bisect_left(self._sorted, h, lo, hi)
        return i < hi and self._sorted[i] == h

    def __contains__(self, h: int) -> bool:
        return h in self.recent or (0 <= h <= _M64 and self._in_sorted(h))

    def add(self, h: int) -> bool:
        """Insert ``h`` (0 <= h < 2**64); False when it was already there."""
        if h in self.recent:
            return False
        if not 0 <= h <= _M64:
            raise ValueError(f"HashSet64: {h} is not a 64-bit unsigned int")
        if self._in_sorted(h):
            return False
        self.recent.add(h)
        if len(self.recent) >= self.flush:
            self._merge()
        return True

    def __len__(self) -> int:
        return self._n + len(self.recent)

    def _merge(self) -> None:
        """Merge ``recent`` (none of which is in ``sorted``) into ``sorted``, in place."""
        import numpy as np

        new = np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))
        new.sort()
        n, m = self._n, int(new.size)
        if self._sorted is not None:
            self._sorted.release()  # no view may be alive while the map is resized
            self._sorted = None
        if self._mm is None:
            self._mm = mmap.mmap(-1, 8 * (n + m), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        elif len(self._mm) < 8 * (n + m):
            self._mm.resize(8 * (n + m + (n + m) // 8))  # mremap; the slack saves a remap per merge
        a = np.frombuffer(self._mm, dtype=np.uint64)
        ins = np.searchsorted(a[:n], new)  # new[j] goes before old[ins[j]]
        # old[k] moves right by the number of new entries below it (#j with ins[j] <= k);
        # back to front, each chunk copied out before anything lands on its slots
        for c1 in range(n, 0, -self._CHUNK):
            c0 = max(0, c1 - self._CHUNK)
            lo, hi = np.searchsorted(ins, [c0, c1])
            if hi == 0:
                break  # no new entry below this chunk: it and everything before it stay
            shift = np.bincount(ins[lo:hi] - c0, minlength=c1 - c0)[:c1 - c0].cumsum() + lo
            a[np.arange(c0, c1) + shift] = a[c0:c1].copy()
        a[ins + np.arange(m)] = new
        self._n = n + m
        starts = np.arange(1 << (64 - self._BUCKET_SHIFT), dtype=np.uint64) << np.uint64(self._BUCKET_SHIFT)
        self._index = [*np.searchsorted(a[:self._n], starts).tolist(), self._n]
        del a
        self._sorted = memoryview(self._mm).cast("Q")[:self._n]
        self.recent = set()


@register("exact_dedup")
def _exact_dedup() -> Keep:
    """Keep the first occurrence of each normalized (NFKC, lower-cased, whitespace-collapsed) text.

    Texts are compared by a 64-bit blake2b hash of the normalized text, kept in a
    :class:`HashSet64` (about 8 bytes of state per row); two different texts collide
    with probability about n^2 / 2^65 (1e-7 at two million rows).
    """
    seen = HashSet64()

    def keep(rec: dict) -> bool:
        return seen.add(digest64(dedup_key_text(rec)))

    return keep


def _shingles(text: str, size: int) -> set[bytes]:
    words = text.split()
    if len(words) <= size:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i:i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


@register("near_dedup")
def _near_dedup(threshold: float = 0.9, num_perm: int = 128, shingle_size: int = 5, seed: int = 1) -> Keep:
    """MinHash-LSH near-duplicate removal over word shingles; keeps the first occurrence.

    A record is dropped when an earlier kept record is an LSH candidate *and* its
    estimated Jaccard similarity is >= threshold (so LSH false positives are not dropped).
    Deterministic: datasketch hashes with sha1, the permutation seed is fixed.
    """
    from datasketch import MinHash, MinHashLSH

    if not 0.0 < float(threshold) <= 1.0:
        raise FilterError(f"near_dedup: threshold must be in (0, 1], got {threshold}")
    if int(shingle_size) < 1:
        raise FilterError("near_dedup: shingle_size must be >= 1")
    try:
        lsh = MinHashLSH(threshold=float(threshold), num_perm=int(num_perm))
    except ValueError as exc:
        raise FilterError(f"near_dedup: threshold={threshold} num_perm={num_perm}: {exc} "
                          "(raise num_perm for high thresholds)") from None
    kept_hashes: dict[str, MinHash] = {}

    def keep(rec: dict) -> bool:
        if is_chat(rec):
            text = " ".join(normalize_text(p) for p in _contents(rec))
        else:
            text = normalize_text(str(rec.get("text") or ""))
        m = MinHash(num_perm=int(num_perm), seed=int(seed))
        m.update_batch(sorted(_shingles(text, int(shingle_size))))
        for key in sorted(lsh.query(m)):
            if kept_hashes[key].jaccard(m) >= float(threshold):
                return False
        key = str(len(kept_hashes))
        lsh.insert(key, m)
        kept_hashes[key] = m
        return True

    return keep


@register("lang")
def _lang(allow: list[str] | str, missing: str = "keep", field: str = "lang") -> Keep:
    """Keep records whose ``field`` (default ``lang``) is in ``allow``; records without the
    field are kept (``missing: keep``) or dropped (``missing: drop``)."""
    allowed = {allow} if isinstance(allow, str) else set(allow or [])
    if not allowed or not all(isinstance(a, str) for a in allowed):
        raise FilterError("lang: 'allow' must be a language code or a non-empty list of them")
    if missing not in ("keep", "drop"):
        raise FilterError("lang: 'missing' must be 'keep' or 'drop'")

    def keep(rec: dict) -> bool:
        value = rec.get(field)
        if value is None:
            return missing == "keep"
        return value in allowed

    return keep
