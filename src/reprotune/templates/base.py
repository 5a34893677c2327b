"""Common machinery of the prompt templates.

A template turns a normalized record (see docs/architecture.md) into an ordered
list of ``(text, trainable)`` segments.  ``trainable`` is True exactly for the
assistant content and its end-of-turn marker; everything else (system prompt,
user turns, role headers, separators) is context only.  ``tokenize.encode``
tokenizes the concatenation once and masks by character offsets.

Every template also carries a Jinja ``chat_template`` for
``tokenizer.chat_template``: ``apply_chat_template(to_messages(record),
tokenize=False)`` equals ``render(record, eos)`` byte for byte, and
``add_generation_prompt=True`` on a conversation that ends with a user turn equals
``render_prompt(record, eos)``.  Neither contains the bos token (the tokenizer's
post-processor adds it on ``tokenizer(text)``); tokenize the rendered prompt with
``add_special_tokens=True``.

Plain-text records (``{"text": ...}``, no ``messages``) are always rendered as
``text + eos`` with every token trained, whatever template the adapter names,
so that language-modelling data (RedPajama, fanfics) can be mixed into a chat
adapter.
"""
from __future__ import annotations

from typing import Any

Segment = tuple[str, bool]


class TemplateError(ValueError):
    """A record that the template cannot render (bad roles, multi-turn on a single-turn format)."""


def is_text_record(record: dict) -> bool:
    return "messages" not in record and isinstance(record.get("text"), str)


def _merge(segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for text, trainable in segments:
        if not text:
            continue
        if out and out[-1][1] == trainable:
            out[-1] = (out[-1][0] + text, trainable)
        else:
            out.append((text, trainable))
    return out


def instruction_segments(head: str, user_header: str, input_header: str, sep: str,
                         turns: list[dict], input_text: str, eos: str, generation_prompt: str) -> list[Segment]:
    """Segments of the instruction/[input]/response formats (orca_mini, alpaca).

    ``head`` (the system block, may be empty) comes first; each user turn renders as
    ``user_header + content + sep``, followed by ``input_header + input + sep`` when the
    record has an input; each answer as ``### Response:\n`` + content + eos (trained).
    """
    segs: list[Segment] = [(head, False)] if head else []
    for t in turns:
        if t["role"] == "user":
            segs.append((user_header + t["content"] + sep, False))
            if input_text:
                segs.append((input_header + input_text + sep, False))
        else:
            segs.append(("### Response:\n", False))
            segs.append((t["content"] + eos, True))
    if turns[-1]["role"] == "user":
        segs.append((generation_prompt, False))
    return segs


class Template:
    """Base class; subclasses set the class attributes and implement ``_segments``."""

    name: str = ""
    description: str = ""
    multi_turn: bool = True
    #: True when the format has its own Input block (orca_mini, alpaca); otherwise a
    #: record's ``input`` is appended to the first user message as ``"\n\n" + input``.
    has_input_block: bool = False
    #: The assistant header emitted for ``add_generation_prompt``.
    generation_prompt: str = ""
    chat_template: str = ""

    # -- to implement -------------------------------------------------------------
    def _segments(self, system: str, turns: list[dict], input_text: str, eos: str) -> list[Segment]:
        """Segments for ``turns`` (alternating user/assistant, first user).

        If the last turn is a user turn, the result ends with the assistant header
        (the generation prompt)."""
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------
    def render_segments(self, record: dict, eos: str) -> list[Segment]:
        """Ordered ``(text, trainable)`` pieces of a complete training record."""
        if is_text_record(record):
            return _merge([(record["text"], True), (eos, True)])
        system, turns, input_text = self._parts(record)
        if turns[-1]["role"] != "assistant":
            raise TemplateError(f"{self.name}: a training record must end with an assistant turn")
        return _merge(self._segments(system, turns, input_text, eos))

    def render(self, record: dict, eos: str) -> str:
        return "".join(text for text, _ in self.render_segments(record, eos))

    def render_prompt(self, record: dict, eos: str) -> str:
        """Inference prompt: everything up to and including the next assistant header.

        A final assistant turn, if present, is dropped (so a training record gives
        the prompt its last answer was trained on)."""
        if is_text_record(record):
            return record["text"]
        system, turns, input_text = self._parts(record, allow_open=True)
        if turns[-1]["role"] == "assistant":
            turns = turns[:-1]
        return "".join(text for text, _ in self._segments(system, turns, input_text, eos))

    def to_messages(self, record: dict) -> list[dict]:
        """Chat messages for ``apply_chat_template``: system first (when non-empty),
        ``input`` folded into the first user message (or carried as its ``"input"``
        key for templates with an Input block)."""
        if is_text_record(record):
            return [{"role": "assistant", "content": record["text"]}]
        system, turns, input_text = self._parts(record, allow_open=True, fold_input=False)
        out: list[dict] = []
        if system:
            out.append({"role": "system", "content": system})
        for i, m in enumerate(turns):
            msg = {"role": m["role"], "content": m["content"]}
            if i == 0 and input_text:
                if self.has_input_block:
                    msg["input"] = input_text
                else:
                    msg["content"] = msg["content"] + "\n\n" + input_text
            out.append(msg)
        return out

    # -- helpers ------------------------------------------------------------------
    def _parts(self, record: dict, allow_open: bool = False, fold_input: bool = True):
        system = record.get("system") or ""
        if not isinstance(system, str):
            raise TemplateError(f"{self.name}: system must be a string")
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            raise TemplateError(f"{self.name}: record has no messages")
        turns: list[dict] = []
        for i, m in enumerate(messages):
            role = m.get("role") if isinstance(m, dict) else None
            if role == "system" and i == 0 and not system:
                system = m.get("content") or ""
                continue
            expected = "user" if len(turns) % 2 == 0 else "assistant"
            if role != expected:
                raise TemplateError(
                    f"{self.name}: message {i} has role {role!r}, expected {expected!r} "
                    "(roles must alternate user/assistant, starting with user)"
                )
            content = m.get("content")
            if not isinstance(content, str):
                raise TemplateError(f"{self.name}: message {i} content is not a string")
            turns.append({"role": role, "content": content})
        if not turns:
            raise TemplateError(f"{self.name}: record has no user/assistant messages")
        n_user = sum(1 for t in turns if t["role"] == "user")
        if not self.multi_turn and n_user > 1:
            raise TemplateError(f"{self.name}: single-turn format, record has {n_user} user turns")
        input_text = record.get("input") or ""
        if not isinstance(input_text, str):
            raise TemplateError(f"{self.name}: input must be a string")
        if input_text and fold_input and not self.has_input_block:
            turns[0] = {"role": "user", "content": turns[0]["content"] + "\n\n" + input_text}
            input_text = ""
        return system, turns, input_text

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"<Template {self.name}>"


def describe(template: Template) -> dict[str, Any]:
    return {
        "name": template.name,
        "description": template.description,
        "multi_turn": template.multi_turn,
        "has_input_block": template.has_input_block,
    }
