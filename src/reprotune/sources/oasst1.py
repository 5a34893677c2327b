"""OpenAssistant/oasst1: flat message rows -> conversation trees -> root-to-assistant paths.

All given files (e.g. train + validation parquet) are read into one message
table, trees are rebuilt from ``parent_id`` and conversations are taken as paths
from the root prompter message to an assistant message.

Options (defaults):
  lang: ["en"]                  keep messages whose lang is listed (null = any)
  tree_state: "ready_for_export" keep trees in that state (null = any)
  review_result: true           keep messages whose review_result is this (null = any)
  drop_deleted: true            cut deleted messages
  drop_synthetic: true          cut synthetic messages
  select: "best"                "best": one conversation per tree, taking the best
                                ranked reply (lowest rank, null last) at each
                                assistant branch and the follow-up that leads
                                deepest at each prompter branch; "all_paths": every
                                root -> assistant-leaf path.

A message that fails a check is cut together with its subtree and yields one
reject (reasons: deleted, review_failed, synthetic, lang, bad_role, bad_type,
null_field); a tree whose root state is wrong yields one ``tree_state`` reject; a
tree with no usable assistant reply one ``no_assistant_reply`` reject. Messages
whose parent is missing are ``orphan`` rejects (one per orphan, its subtree goes
with it); parent cycles yield one ``cycle`` reject per cycle. Duplicate
message ids after the first are ``duplicate_id`` rejects. Record id:
``<source>/<leaf message_id>``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator

from . import register
from ._common import STR_LIST_OR_NULL, as_str_list, iter_parquet, merge_options, record, reject, sorted_files

OPTIONS: dict = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "lang": {**STR_LIST_OR_NULL, "default": ["en"]},
        "tree_state": {"type": ["string", "null"], "default": "ready_for_export"},
        "review_result": {"type": ["boolean", "null"], "default": True},
        "drop_deleted": {"type": "boolean", "default": True},
        "drop_synthetic": {"type": "boolean", "default": True},
        "select": {"enum": ["best", "all_paths"], "default": "best"},
    },
}
REQUIRED = ["message_id", "parent_id", "text", "role", "lang", "review_result", "deleted",
            "rank", "synthetic", "message_tree_id", "tree_state"]
OPTIONAL = ["user_id", "created_date", "review_count", "model_name", "detoxify", "emojis", "labels"]
ROLE = {"prompter": "user", "assistant": "assistant"}


def _rank_key(m: dict):
    rank = m.get("rank")
    has_rank = isinstance(rank, int) and not isinstance(rank, bool)
    return (not has_rank, rank if has_rank else 0, str(m.get("created_date") or ""), m["message_id"])


@register("oasst1")
def read(files, options=None, source=None) -> Iterator[dict]:
    source = source or "oasst1"
    opts = merge_options("oasst1", options, OPTIONS)
    langs = as_str_list(opts["lang"])

    # ---- load: message_id -> row, in file order
    msgs: dict[str, dict] = {}
    order: list[str] = []
    index = -1
    for path in sorted_files(files):
        for row in iter_parquet(path, REQUIRED, OPTIONAL):
            index += 1
            mid = row.get("message_id")
            if not isinstance(mid, str) or not mid:
                yield reject(source, index, "bad_type", row)
                continue
            if mid in msgs:
                yield reject(source, f"{mid}#{index}", "duplicate_id", row)
                continue
            pid = row.get("parent_id")
            if pid is not None and not isinstance(pid, str):
                yield reject(source, mid, "bad_type", row)
                continue
            msgs[mid] = row
            order.append(mid)

    children: dict[str, list[str]] = defaultdict(list)
    roots: list[str] = []
    orphans: list[str] = []
    for mid in order:
        pid = msgs[mid]["parent_id"]
        if pid is None:
            roots.append(mid)
        elif pid not in msgs:
            orphans.append(mid)
        else:
            children[pid].append(mid)
    for kids in children.values():
        kids.sort(key=lambda k: _rank_key(msgs[k]))

    def message_problem(m: dict, parent_role: str | None) -> str | None:
        role = m.get("role")
        if role not in ROLE:
            return "bad_role"
        expected = "prompter" if parent_role in (None, "assistant") else "assistant"
        if role != expected:
            return "bad_role"
        if m.get("text") is None:
            return "null_field"
        if not isinstance(m["text"], str):
            return "bad_type"
        if opts["drop_deleted"] and m.get("deleted") is True:
            return "deleted"
        if opts["review_result"] is not None and m.get("review_result") is not opts["review_result"]:
            return "review_failed"
        if opts["drop_synthetic"] and m.get("synthetic") is True:
            return "synthetic"
        if langs is not None and m.get("lang") not in langs:
            return "lang"
        return None

    reached: set[str] = set()

    def mark(mid: str) -> None:
        stack = [mid]
        while stack:
            cur = stack.pop()
            if cur in reached:
                continue
            reached.add(cur)
            stack.extend(children.get(cur, ()))

    # ---- per tree: prune (collecting rejects), then select paths
    for root in roots:
        mark(root)
        rows = msgs[root]
        if opts["tree_state"] is not None and rows.get("tree_state") != opts["tree_state"]:
            yield reject(source, root, "tree_state", rows)
            continue
        rejects: list[dict] = []
        kept: dict[str, list[str]] = {}  # kept message -> kept children

        def prune(mid: str, parent_role: str | None) -> bool:
            # recursion depth = tree depth (a few dozen levels at most in oasst1)
            problem = message_problem(msgs[mid], parent_role)
            if problem:
                rejects.append(reject(source, mid, problem, msgs[mid]))
                return False
            kept[mid] = []
            for kid in children.get(mid, ()):
                if prune(kid, msgs[mid]["role"]):
                    kept[mid].append(kid)
            return True

        prune(root, None)
        yield from rejects
        if root not in kept:
            continue
        if opts["select"] == "best":
            paths = [_best_path(root, kept, msgs)]
            if paths[0] is None:
                paths = []
        else:
            paths = list(_all_paths(root, kept, msgs))
        if not paths:
            yield reject(source, root, "no_assistant_reply", msgs[root])
            continue
        for path in paths:
            messages = [{"role": ROLE[msgs[m]["role"]], "content": msgs[m]["text"]} for m in path]
            yield record(source, path[-1], "", messages)

    # ---- orphans (parent id not in the data): one reject each, subtree dropped
    for mid in orphans:
        mark(mid)
        yield reject(source, mid, "orphan", msgs[mid])

    # ---- whatever is still unreached hangs off a parent cycle
    handled: set[str] = set(reached)
    for mid in order:
        if mid in handled:
            continue
        walk: list[str] = []
        pos: dict[str, int] = {}
        cur = mid
        while cur not in pos and cur not in handled:
            pos[cur] = len(walk)
            walk.append(cur)
            cur = msgs[cur]["parent_id"]
        if cur in pos:  # a new cycle: walk[pos[cur]:]
            cycle = walk[pos[cur]:]
            first = min(cycle)
            yield reject(source, first, "cycle", msgs[first])
            stack = list(cycle)
            while stack:
                node = stack.pop()
                if node not in handled:
                    handled.add(node)
                    stack.extend(children.get(node, ()))
        handled.update(walk)


def _best_path(mid: str, kept: dict[str, list[str]], msgs: dict[str, dict]) -> list[str] | None:
    """Best path from ``mid`` ending at an assistant message (None if there is none)."""
    m = msgs[mid]
    if m["role"] == "prompter":
        replies = kept[mid]  # assistant children, already in rank order
        if not replies:
            return None
        rest = _best_path(replies[0], kept, msgs)
        return [mid] + rest if rest is not None else None
    best: list[str] | None = None
    for follow in kept[mid]:  # prompter follow-ups: take the deepest, earliest on ties
        cand = _best_path(follow, kept, msgs)
        if cand is not None and (best is None or len(cand) > len(best)):
            best = cand
    return [mid] + (best or [])


def _all_paths(root: str, kept: dict[str, list[str]], msgs: dict[str, dict]) -> Iterator[list[str]]:
    """Every root -> assistant path that cannot be extended by another assistant reply."""

    def walk(mid: str, prefix: list[str]) -> Iterator[list[str]]:
        path = prefix + [mid]
        if msgs[mid]["role"] == "prompter":
            for reply in kept[mid]:
                yield from walk(reply, path)
            return
        extended = False
        for follow in kept[mid]:
            for sub in walk(follow, path):
                extended = True
                yield sub
        if not extended:
            yield path

    yield from walk(root, [])


read.options_schema = OPTIONS
