"""A prompt template: one Jinja chat template, and the records it renders.

A template is defined once, as a Jinja chat template in the transformers convention: it sees
``messages`` (``{"role": "system" | "user" | "assistant", "content": str}``), ``bos_token``,
``eos_token`` and ``add_generation_prompt``, and the trained part of each assistant turn sits
inside ``{% generation %}...{% endgeneration %}``. That same text is the tokenizer's
``chat_template`` (``chat_template.jinja`` next to the trained model's tokenizer files):
``apply_chat_template(to_messages(record), tokenize=False)`` is ``render(record, eos)`` byte for
byte, and with ``add_generation_prompt=True`` on a conversation that ends with a user turn it is
``render_prompt(record, eos)``.

``render_segments(record, eos)`` is the ordered ``(text, trainable)`` pieces of a training
record, computed from one rendering (:func:`reprotune.templates.engine.render`): ``trainable``
is True exactly inside the generation spans. ``tokenize.encode`` tokenizes the concatenation
once and masks by character offsets.

Records become messages here (:meth:`Template.to_messages`), the same way for every template:
the record's ``system`` (or a leading system message) becomes a first system message when it is
non-empty; roles must alternate user/assistant starting with the user (else ``TemplateError``);
a record's ``input`` is given to the first user message as its ``"input"`` key when the template
reads that key (a format with its own Input block: orca_mini, alpaca), and is otherwise appended
to the first user message's content as ``"\\n\\n" + input``. A format that refuses a
conversation (a single-turn format given two user turns) says so with ``raise_exception``,
which is a ``TemplateError`` here.

The rendered text never starts with the bos token: the tokenizer's post-processor adds it on
``tokenizer(text)`` (tokenize a rendered prompt with ``add_special_tokens=True``). A format
whose later turns start with bos (llama2_chat) writes ``bos_token`` there.

Plain-text records (``{"text": ...}``, no ``messages``) are always rendered as ``text + eos``
with every token trained, whatever template the adapter names, so that language-modelling data
(RedPajama, fanfics) can be mixed into a chat adapter.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from reprotune.templates import engine
from reprotune.templates.engine import TemplateError

Segment = tuple[str, bool]


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


def split(text: str, spans: list[tuple[int, int]]) -> list[Segment]:
    """``text`` cut at the generation ``spans``: ``(piece, inside a span)``, merged, no empty pieces."""
    out: list[Segment] = []
    pos = 0
    for start, end in sorted(spans):
        start = max(start, pos)
        if end > start:
            out += [(text[pos:start], False), (text[start:end], True)]
            pos = end
    return _merge(out + [(text[pos:], False)])


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The trainable spans of ``split(text, spans)`` (the character spans of its trainable pieces):
    sorted, overlaps cut, empty ones dropped, touching ones merged."""
    out: list[tuple[int, int]] = []
    pos = 0
    for start, end in sorted(spans):
        start = max(start, pos)
        if end > start:
            if out and out[-1][1] == start:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
            pos = end
    return out


@dataclass(frozen=True)
class Template:
    """``name``, the Jinja ``chat_template`` and where it was read from (``origin``: the
    built-in's file, '' for a recipe's inline template)."""

    name: str
    chat_template: str
    origin: str = ""

    @cached_property
    def description(self) -> str:
        """The first line of the template's leading Jinja comment."""
        return engine.leading_comment(self.chat_template).split("\n", 1)[0]

    @cached_property
    def has_input_block(self) -> bool:
        return engine.reads_key(self.chat_template, "input")

    @cached_property
    def multi_turn(self) -> bool:
        """Whether the format renders a conversation with two user turns (single-turn ones refuse)."""
        turns = [{"role": r, "content": "x"} for r in ("user", "assistant", "user", "assistant")]
        try:
            self.render_segments({"system": "", "messages": turns}, "</s>")
        except TemplateError:
            return False
        return True

    # -- rendering ----------------------------------------------------------------
    def render_segments(self, record: dict, eos: str, bos: str = "<s>") -> list[Segment]:
        """Ordered ``(text, trainable)`` pieces of a complete training record."""
        return split(*self.render_spans(record, eos, bos))

    def render_spans(self, record: dict, eos: str, bos: str = "<s>") -> tuple[str, list[tuple[int, int]]]:
        """``render_segments`` as the whole text and the ``[start, end)`` character spans of its
        trainable pieces (what tokenizing needs), without cutting the text into pieces."""
        if is_text_record(record):
            text = record["text"] + eos
            return text, [(0, len(text))] if text else []
        messages = self.to_messages(record)
        if messages[-1]["role"] != "assistant":
            raise TemplateError(f"{self.name}: a training record must end with an assistant turn")
        text, spans = self._render(messages, bos, eos, False)
        return text, merge_spans(spans)

    def render(self, record: dict, eos: str, bos: str = "<s>") -> str:
        return "".join(text for text, _ in self.render_segments(record, eos, bos))

    def render_prompt(self, record: dict, eos: str, bos: str = "<s>") -> str:
        """Inference prompt: the conversation with ``add_generation_prompt`` (the next assistant
        header). A final assistant turn, if present, is dropped (so a training record gives the
        prompt its last answer was trained on)."""
        if is_text_record(record):
            return record["text"]
        messages = self.to_messages(record)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return self._render(messages, bos, eos, True)[0]

    def _render(self, messages: list[dict], bos: str, eos: str, prompt: bool):
        try:
            return engine.render(self.chat_template, messages, bos, eos, prompt)
        except TemplateError as e:
            raise TemplateError(f"{self.name}: {e}") from None
        except engine.TemplateSourceError as e:
            raise engine.TemplateSourceError(f"template {self.name!r}: {e}") from None

    # -- records -> messages ------------------------------------------------------
    def to_messages(self, record: dict) -> list[dict]:
        """Chat messages for the template (and ``apply_chat_template``); see the module doc."""
        if is_text_record(record):
            return [{"role": "assistant", "content": record["text"]}]
        system, turns = self._parts(record)
        input_text = record.get("input") or ""
        if not isinstance(input_text, str):
            raise TemplateError(f"{self.name}: input must be a string")
        if input_text and self.has_input_block:
            turns[0]["input"] = input_text
        elif input_text:
            turns[0]["content"] += "\n\n" + input_text
        return ([{"role": "system", "content": system}] if system else []) + turns

    def _parts(self, record: dict) -> tuple[str, list[dict]]:
        """The system prompt and the user/assistant turns (copies), roles and types checked."""
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
                raise TemplateError(f"{self.name}: message {i} has role {role!r}, expected {expected!r} "
                                    "(roles must alternate user/assistant, starting with user)")
            if not isinstance(m.get("content"), str):
                raise TemplateError(f"{self.name}: message {i} content is not a string")
            turns.append({"role": role, "content": m["content"]})
        if not turns:
            raise TemplateError(f"{self.name}: record has no user/assistant messages")
        return system, turns
