"""Chat-template rendering: messages -> the prompt string a chat model was trained on.

Checkpoints ship their prompt format as a Jinja template (tokenizer_config.json's
`chat_template` or chat_template.jinja). We render it in the same environment transformers
uses (transformers/utils/chat_template_utils.py, `_compile_jinja_template` and
`render_jinja_template`), so the text is byte-identical to `tokenizer.apply_chat_template`:

- an ImmutableSandboxedEnvironment (templates come from the Hub: untrusted code) with
  trim_blocks, lstrip_blocks and the loopcontrols extension ({% break %}, {% continue %});
- globals `raise_exception(msg)`, `strftime_now(fmt)` and a `namespace` that refuses underscore names;
  a `tojson` filter that does not HTML-escape and accepts indent/separators/sort_keys (Jinja's own one
  escapes `<`, `>`, `&`);
- a `{% generation %}...{% endgeneration %}` tag (used by some templates to mark assistant
  text for loss masks), rendered here as its body;
- `tools` and `documents` always defined (None when absent), since templates test
  `tools is not none`, which an undefined variable would pass.
"""

import dataclasses
import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ocellus.errors import ConfigError, InputError


class _TemplateRaised(Exception):
    """What `raise_exception` throws inside the template; turned into InputError by the caller."""


def _raise_exception(message):
    raise _TemplateRaised(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Same signature and defaults as transformers' override: no HTML escaping, non-ASCII kept.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's `namespace` refusing underscore names (`ns.__class__ = ...`), as transformers' TemplateNamespace:
    a template from the Hub stores nothing where Python keeps its machinery."""

    def __init__(*args, **kwargs):   # noqa: N805  (Namespace's own signature: self may be a keyword's name)
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not store {name!r} on a namespace: "
                                                  "underscore names are refused")


class _GenerationTag(jinja2.ext.Extension):
    """Parses `{% generation %}body{% endgeneration %}` and renders just the body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


@lru_cache(maxsize=32)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile once per distinct template string (rendering is per request)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"chat template does not parse (line {e.lineno}): {e.message}") from e


def _plain(value: Any) -> Any:
    """Rebuild template inputs from plain JSON-like types, as transformers does.

    Messages may carry rich objects (a PIL image in an {"type": "image", "image": ...} part).
    The sandbox does not know which of their methods are dangerous, and templates only test
    whether such keys exist, so anything that is not plain data becomes "<TypeName>".
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (bool, str, int, float):  # subclasses (enums, numpy scalars) lose their methods
        if isinstance(value, base):
            return base(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return _plain(value.item())  # numpy / torch scalars
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return f"<{type(value).__name__}>"


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _prepare_messages(messages) -> list[dict]:
    """Drop None-valued keys (OpenAI clients send content=None) and alias reasoning fields,
    matching transformers' apply_chat_template + render_jinja_template."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InputError(f"message {i} must be a dict with 'role' and 'content', got {type(message).__name__}")
        message = _plain({k: v for k, v in message.items() if v is not None})
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:  # templates read `reasoning_content`; gpt-oss's reads `thinking`
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def render_chat_template(
    template: str,
    messages: list[dict],
    add_generation_prompt: bool = False,
    bos_token: str | None = None,
    eos_token: str | None = None,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    continue_final_message: bool | str = False,
    **extra,
) -> str:
    """Render `messages` with a chat template. `extra` (other special tokens such as
    `pad_token`, or template switches like `enable_thinking`) is passed to the template.
    continue_final_message (True: the last message's content, or the name of its field to continue): the prompt
    ends inside the last message, after its text (an assistant reply prefilled), as in transformers.

    Raises InputError when the template calls raise_exception (e.g. roles do not alternate)
    or fails on the given messages, ConfigError when the template itself does not parse."""
    if tools is not None and not all(isinstance(t, dict) for t in tools):
        raise InputError("tools must be JSON-schema dicts ({'type': 'function', 'function': {...}})")
    # An absent special token stays *undefined* (renders as ""), as in transformers; None would print "None".
    tokens = {k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None}
    compiled = compile_chat_template(template)
    messages = _prepare_messages(messages)
    if continue_final_message:
        if add_generation_prompt:
            raise InputError("continue_final_message and add_generation_prompt exclude each other: the first ends "
                             "the prompt inside the last message, the second opens a new one")
        messages, final = _tag_final_message(messages, continue_final_message, template)
    try:
        text = compiled.render(
            messages=messages,
            tools=_plain(tools),
            documents=_plain(documents),
            add_generation_prompt=add_generation_prompt,
            **_plain({**tokens, **extra}),
        )
    except _TemplateRaised as e:
        raise InputError(f"chat template rejected the messages: {e}") from None
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        # Python errors inside a template (e.g. `str + list` when a string-only template gets
        # content parts) are the messages not fitting the template: the caller's input
        raise InputError(f"chat template failed on the messages: {type(e).__name__}: {e}") from e
    return _cut_at_tag(text, final) if continue_final_message else text


# Appended to the continued message's text: the rendered prompt is cut where it appears (transformers' tag).
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _tag_final_message(messages: list[dict], field: bool | str, template: str) -> tuple[list[dict], str]:
    """(messages with the tag after the last message's text, that text), as transformers' render_jinja_template:
    field True continues `content` (its last text part when it is a list of parts), a str names the field."""
    field = field if isinstance(field, str) else "content"
    last = dict(messages[-1])
    final = last.get(field)
    if final is None:
        raise InputError(f'continue_final_message: the last message has no "{field}" to continue')
    fields = [f for f in _REASONING_FIELDS if last.get(f) == final] if field in _REASONING_FIELDS else [field]
    if not any(f in template for f in fields):
        raise InputError(f'continue_final_message: the chat template never reads "{field}"')
    if isinstance(final, (list, tuple)):
        parts = [dict(p) if isinstance(p, dict) else p for p in final]
        text_parts = [p for p in parts if isinstance(p, dict) and "text" in p]
        if not text_parts:
            raise InputError("continue_final_message: the last message has no text part to continue")
        final = text_parts[-1]["text"]
        text_parts[-1]["text"] = final + _CONTINUE_TAG
        last[field] = parts
    elif isinstance(final, str):
        last.update({f: last[f] + _CONTINUE_TAG for f in fields})
    else:
        raise InputError(f'continue_final_message: the last message\'s "{field}" is a {type(final).__name__}, '
                         "neither text nor a list of parts")
    return [*messages[:-1], last], final


def _cut_at_tag(text: str, final: str) -> str:
    """The rendered prompt up to the end of the continued text (its trailing space too, unless the template
    stripped it)."""
    tag = _CONTINUE_TAG.strip()
    if final.strip() not in text or tag not in text:
        raise InputError("continue_final_message: the chat template changes the last message's text, so the "
                         "prompt cannot end inside it")
    at = text.rindex(tag)
    return text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
