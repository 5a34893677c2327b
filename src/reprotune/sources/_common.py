"""Shared plumbing for the source readers: options, file iteration, rejects, turn normalization.

Readers only normalize *structure* (roles, system prompts, nesting). Content
filtering (refusals, duplicates, empty turns, length) belongs to ``filters.py``.
Every row that cannot be turned into a record becomes a reject with a short
snake_case reason; only a file that does not look like the format at all raises
:class:`SchemaError`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import jsonschema
import pyarrow.parquet as pq

from ..filters import HashSet64, digest64

MAX_STR = 500      # characters kept per string in a reject's "row"
MAX_ITEMS = 50     # items kept per list in a reject's "row"
BATCH_ROWS = 1024  # parquet rows per streamed batch


class SchemaError(ValueError):
    """A file whose columns/keys do not match the reader's format (one-line message)."""


class SourceError(ValueError):
    """Bad reader options or a bad preset file (one-line message)."""


class RowError(Exception):
    """Internal: the current row is malformed; ``reason`` becomes the reject reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------------------- options
def option_defaults(schema: dict) -> dict:
    """A reader's default options: the ``default`` of each property of its options schema."""
    return {k: copy.deepcopy(p.get("default")) for k, p in schema.get("properties", {}).items()}


def merge_options(fmt: str, options: dict | None, schema: dict) -> dict:
    """``options`` over the schema's defaults. Unknown options and values the options
    schema (JSON schema, one per reader) rejects raise SourceError with one line."""
    options = dict(options or {})
    known = sorted(schema.get("properties", {}))
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SourceError(f"{fmt}: unknown option(s) {unknown}; known options: {known}")
    problem = schema_problem(schema, options)
    if problem:
        raise SourceError(f"{fmt}: option {problem}")
    return {**option_defaults(schema), **options}


def schema_problem(schema: dict, data: Any) -> str | None:
    """``"'<key path>': <what is wrong>"`` (just what is wrong at the top level) for the
    first problem of ``data`` under the JSON schema ``schema``, None if it is valid."""
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if err is None:
        return None
    where = ".".join(str(p) for p in err.absolute_path)
    return f"'{where}': {err.message}" if where else err.message


# JSON schema of an option that may be null, a string or a list of strings (see as_str_list)
STR_LIST_OR_NULL = {"type": ["null", "string", "array"], "items": {"type": "string"}}


def as_str_list(value: Any) -> list[str] | None:
    """An option of schema STR_LIST_OR_NULL as None or a list of strings."""
    return [value] if isinstance(value, str) else value


def sorted_files(files: Iterable[Path | str]) -> list[Path]:
    """Deterministic file order regardless of how a glob listed them."""
    return sorted((Path(f) for f in files), key=lambda p: str(p))


# ----------------------------------------------------------------------------- generic layout options
# options both generic layouts (conversations, instruction) take
COLUMN = {"type": "string", "minLength": 1}
ID_KEY = {"type": ["string", "null"], "minLength": 1, "default": None,
          "description": "column holding the row id (null, or no usable value: the row index)"}
KEEP = {"type": "object", "additionalProperties": STR_LIST_OR_NULL, "default": {},
        "description": "column -> value or list of values: rows whose column holds none of them "
                       "are rejects with the column's name as reason (null: every row)"}


def keep_check(keep: dict) -> Callable[[dict], None]:
    """The row check of option ``keep`` (see KEEP): raises RowError(<column>)."""
    rules = [(column, tuple(as_str_list(values))) for column, values in keep.items() if values is not None]

    def check(row: dict) -> None:
        for column, allowed in rules:
            if row.get(column) not in allowed:
                raise RowError(column)

    return check


# ----------------------------------------------------------------------------- output
def excerpt(obj: Any, limit: int = MAX_STR) -> Any:
    """JSON-safe copy of a raw row with long strings and lists truncated."""
    if isinstance(obj, str):
        if len(obj) > limit:
            return obj[:limit] + f"...[+{len(obj) - limit} chars]"
        return obj
    if isinstance(obj, bytes):
        return excerpt(obj.decode("utf-8", errors="replace"), limit)
    if obj is None or isinstance(obj, (bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else str(obj)
    if isinstance(obj, dict):
        return {str(k): excerpt(v, limit) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [excerpt(v, limit) for v in obj[:MAX_ITEMS]]
        if len(obj) > MAX_ITEMS:
            items.append(f"...[+{len(obj) - MAX_ITEMS} items]")
        return items
    return excerpt(str(obj), limit)


def reject(source: str, rowid: Any, reason: str, row: Any) -> dict:
    return {"id": f"{source}/{rowid}", "source": source, "reason": reason, "row": excerpt(row)}


def record(source: str, rowid: Any, system: str, messages: list[dict], input: str | None = None) -> dict:
    rec = {"id": f"{source}/{rowid}", "source": source, "system": system, "messages": messages}
    if input is not None and input.strip():
        rec["input"] = input
    return rec


class UniqueIds:
    """Row ids from the data are not always unique; suffix repeats with ``#<n>``.

    Memory stays flat in the number of rows: the ids seen are kept as 64-bit
    blake2b digests in :class:`~reprotune.filters.HashSet64` (~8 bytes each, not the
    ~90 of a dict of strings); an exact per-id counter exists only for ids whose
    digest was already seen. Two *different* ids with the same 64-bit digest
    (probability ~n**2 / 2**65: ~1e-7 at 2M rows) make the later one ``<id>#2``:
    the ids stay unique and deterministic, only that suffix is spurious.
    """

    def __init__(self) -> None:
        self._seen = HashSet64()
        self._repeats: dict[str, int] = {}

    def __call__(self, rowid: Any) -> str:
        rowid = str(rowid)
        if self._seen.add(digest64(rowid)):
            return rowid
        n = self._repeats.get(rowid, 1) + 1
        self._repeats[rowid] = n
        return f"{rowid}#{n}"


# ----------------------------------------------------------------------------- field access
def get_str(row: dict, key: str, *, optional: bool = False) -> str:
    """A string field; missing/null/wrong type raise RowError (optional -> "")."""
    if key not in row:
        if optional:
            return ""
        raise RowError("missing_field")
    value = row[key]
    if value is None:
        if optional:
            return ""
        raise RowError("null_field")
    if not isinstance(value, str):
        raise RowError("bad_type")
    return value


def row_id(row: dict, key: str | None, index: int) -> str:
    """The data's own id when it has a usable one, else the row index."""
    if key:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return str(index)


# ----------------------------------------------------------------------------- turns
def role_map(roles: dict[str, str]) -> dict[str, str]:
    """Option ``roles`` (raw role -> user|assistant|system) keyed the way
    :func:`normalize_turns` looks roles up: stripped and lower-cased."""
    return {k.strip().lower(): v for k, v in roles.items()}


def normalize_turns(turns: Any, role_key: str, content_key: str, roles: dict[str, str]) -> tuple[str, list[dict]]:
    """Raw role/content turns -> (system, alternating user/assistant messages).

    ``roles`` (from :func:`role_map`) maps a turn's stripped, lower-cased role to
    user/assistant/system; any other role is ``unknown_role``. A leading system turn
    becomes the system prompt; anything that breaks the contract (first turn not
    user, two turns of one role in a row, last turn not assistant, a system turn
    later on) raises RowError with the reason.
    """
    if not isinstance(turns, list):
        raise RowError("bad_type")
    if not turns:
        raise RowError("empty_conversation")
    system = ""
    messages: list[dict] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError("bad_type")
        if role_key not in turn or content_key not in turn:
            raise RowError("missing_field")
        role = turn[role_key]
        if not isinstance(role, str):
            raise RowError("bad_type")
        role = roles.get(role.strip().lower())
        if role is None:
            raise RowError("unknown_role")
        content = turn[content_key]
        if content is None:
            raise RowError("null_field")
        if not isinstance(content, str):
            raise RowError("bad_type")
        if role == "system":
            if i != 0:
                raise RowError("system_not_first")
            system = content
            continue
        messages.append({"role": role, "content": content})
    check_alternation(messages)
    return system, messages


def check_alternation(messages: list[dict]) -> None:
    if not messages:
        raise RowError("empty_conversation")
    if messages[0]["role"] != "user":
        raise RowError("first_not_user")
    for prev, cur in zip(messages, messages[1:]):
        if prev["role"] == cur["role"]:
            raise RowError("non_alternating")
    if messages[-1]["role"] != "assistant":
        raise RowError("last_not_assistant")


# ----------------------------------------------------------------------------- file readers
def _schema_error(path: Path, missing: Iterable[str], present: Iterable[str], known: Iterable[str],
                  what: str = "columns") -> SchemaError:
    missing = sorted(missing)
    extra = sorted(set(present) - set(known))
    return SchemaError(f"{path}: missing {what} {missing}; unexpected {what} {extra}")


def iter_parquet(path: Path, required: Iterable[str], optional: Iterable[str] = (), *,
                 all_columns: bool = False) -> Iterator[dict]:
    """Stream rows (as dicts of the required+optional columns present, or of every
    column with ``all_columns``) by batches."""
    required = list(required)
    optional = list(optional)
    # pre_buffer=False: with pre-buffering, iter_batches keeps every column chunk read so
    # far alive (memory grows ~170 bytes/row on OpenOrca-shaped rows); without it, flat.
    pf = pq.ParquetFile(path, pre_buffer=False)
    present = pf.schema_arrow.names
    missing = [c for c in required if c not in present]
    if missing:
        raise _schema_error(path, missing, present, required + optional)
    columns = None if all_columns else required + [c for c in optional if c in present]
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        yield from batch.to_pylist()


def _row_error(reason: str, raw: Any) -> RowError:
    err = RowError(reason)
    err.raw = raw  # type: ignore[attr-defined]
    return err


def has_lone_surrogate(obj: Any) -> bool:
    """Whether any string in ``obj`` holds a lone surrogate (undecodable bytes kept by
    ``surrogateescape``, or a ``\\udcxx`` escape): such text is not valid Unicode."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(obj, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(has_lone_surrogate(v) for v in obj)
    return False


def iter_jsonl(path: Path) -> Iterator[Any]:
    """Stream parsed lines (binary line by line: never the whole file). A line that is
    not UTF-8 is yielded as ``RowError('bad_utf8')``, one that does not parse (e.g. a
    truncated last line) as ``RowError('bad_json')``; both carry the raw text in ``.raw``
    (bad bytes shown as U+FFFD). Blank lines are skipped."""
    with open(path, "rb") as f:
        for bline in f:
            if not bline.strip():
                continue
            try:
                line = bline.decode("utf-8")
            except UnicodeDecodeError:
                yield _row_error("bad_utf8", bline.rstrip(b"\n").decode("utf-8", errors="replace"))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                yield _row_error("bad_json", line.rstrip("\n"))
                continue
            if has_lone_surrogate(row):  # a "\udcxx" escape: not valid Unicode either
                yield _row_error("bad_utf8", excerpt(line.rstrip("\n").encode("utf-8", "replace").decode()))
                continue
            yield row


def load_json_array(path: Path) -> list:
    """A JSON array file (these formats are one array; the Hub files are at most a few
    hundred MB). Undecodable bytes are kept as lone surrogates so that only the rows
    holding them become ``bad_utf8`` rejects (see :func:`iter_rows`)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise SchemaError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    return data


def _json_rows(path: Path) -> Iterator[Any]:
    for row in load_json_array(path):
        if has_lone_surrogate(row):
            yield _row_error("bad_utf8", excerpt(json.dumps(row, ensure_ascii=True)))
        else:
            yield row


def iter_rows(path: Path, required: Iterable[str], optional: Iterable[str] = (), *,
              all_columns: bool = False) -> Iterator[Any]:
    """Rows of a .parquet / .jsonl / .json file. Parquet files are schema-checked
    here (``all_columns``: read every column, not only the named ones, as JSON rows
    are); for JSON files the first object row is checked with :func:`check_first_row`.
    JSON lines that do not parse come out as RowError objects."""
    required = list(required)
    optional = list(optional)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from iter_parquet(path, required, optional, all_columns=all_columns)
        return
    if suffix == ".jsonl":
        rows: Iterable[Any] = iter_jsonl(path)
    elif suffix == ".json":
        rows = _json_rows(path)
    else:
        raise SchemaError(f"{path}: unsupported file type {suffix!r} (expected .parquet, .jsonl or .json)")
    checked = False
    for row in rows:
        if not checked and isinstance(row, dict):
            check_first_row(path, row, required, optional)
            checked = True
        yield row


def check_first_row(path: Path, row: dict, required: list[str], optional: list[str]) -> None:
    """A JSON file whose first object shares none of the required keys is the wrong
    format altogether (rows that merely lack a key are rejects instead)."""
    if required and not any(k in row for k in required):
        raise _schema_error(path, required, row.keys(), required + optional, what="keys")


# ----------------------------------------------------------------------------- generic loop
def read_rows(files, source: str, required: Iterable[str], optional: Iterable[str], convert,
              id_key: str | None = None, all_columns: bool = False) -> Iterator[dict]:
    """Drive a row-per-example format: ``convert(row) -> (system, messages, input|None)``
    or raise RowError(reason). Row ids: the data's ``id_key`` if usable, else the
    running row index across the (sorted) files. ``all_columns``: see :func:`iter_rows`."""
    required = list(required)
    optional = list(optional)
    ids = UniqueIds()
    index = -1
    for path in sorted_files(files):
        for row in iter_rows(path, required, optional, all_columns=all_columns):
            index += 1
            if isinstance(row, RowError):
                yield reject(source, ids(index), row.reason, getattr(row, "raw", None))
                continue
            if not isinstance(row, dict):
                yield reject(source, ids(index), "bad_type", row)
                continue
            rid = ids(row_id(row, id_key, index))
            try:
                system, messages, inp = convert(row)
            except RowError as e:
                yield reject(source, rid, e.reason, row)
                continue
            yield record(source, rid, system, messages, inp)
