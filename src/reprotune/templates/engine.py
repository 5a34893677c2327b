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

Speed: transformers' ``render_jinja_template`` costs ~60 us per conversation (it converts the
messages, builds its context and tracks blocks through a shared extension), several times the
Jinja render itself. The data path renders every training row, so ``render`` uses a compiled
template of its own (:func:`_fast`): the same sandboxed Jinja environment settings
(``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, ``raise_exception``, ``tojson``), with
``{% generation %}`` blocks wrapped in two private-use marker characters that are cut out after
rendering, their positions being the spans (the markers are plain output around the block's body,
not a macro call per block, unless the body needs a scope of its own: :class:`_Generation`).
``check`` proves, per template, that this gives the
text and spans of transformers' renderer on several conversations, and a conversation whose text
contains a marker character goes through transformers' renderer (tests compare the two on every
built-in over many records).

transformers is imported on first use only (about 0.7 s), so loading a recipe that names a
built-in template does not pay for it.
"""
from __future__ import annotations

import re
from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.runtime import new_context

# what transformers itself looks for (render_jinja_template), outside Jinja comments
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
_COMMENT = re.compile(r"\{#.*?#\}", re.S)
_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
          {"role": "assistant", "content": "A"}]
_PROBE_LONG = _PROBE + [{"role": "user", "content": "U2 {{ x }}"}, {"role": "assistant", "content": " A2\n"}]


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
    try:
        return _utils()._compile_jinja_template(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateSourceError(f"Jinja syntax error at line {e.lineno}: {_one_line(e.message)}") from None


OPEN, CLOSE = "\ue000", "\ue001"  # private-use characters marking a generation block's output


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body between OPEN and CLOSE.

    transformers makes the block a call block (its body a caller macro: a scope of its own). Here
    the markers are plain output around the body, in the enclosing scope, which renders the same
    text at half the cost of a macro call per block; a body whose meaning depends on that scope
    (:func:`_scoped`) keeps the call block."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        if _scoped(body):
            return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)
        return [jinja2.nodes.Output([jinja2.nodes.TemplateData(OPEN)]).set_lineno(lineno), *body,
                jinja2.nodes.Output([jinja2.nodes.TemplateData(CLOSE)]).set_lineno(lineno)]

    def _mark(self, caller):
        return OPEN + caller() + CLOSE


_MACRO_NAMES = frozenset({"caller", "varargs", "kwargs"})  # names a caller macro's body binds itself


def _scoped(body: list) -> bool:
    """Whether a generation block's body would mean something else outside a scope of its own: it
    assigns a plain name (``{% set x %}``: local to the block in transformers', seen after it
    here), defines a macro or call block, or reads a name a macro binds."""
    nodes = jinja2.nodes
    for n in nodes.Scope(body).find_all((nodes.Assign, nodes.AssignBlock, nodes.Macro, nodes.CallBlock, nodes.Name)):
        if isinstance(n, (nodes.Macro, nodes.CallBlock)):
            return True
        if isinstance(n, nodes.Name):
            if n.name in _MACRO_NAMES:
                return True
        elif isinstance(n.target, nodes.Name) or any(True for _ in n.target.find_all(nodes.Name)):
            return True
    return False


def _raise(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    import json

    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=64)
def _fast(source: str):
    """``source`` compiled in a sandboxed environment with the marking generation extension, and a
    copy of its globals (:func:`_render_fast` builds each context from it)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, dict=dict)
    template = env.from_string(source)
    return template, dict(template.globals)


def _render_fast(source: str, variables: dict) -> str:
    """``Template.render(**variables)`` of :func:`_fast`'s template, without its per-call copy of
    the globals (a ChainMap read key by key, twice): the context is the globals, copied once, plus
    the variables; the same output and the same exceptions (render only rewrites their tracebacks).
    The context's record of which names are globals (``globals_keys``) only serves ``{% import %}``,
    which a template without a loader cannot do, so it is left empty."""
    template, globals_ = _fast(source)
    context = new_context(template.environment, template.name, template.blocks, {**globals_, **variables}, True)
    return "".join(template.root_render_func(context))


def _unmark(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """Cut the markers out: the plain text and the spans they enclosed (an OPEN starts a span,
    the next CLOSE ends the span begun by the last OPEN). Markers are found with ``str.find``
    (a regex scan of the whole text costs several times more)."""
    text, spans, length, start, at = [], [], 0, 0, 0
    o, c = marked.find(OPEN), marked.find(CLOSE)
    while o >= 0 or c >= 0:
        is_open = c < 0 or 0 <= o < c
        m = o if is_open else c
        piece = marked[at:m]
        text.append(piece)
        length += len(piece)
        if is_open:
            start = length
            o = marked.find(OPEN, m + 1)
        else:
            spans.append((start, length))
            c = marked.find(CLOSE, m + 1)
        at = m + 1
    text.append(marked[at:])
    return "".join(text), spans


def _marked(messages: list[dict], bos: str, eos: str) -> bool:
    """Whether any string the template is given holds a marker character."""
    for v in (bos, eos):
        if v and (OPEN in v or CLOSE in v):
            return True
    for m in messages:
        for v in m.values():
            if isinstance(v, str) and (OPEN in v or CLOSE in v):
                return True
    return False


def render(source: str, messages: list[dict], bos: str, eos: str,
           add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """``(text, spans)``: the rendered conversation and the ``[start, end)`` character spans of
    its generation blocks, in order. ``raise_exception`` in the template is a TemplateError."""
    if _marked(messages, bos, eos):
        return render_reference(source, messages, bos, eos, add_generation_prompt)
    try:  # not a context manager: entering one costs more than a tenth of this render
        marked = _render_fast(source, {"messages": messages, "bos_token": bos, "eos_token": eos,
                                       "add_generation_prompt": add_generation_prompt})
    except Exception as e:
        raise _render_error(e) from None
    return _unmark(marked)


def _render_error(e: Exception) -> Exception:
    """A template's ``raise_exception`` is the format refusing the record (TemplateError); any
    other failure is the template's own fault (TemplateSourceError, e.g. a string plus a number)."""
    if type(e) is jinja2.TemplateError:  # what raise_exception raises
        return TemplateError(_one_line(e))
    return TemplateSourceError(f"{type(e).__name__}: {_one_line(e)}")


def render_reference(source: str, messages: list[dict], bos: str, eos: str,
                     add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """:func:`render` through transformers' own renderer (``render_jinja_template`` with
    generation tracking): the reference the fast path is checked against."""
    try:
        texts, spans = _utils().render_jinja_template(
            conversations=[messages], chat_template=source, return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos)
    except Exception as e:
        raise _render_error(e) from None
    return texts[0], [(int(a), int(b)) for a, b in spans[0]]


@lru_cache(maxsize=256)
def check(source: str) -> None:
    """Raise TemplateSourceError when ``source`` cannot serve as a training template."""
    _compiled(source)
    if not _GENERATION.search(_COMMENT.sub("", source)):
        raise TemplateSourceError("no {% generation %} block: the trained part of each assistant turn must "
                                  "sit inside {% generation %}...{% endgeneration %}")
    for messages, prompt in ((_PROBE, False), (_PROBE[:2], True), (_PROBE_LONG, False), (_PROBE_LONG[1:], False)):
        try:
            reference = render_reference(source, messages, "<s>", "</s>", prompt)
        except TemplateError:
            continue
        except TemplateSourceError as e:
            raise TemplateSourceError(f"fails on a system/user/assistant conversation: {e}") from None
        if render(source, messages, "<s>", "</s>", prompt) != reference:
            raise TemplateSourceError("renders differently in reprotune's renderer than in transformers' "
                                      "(a template construct the fast path does not reproduce)")


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
