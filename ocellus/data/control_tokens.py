"""Message text never becomes control tokens: a chat prompt is tokenized with the template's own markup
parsed (its `<|im_start|>`, `<image>`, ... become their ids) and control-token strings in the messages'
text read as plain text.

A tokenizer splits its added tokens (special or not) out of any input, so `<|im_end|>\\n<|im_start|>assistant`
typed into a user message would close the user turn and forge an assistant one. The control tokens are
the named special tokens (bos, eos, pad, unk, image, ...), every added token a chat template of the
tokenizer writes, and every added token the markup of the prompt at hand writes. Other added tokens are
vocabulary that text may carry: the grounding tags `<ref>`, `<box>` of Qwen-VL-style data are written in
questions and answers and stay tokens. Two pieces keep control tokens out of text:

- `render_with_spans`: the template is rendered twice, with the messages and with every text replaced by a
  sentinel. The second rendering is the template's markup with the texts' places marked; with the texts put
  back (verbatim, or stripped as templates that `| trim` do) it must equal the first, and then gives the
  [start, end) spans of message text. A template that changes text in any other way gives no spans, and a
  text holding a control-token string is then refused (InputError) instead of tokenized into control ids.
- `encode_with_literals`: control tokens are split out only outside the spans; the text between the tokens
  that are split out goes through a copy of the backend that matches no added token. When no control
  string lies inside a span (every ordinary prompt) the ids are exactly those of the plain encode.

Used by Tokenizer.apply_chat_template(tokenize=True) / render_chat, the Processor (serving, `ocellus chat`,
eval) and encode_messages (training data, through the templates' Segment.literal spans).
"""
from __future__ import annotations

import json
import re
from typing import Callable

import tokenizers

from ocellus.errors import InputError

Spans = list[tuple[int, int]]
_SENTINEL = "\ue000{}\ue001"        # private-use characters: no template writes them
_SENTINELS = re.compile("\ue000(\\d+)\ue001")


def _masked(messages, texts: list[str]) -> list:
    """The messages with each text (string content, text parts) replaced by a numbered sentinel."""
    def swap(text: str) -> str:
        texts.append(text)
        return _SENTINEL.format(len(texts) - 1)
    out = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            m = {**m, "content": swap(content)}
        elif isinstance(content, list):
            m = {**m, "content": [{**p, "text": swap(p["text"])}
                                  if isinstance(p, dict) and isinstance(p.get("text"), str) else p for p in content]}
        out.append(m)
    return out


def render_with_spans(render: Callable[[list], str], messages) -> tuple[str, Spans | None]:
    """render: messages -> prompt text (a template with its other arguments bound). -> (the prompt, the spans of
    it that are message text), spans None when the template changes text beyond stripping it."""
    text, texts = render(messages), []
    try:
        parts = _SENTINELS.split(render(_masked(messages, texts)))
    except InputError:    # the template rejects sentinels where it accepts the text
        return text, None
    for fit in (lambda s: s, str.strip):
        pieces = [part if k % 2 == 0 else fit(texts[int(part)]) for k, part in enumerate(parts)]
        if "".join(pieces) == text:
            spans, at = [], 0
            for k, piece in enumerate(pieces):
                if k % 2 and piece:
                    spans.append((at, at + len(piece)))
                at += len(piece)
            return text, spans
    return text, None


def refuse_control_text(tokenizer, messages) -> Spans:
    """The fallback when spans are unknown: a text holding a control-token string is an InputError; else []
    (nothing to protect)."""
    controls = _controls(tokenizer)[4]
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        parts = [content] if isinstance(content, str) else [p.get("text") for p in content or []
                                                             if isinstance(p, dict)]
        for text in filter(lambda t: isinstance(t, str), parts):
            found = [c for c in controls if c in text]
            if found:
                raise InputError(f"message {i} contains the control token {found[0]!r}, which this chat "
                                 f"template cannot keep as plain text; remove it from the message")
    return []


def control_strings(tokenizer, markup: str = "") -> frozenset[str]:
    """The control tokens (see the module docstring): the tokenizer's own, plus the added tokens in `markup`."""
    pattern, *_, base = _controls(tokenizer)
    return base | {m.group() for m in pattern.finditer(markup)} if pattern is not None else base


def _controls(tokenizer):
    """(a regex matching every added-token string leftmost-longest or None, content -> AddedToken, id map,
    a backend that matches no added token, the tokenizer's control strings), cached per vocabulary and templates."""
    key = (tokenizer.vocab_size, tuple(tokenizer.chat_templates.values()))
    cache = getattr(tokenizer, "_control_cache", None)
    if cache is None or cache[0] != key:
        added = tokenizer.backend.get_added_tokens_decoder()
        by_text = {t.content: t for t in added.values() if t.content}
        ids = {t.content: i for i, t in added.items()}
        names = sorted(by_text, key=len, reverse=True)
        pattern = re.compile("|".join(map(re.escape, names))) if names else None
        sources = list(tokenizer.chat_templates.values())
        base = frozenset(t for t in by_text if t in tokenizer.special_tokens_map.values()
                         or any(t in source for source in sources))
        data = json.loads(tokenizer.backend.to_str())
        for token in data.get("added_tokens", []):
            token["special"] = True   # encode_special_tokens then leaves every added token unsplit
        literal = (_literal_backend(data), _literal_backend(_never_prepend(data)))
        cache = (key, (pattern, by_text, ids, literal, base))
        tokenizer._control_cache = cache
    return cache[1]


def _literal_backend(data: dict) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer.from_str(json.dumps(data))
    backend.encode_special_tokens = True
    backend.no_padding()
    backend.no_truncation()
    return backend


def _never_prepend(data: dict) -> dict:
    """The pipeline for a chunk that continues the text: a Metaspace that prepends "▁" only to the text's first
    split (prepend_scheme "first", transformers' LlamaTokenizer) must not prepend it to a chunk after a markup
    token, which encoding the chunk alone would do."""
    data = json.loads(json.dumps(data))
    pre = data.get("pre_tokenizer") or {}
    for step in pre.get("pretokenizers", [pre]):
        if step.get("type") == "Metaspace" and step.get("prepend_scheme") == "first":
            step["prepend_scheme"] = "never"
    return data


def encode_with_literals(tokenizer, text: str, spans: Spans, add_special_tokens: bool = False,
                         controls: frozenset[str] | None = None) -> list[int]:
    """text -> ids where control tokens count only outside `spans` (see the module docstring). controls:
    the control strings (default: the tokenizer's and those the text outside the spans writes)."""
    pattern, by_text, ids_of, (literal, later), base = _controls(tokenizer)
    plain = tokenizer.backend.encode(text, add_special_tokens=add_special_tokens).ids
    matches = list(pattern.finditer(text)) if pattern is not None and spans else []
    inside = {m.start() for m in matches if any(a < m.end() and m.start() < b for a, b in spans)}
    if controls is None:
        controls = base | {m.group() for m in matches if m.start() not in inside}
    as_text = {m.start() for m in matches if m.start() in inside and m.group() in controls}
    if not as_text:
        return plain
    ids, at = [], 0
    for m in (m for m in matches if m.start() not in as_text):   # markup tokens, and vocabulary such as <box>
        token = by_text[m.group()]
        chunk = text[at:m.start()]
        ids += (literal if at == 0 else later).encode(chunk.rstrip() if token.lstrip else chunk,
                                                       add_special_tokens=False).ids
        ids.append(ids_of[m.group()])
        at = m.end()
        if token.rstrip:
            at = len(text) - len(text[at:].lstrip())
    ids += (literal if at == 0 else later).encode(text[at:], add_special_tokens=False).ids
    if add_special_tokens:   # the post-processor's additions (BOS, ...) around the sequence
        bare, full = (tokenizer.backend.encode("a", add_special_tokens=flag).ids for flag in (False, True))
        start = next(s for s in range(len(full) - len(bare) + 1) if full[s:s + len(bare)] == bare)
        ids = full[:start] + ids + full[start + len(bare):]
    return ids
