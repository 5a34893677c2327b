"""The one renderer of every template: transformers' own chat-template machinery.

``render`` runs a template's Jinja source in the sandboxed environment that
``tokenizer.apply_chat_template`` uses (``transformers.utils.chat_template_utils``), with
generation tracking on: besides the text it returns the character spans that the template's
``{% generation %}...{% endgeneration %}`` blocks produced -- the trained parts. Rendering
without tracking (what ``apply_chat_template`` does by default) gives the same text: the tags
only mark, they never change the output.

``check`` is what a template must pass before anything renders with it: Jinja syntax (the
error names its line), at least one ``{% generation %}`` block, and a trial rendering of a
user/assistant conversation without a runtime error (a template may refuse a conversation
with ``raise_exception``: that is a refusal, not a fault).

transformers is imported on first use only (about 0.7 s), so loading a recipe that names a
built-in template does not pay for it.
"""
from __future__ import annotations

import re
from functools import lru_cache

# what transformers itself looks for (render_jinja_template), outside Jinja comments
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
_COMMENT = re.compile(r"\{#.*?#\}", re.S)
_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
          {"role": "assistant", "content": "A"}]


class TemplateError(ValueError):
    """A record that the template cannot render (bad roles, a conversation the format refuses)."""


class TemplateSourceError(ValueError):
    """A template's source is not usable (syntax, no generation block, fails at run time); one line."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _utils():
    from transformers.utils import chat_template_utils

    return chat_template_utils


def _compiled(source: str):
    """The compiled template (transformers' cache), or TemplateSourceError naming the line."""
    import jinja2

    try:
        return _utils()._compile_jinja_template(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateSourceError(f"Jinja syntax error at line {e.lineno}: {_one_line(e.message)}") from None


def render(source: str, messages: list[dict], bos: str, eos: str,
           add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """``(text, spans)``: the rendered conversation and the ``[start, end)`` character spans of
    its generation blocks, in order. ``raise_exception`` in the template is a TemplateError."""
    import jinja2

    try:
        texts, spans = _utils().render_jinja_template(
            conversations=[messages], chat_template=source, return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)
    except jinja2.TemplateError as e:
        if type(e) is jinja2.TemplateError:  # what raise_exception raises: the format refuses
            raise TemplateError(_one_line(e)) from None
        raise TemplateSourceError(f"{type(e).__name__}: {_one_line(e)}") from None
    except Exception as e:  # a template's own fault (e.g. adding a string to a number)
        raise TemplateSourceError(f"{type(e).__name__}: {_one_line(e)}") from None
    return texts[0], [(int(a), int(b)) for a, b in spans[0]]


@lru_cache(maxsize=256)
def check(source: str) -> None:
    """Raise TemplateSourceError when ``source`` cannot serve as a training template."""
    _compiled(source)
    if not _GENERATION.search(_COMMENT.sub("", source)):
        raise TemplateSourceError("no {% generation %} block: the trained part of each assistant turn must "
                                  "sit inside {% generation %}...{% endgeneration %}")
    for messages, prompt in ((_PROBE, False), (_PROBE[:2], True)):
        try:
            render(source, messages, "<s>", "</s>", prompt)
        except TemplateError:
            pass
        except TemplateSourceError as e:
            raise TemplateSourceError(f"fails on a system/user/assistant conversation: {e}") from None


@lru_cache(maxsize=256)
def reads_key(source: str, key: str) -> bool:
    """Whether the template reads ``x[key]`` or ``x.key`` of some object (e.g. a message's ``input``)."""
    from jinja2 import nodes

    tree = _compiled(source).environment.parse(source)
    return (any(isinstance(n.arg, nodes.Const) and n.arg.value == key for n in tree.find_all(nodes.Getitem))
            or any(n.attr == key for n in tree.find_all(nodes.Getattr)))


def leading_comment(source: str) -> str:
    """The text of the Jinja comment the template starts with ('' without one)."""
    m = re.match(r"\s*\{#-?(.*?)-?#\}", source, re.S)
    return m.group(1).strip() if m else ""
