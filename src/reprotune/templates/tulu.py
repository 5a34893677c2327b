"""Tulu 2 format (allenai open-instruct), from the seed card (tulu-v2-qlora-70b)::

    <|user|>
    Your message here!
    <|assistant|>

Per turn: ``<|user|>\\n{user}\\n<|assistant|>\\n{assistant}</s>\\n``; a system message
renders first as ``<|system|>\\n{system}\\n`` (omitted when empty), as in
open-instruct's ``_concat_messages``.

Labels follow open-instruct: every non-assistant span is masked, and the trained
part of an assistant turn is ``{assistant}</s>\\n`` - the answer, the ``</s>``
end-of-turn marker, and the newline that ends the message (open-instruct counts
that newline as part of the assistant message).  The ``<|assistant|>\\n`` header is
context.  Unlike open-instruct we do not ``strip()`` message contents here (the
source cleaners normalize text).
"""
from __future__ import annotations

from reprotune.templates import register
from reprotune.templates.base import Segment, Template

END = "</s>"


class Tulu(Template):
    name = "tulu"
    description = "<|system|>/<|user|>/<|assistant|> lines, </s> after each answer (Tulu 2, open-instruct)"
    multi_turn = True
    generation_prompt = "<|assistant|>\n"
    chat_template = (
        r"{%- for message in messages -%}"
        r"{%- if message['role'] == 'system' -%}"
        r"{%- if message['content'] -%}{{ '<|system|>\n' + message['content'] + '\n' }}{%- endif -%}"
        r"{%- elif message['role'] == 'user' -%}"
        r"{{ '<|user|>\n' + message['content'] + '\n' }}"
        r"{%- elif message['role'] == 'assistant' -%}"
        r"{{ '<|assistant|>\n' + message['content'] + '</s>\n' }}"
        r"{%- endif -%}"
        r"{%- endfor -%}"
        r"{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
    )

    def _segments(self, system, turns, input_text, eos) -> list[Segment]:
        segs: list[Segment] = []
        if system:
            segs.append((f"<|system|>\n{system}\n", False))
        for t in turns:
            if t["role"] == "user":
                segs.append((f"<|user|>\n{t['content']}\n", False))
            else:
                segs.append(("<|assistant|>\n", False))
                segs.append((t["content"] + END + "\n", True))
        if turns[-1]["role"] == "user":
            segs.append((self.generation_prompt, False))
        return segs


register(Tulu())
