"""orca_mini (psmathur) format, from the seed card's ``generate_text``::

    ### System:\\n{system}\\n\\n### User:\\n{instruction}\\n\\n### Input:\\n{input}\\n\\n### Response:\\n

The ``### Input:`` block appears only when the input is non-empty (``if input:`` in
the card).  The ``### System:`` block is always present, also with an empty system
prompt, exactly as the card's code builds it.  The tokenizer eos follows the
response and is trained (the format has no end marker of its own).  Single-turn
only: a record with more than one user turn is a ``TemplateError``.
"""
from __future__ import annotations

from reprotune.templates import register
from reprotune.templates.base import Segment, Template, instruction_segments


class OrcaMini(Template):
    name = "orca_mini"
    description = "### System / ### User / [### Input] / ### Response, single turn (orca_mini)"
    multi_turn = False
    has_input_block = True
    generation_prompt = "### Response:\n"
    chat_template = (
        r"{%- set ns = namespace(system='', users=0) -%}"
        r"{%- for message in messages -%}"
        r"{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}"
        r"{%- elif message['role'] == 'user' -%}{%- set ns.users = ns.users + 1 -%}{%- endif -%}"
        r"{%- endfor -%}"
        r"{%- if ns.users > 1 -%}{{ raise_exception('orca_mini is a single-turn format') }}{%- endif -%}"
        r"{{ '### System:\n' + ns.system + '\n\n' }}"
        r"{%- for message in messages -%}"
        r"{%- if message['role'] == 'user' -%}"
        r"{{ '### User:\n' + message['content'] + '\n\n' }}"
        r"{%- if message['input'] -%}{{ '### Input:\n' + message['input'] + '\n\n' }}{%- endif -%}"
        r"{%- elif message['role'] == 'assistant' -%}"
        r"{{ '### Response:\n' + message['content'] + eos_token }}"
        r"{%- endif -%}"
        r"{%- endfor -%}"
        r"{%- if add_generation_prompt -%}{{ '### Response:\n' }}{%- endif -%}"
    )

    def _segments(self, system, turns, input_text, eos) -> list[Segment]:
        return instruction_segments(f"### System:\n{system}\n\n", "### User:\n", "### Input:\n", "\n\n",
                                    turns, input_text, eos, self.generation_prompt)


register(OrcaMini())
