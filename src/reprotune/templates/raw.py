"""Plain-text language-modelling records (RedPajama, fanfics): ``text + eos``.

Every token is trained (bos excepted, it is never a target).  Records of the form
``{"text": ...}`` take this rendering under every template (see ``base``); naming
``raw`` as an adapter's template additionally gives the tokenizer a chat template
that concatenates message contents (and appends eos unless
``add_generation_prompt`` is set).  Chat records (``messages``) are rejected.
"""
from __future__ import annotations

from reprotune.templates import register
from reprotune.templates.base import Segment, Template, TemplateError


class Raw(Template):
    name = "raw"
    description = "plain text + eos, loss on every token"
    multi_turn = True
    generation_prompt = ""
    chat_template = (
        r"{%- for message in messages -%}{{ message['content'] }}{%- endfor -%}"
        r"{%- if not add_generation_prompt -%}{{ eos_token }}{%- endif -%}"
    )

    def _segments(self, system, turns, input_text, eos) -> list[Segment]:
        raise TemplateError("raw: takes plain-text records ({'text': ...}), not messages")


register(Raw())
