"""Open-Assistant format of llama2-13b-orca-8k-3319, from the seed card::

    <|system|>system message</s><|prompter|>Q1</s><|assistant|>A1</s><|prompter|>Q2</s><|assistant|>

Decisions:

* "the system message is optional": an empty system prompt omits the whole
  ``<|system|>...</s>`` block (it does not render ``<|system|></s>``).  The card's
  first Orca system message is "<empty system message>", so both renderings are
  plausible; omission is what the card's wording allows and keeps prompts short.
* The literal ``</s>`` is part of the format (after every turn); after an assistant
  answer it is the end-of-turn marker and is trained together with the answer.
  It is matched as the eos special token by Llama tokenizers.
"""
from __future__ import annotations

from reprotune.templates import register
from reprotune.templates.base import Segment, Template

END = "</s>"


class OAsst(Template):
    name = "oasst"
    description = "<|system|>/<|prompter|>/<|assistant|> turns closed by </s> (Open-Assistant, llama2-13b-orca-8k)"
    multi_turn = True
    generation_prompt = "<|assistant|>"
    chat_template = (
        r"{%- for message in messages -%}"
        r"{%- if message['role'] == 'system' -%}"
        r"{%- if message['content'] -%}{{ '<|system|>' + message['content'] + '</s>' }}{%- endif -%}"
        r"{%- elif message['role'] == 'user' -%}"
        r"{{ '<|prompter|>' + message['content'] + '</s>' }}"
        r"{%- elif message['role'] == 'assistant' -%}"
        r"{{ '<|assistant|>' + message['content'] + '</s>' }}"
        r"{%- endif -%}"
        r"{%- endfor -%}"
        r"{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
    )

    def _segments(self, system, turns, input_text, eos) -> list[Segment]:
        segs: list[Segment] = []
        if system:
            segs.append((f"<|system|>{system}{END}", False))
        for t in turns:
            if t["role"] == "user":
                segs.append((f"<|prompter|>{t['content']}{END}", False))
            else:
                segs.append(("<|assistant|>", False))
                segs.append((t["content"] + END, True))
        if turns[-1]["role"] == "user":
            segs.append((self.generation_prompt, False))
        return segs


register(OAsst())
