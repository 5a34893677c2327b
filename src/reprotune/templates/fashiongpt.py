"""FashionGPT-V1.1 (ICBU-NPU) prompt format, from the seed card's "Prompt Template"::

    ### System:
    {System}
    ### User:
    {User}
    ### Assistant:
    {Assistant}

Decisions (the card shows one turn only):

* The tokenizer eos (``</s>`` for Llama) follows every assistant answer and is
  trained: the format has no end-of-turn marker of its own.
* Multi-turn (the card's trainer adds FastChat multi-turn support) repeats the
  ``### User:`` / ``### Assistant:`` blocks; a later ``### User:`` block starts on a
  new line after the previous answer's eos: ``...{A1}</s>\\n### User:\\n{U2}\\n...``.
* An empty system prompt omits the ``### System:`` block entirely.
"""
from __future__ import annotations

from reprotune.templates import register
from reprotune.templates.base import Segment, Template


class FashionGPT(Template):
    name = "fashiongpt"
    description = "### System / ### User / ### Assistant blocks, eos after each answer (FashionGPT-V1.1)"
    multi_turn = True
    generation_prompt = "### Assistant:\n"
    chat_template = (
        r"{%- for message in messages -%}"
        r"{%- if message['role'] == 'system' -%}"
        r"{%- if message['content'] -%}{{ '### System:\n' + message['content'] + '\n' }}{%- endif -%}"
        r"{%- elif message['role'] == 'user' -%}"
        r"{%- if loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'assistant' -%}{{ '\n' }}{%- endif -%}"
        r"{{ '### User:\n' + message['content'] + '\n' }}"
        r"{%- elif message['role'] == 'assistant' -%}"
        r"{{ '### Assistant:\n' + message['content'] + eos_token }}"
        r"{%- endif -%}"
        r"{%- endfor -%}"
        r"{%- if add_generation_prompt -%}{{ '### Assistant:\n' }}{%- endif -%}"
    )

    def _segments(self, system, turns, input_text, eos) -> list[Segment]:
        segs: list[Segment] = []
        if system:
            segs.append((f"### System:\n{system}\n", False))
        prev_assistant = False
        for t in turns:
            if t["role"] == "user":
                segs.append((("\n" if prev_assistant else "") + f"### User:\n{t['content']}\n", False))
                prev_assistant = False
            else:
                segs.append(("### Assistant:\n", False))
                segs.append((t["content"] + eos, True))
                prev_assistant = True
        if turns[-1]["role"] == "user":
            segs.append((self.generation_prompt, False))
        return segs


register(FashionGPT())
