"""Alpaca-style format as used for Platypus (garage-bAInd), single turn::

    ### Instruction:\\n\\n{instruction}\\n\\n### Response:\\n{output}</s>

Decisions:

* No "Below is an instruction that describes a task..." preamble: the Platypus
  model cards publish the prompt as ``### Instruction:\\n\\n<prompt>\\n\\n### Response:``
  without it, and that is the prompt users query these models with.
* With a non-empty input: ``### Input:\\n\\n{input}\\n\\n`` between the instruction and
  the response (same blank-line style as the instruction block).
* A non-empty system prompt (e.g. Dolphin/OpenOrca rows mixed into a Platypus
  adapter) takes the place of the preamble: ``{system}\\n\\n`` before
  ``### Instruction:``; an empty one renders nothing.
* The tokenizer eos follows the response and is trained.  Single-turn only.
"""
from __future__ import annotations

from reprotune.templates import register
from reprotune.templates.base import Segment, Template, instruction_segments


class Alpaca(Template):
    name = "alpaca"
    description = "### Instruction / [### Input] / ### Response, no preamble, single turn (Platypus)"
    multi_turn = False
    has_input_block = True
    generation_prompt = "### Response:\n"
    chat_template = (
        r"{%- set ns = namespace(users=0) -%}"
        r"{%- for message in messages -%}"
        r"{%- if message['role'] == 'user' -%}{%- set ns.users = ns.users + 1 -%}{%- endif -%}"
        r"{%- endfor -%}"
        r"{%- if ns.users > 1 -%}{{ raise_exception('alpaca is a single-turn format') }}{%- endif -%}"
        r"{%- for message in messages -%}"
        r"{%- if message['role'] == 'system' -%}"
        r"{%- if message['content'] -%}{{ message['content'] + '\n\n' }}{%- endif -%}"
        r"{%- elif message['role'] == 'user' -%}"
        r"{{ '### Instruction:\n\n' + message['content'] + '\n\n' }}"
        r"{%- if message['input'] -%}{{ '### Input:\n\n' + message['input'] + '\n\n' }}{%- endif -%}"
        r"{%- elif message['role'] == 'assistant' -%}"
        r"{{ '### Response:\n' + message['content'] + eos_token }}"
        r"{%- endif -%}"
        r"{%- endfor -%}"
        r"{%- if add_generation_prompt -%}{{ '### Response:\n' }}{%- endif -%}"
    )

    def _segments(self, system, turns, input_text, eos) -> list[Segment]:
        return instruction_segments(f"{system}\n\n" if system else "", "### Instruction:\n\n", "### Input:\n\n",
                                    "\n\n", turns, input_text, eos, self.generation_prompt)


register(Alpaca())
