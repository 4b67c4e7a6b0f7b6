"""Conversation templates as segment builders: messages -> [(text, trainable), ...].

A template turns normalised messages (ocellus/data/messages.py) into an ordered list of
Segments. Each segment is a piece of the prompt string plus what it is: part of an assistant
reply (trained) or not, which message it came from, or one image placeholder. encode.py
tokenizes segment by segment, so the loss mask follows the message structure and never has to
be recovered by splitting the rendered string on separators (LLaVA's `preprocess_v1` does that
and drops samples with a "tokenization mismatch" warning when its arithmetic is off).

Built-in templates (sources: haotian-liu/LLaVA llava/conversation.py and llava/train/train.py;
Qwen's ChatML chat template):

`llava_v1`  conv_llava_v1, SeparatorStyle.TWO, sep " ", sep2 "</s>":
    "{system} USER: {u1} ASSISTANT: {a1}</s>USER: {u2} ASSISTANT: {a2}</s>"
    system = "A chat between a curious human and an artificial intelligence assistant. The
    assistant gives helpful, detailed, and polite answers to the human's questions."
    Generation prompt: "... USER: {u} ASSISTANT:". Trained per reply: " {a}</s>". The space
    after "ASSISTANT:" belongs to the reply, as in LLaVA: whole-string tokenisation merges it
    into the reply's first token, and preprocess_v1's `instruction_len - 2` leaves that token
    trained; it also keeps generation prompts ending in "ASSISTANT:" (as LLaVA's do).
`vicuna_v1` conv_vicuna_v1: the same with "curious user ... the user's questions". This is what
    LLaVA-1.5's training scripts use (`--version v1` maps to conv_vicuna_v1).
`llava_v0`  conv_llava_v0, SeparatorStyle.SINGLE, sep "###":
    "{system}###Human: {u1}###Assistant: {a1}###Human: {u2}###Assistant: {a2}###"
    (same system text as llava_v1). Generation prompt: "...###Assistant:". Trained per reply:
    " {a}###" — the separator is the end-of-turn marker. (Original LLaVA trained v0 with a
    different string, "### Human: ...\\n### Assistant: ...\\n", in train.py's generic
    `preprocess`; we follow conversation.py, the format its inference code prompts with.)
`minigpt4`  MiniGPT-4's CONV_VISION_Vicuna0 (Vision-CAIR/MiniGPT-4 minigpt4/conversation/conversation.py),
    llava_v0's SINGLE style with its own system text:
    "{system}###Human: <Img>{image}</Img> {u1}###Assistant: {a1}###"; the <Img>...</Img> around the
    image's query tokens is the processor's image_wrap (the blip2 family's minigpt4 variant).
`chatml`    Qwen's ChatML: "<|im_start|>{role}\\n{content}<|im_end|>\\n" per message, generation
    prompt "<|im_start|>assistant\\n". Trained per reply: "{a}<|im_end|>" — not the role header,
    not the "\\n" after <|im_end|>. Qwen's own templates insert a default system message when
    the conversation has none; here that is an option (`default_system`), off by default;
    `qwen` is chatml with default_system="You are a helpful assistant." (Qwen2 / Qwen2-VL).
`plain`     LLaVA's alignment stage (conv_llava_plain, preprocess_plain): the images of the user
    turn, then the caption, then an end marker; no roles, no system, the user's text dropped
    (LLaVA replaces it with the image token). Trained: "{caption}{end}", end = the tokenizer's
    eos by default (LLaVA-1.5 used sep "\\n"; pass end="\\n" to match it exactly).
`jinja`     the checkpoint's own chat template, see JinjaTemplate.

Images: an image part becomes its own Segment(image=True) holding the placeholder string
(default "<image>"); encode.py expands it into the right number of image-token ids. Parts of a
message are joined verbatim (LLaVA data writes "<image>\\nWhat is ...": the newline is data).

Message text is marked in each Segment's `literal` spans and tokenized as plain text, never into
control tokens: "<|im_end|>" written in a sample is text, as at inference (data/control_tokens.py).
"""
from dataclasses import dataclass
from typing import NamedTuple

from ocellus.data.control_tokens import refuse_control_text, render_with_spans
from ocellus.data.messages import count_images, validate
from ocellus.errors import ConfigError, InputError

LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the human's questions.")
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
QWEN_SYSTEM = "You are a helpful assistant."
MINIGPT4_SYSTEM = ("Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I "
                   "provide it to you. Please answer my questions.")


class Segment(NamedTuple):
    text: str
    trainable: bool = False   # part of an assistant reply: its content and end-of-turn marker
    turn: int | None = None   # index of the message the text comes from; None for template boilerplate
    image: bool = False       # one image placeholder, expanded to tokens_per_image ids by encode
    literal: tuple = ()       # [start, end) spans of text that are message text: tokenized as plain text


def _content(message: dict, turn: int, placeholder: str, trainable: bool = False) -> list[Segment]:
    """A message's parts in order: text segments and one segment per image."""
    return [Segment(placeholder, False, turn, image=True) if p["type"] == "image"
            else Segment(p["text"], trainable, turn, literal=((0, len(p["text"])),)) for p in message["content"]]


def _check_generation_prompt(messages, add_generation_prompt):
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise InputError(f"turn {len(messages) - 1}: add_generation_prompt=True, but the conversation "
                         "already ends with an assistant message")


@dataclass(frozen=True)
class SeparatorTemplate:
    """LLaVA's SINGLE (sep2 == sep) and TWO separator styles: "{system}{sep}" then
    "{role}: {message}" + sep after user turns, + sep2 after assistant turns."""

    name: str
    system: str
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = "</s>"
    bos: bool | None = None  # None: add a BOS when the tokenizer's own post-processor does (Llama/Vicuna)

    @property
    def end_of_turn(self) -> str:
        return self.sep2

    def segments(self, messages, *, add_generation_prompt=False, image_placeholder="<image>") -> list[Segment]:
        validate(messages, alternate=True)
        _check_generation_prompt(messages, add_generation_prompt)
        user, assistant = self.roles
        # A system message replaces the default system text.
        has_system = messages[0]["role"] == "system"
        system = _content(messages[0], 0, image_placeholder) if has_system else [Segment(self.system)]
        out = [*system, Segment(self.sep, turn=0 if has_system else None)]
        for turn, m in enumerate(messages[int(has_system):], start=int(has_system)):
            if m["role"] == "user":
                out += [Segment(f"{user}: ", turn=turn), *_content(m, turn, image_placeholder),
                        Segment(self.sep, turn=turn)]
            else:
                out += [Segment(f"{assistant}:", turn=turn), Segment(" ", True, turn),
                        *_content(m, turn, image_placeholder, trainable=True), Segment(self.sep2, True, turn)]
        if add_generation_prompt:
            out.append(Segment(f"{assistant}:"))
        return out


@dataclass(frozen=True)
class ChatMLTemplate:
    """Qwen's ChatML: <|im_start|>{role}\\n{content}<|im_end|>\\n."""

    name: str = "chatml"
    default_system: str | None = None
    start: str = "<|im_start|>"
    end: str = "<|im_end|>"
    bos: bool | None = None

    @property
    def end_of_turn(self) -> str:
        return self.end

    def segments(self, messages, *, add_generation_prompt=False, image_placeholder="<image>") -> list[Segment]:
        _check_generation_prompt(messages, add_generation_prompt)
        out = []
        if self.default_system is not None and messages[0]["role"] != "system":
            out.append(Segment(f"{self.start}system\n{self.default_system}{self.end}\n"))
        for turn, m in enumerate(messages):
            header = Segment(f"{self.start}{m['role']}\n", turn=turn)
            if m["role"] == "assistant":
                out += [header, *_content(m, turn, image_placeholder, trainable=True),
                        Segment(self.end, True, turn), Segment("\n", turn=turn)]
            else:
                out += [header, *_content(m, turn, image_placeholder), Segment(f"{self.end}\n", turn=turn)]
        if add_generation_prompt:
            out.append(Segment(f"{self.start}assistant\n"))
        return out


@dataclass(frozen=True)
class PlainTemplate:
    """LLaVA stage-1 alignment: image tokens + caption + end, nothing else."""

    end: str
    name: str = "plain"
    bos: bool | None = None

    @property
    def end_of_turn(self) -> str:
        return self.end

    def segments(self, messages, *, add_generation_prompt=False, image_placeholder="<image>") -> list[Segment]:
        roles = [m["role"] for m in messages]
        if add_generation_prompt:  # captioning prompt: just the images
            if roles != ["user"]:
                raise InputError(f"the plain template's generation prompt is one user turn with images, got {roles}")
        elif roles != ["user", "assistant"]:
            raise InputError(f"the plain template needs exactly a user turn (the images) and an assistant turn "
                             f"(the caption), got roles {roles}")
        if count_images(messages[:1]) == 0:
            raise InputError("turn 0: the plain template needs at least one image in the user turn")
        # The user's text is dropped, as in LLaVA's preprocess_plain: only its images remain.
        out = [Segment(image_placeholder, False, 0, image=True) for p in messages[0]["content"] if p["type"] == "image"]
        if not add_generation_prompt:
            out += [*_content(messages[1], 1, image_placeholder, trainable=True), Segment(self.end, True, 1)]
        return out


class JinjaTemplate:
    """The checkpoint's own Jinja chat template, cut into segments by incremental rendering.

    With R(k) = render(messages[:k]) and G(k) = render(messages[:k], add_generation_prompt=True):
    - a user/system message k contributes R(k+1) - R(k) (not trained);
    - an assistant message k contributes the header G(k) - R(k) (not trained) and the body
      R(k+1) - G(k): trained up to and including its end-of-turn marker, the rest (ChatML's
      "\\n" after <|im_end|>) not trained;
    - add_generation_prompt appends G(n) - R(n).
    Each "-" requires the shorter rendering to be a prefix of the longer one. Templates that
    render history differently from the newest turn (e.g. ones that drop earlier reasoning)
    break that, and we raise ConfigError instead of guessing a mask.

    The end-of-turn marker is `end_of_turn` when given, else the last special token (tokenizer
    added token marked special) the template wrote in the body — "<|im_end|>" for ChatML, the
    eos for Llama-2 ("[/INST] {a} </s>"). A body without one is trained whole.

    Image parts: `content_format` "parts" passes them to the template as {"type": "image"}
    parts (multimodal templates render their own placeholder, e.g. Qwen2-VL's
    "<|vision_start|><|image_pad|><|vision_end|>"); "string" joins each message into one string
    with the placeholder inline (text-only templates read message['content'] as a string);
    "auto" decides by rendering a probe message both ways. Either way the placeholder string
    (the image token) is then found in the rendered pieces; the count per message must match.
    """

    bos = False  # the template writes its own BOS text; transformers encodes it with add_special_tokens=False

    def __init__(self, tokenizer, chat_template: str | None = None, end_of_turn: str | None = None,
                 content_format: str = "auto", name: str = "jinja"):
        if content_format not in ("auto", "parts", "string"):
            raise ConfigError(f"content_format must be 'auto', 'parts' or 'string', got {content_format!r}")
        self.name = name
        self.tokenizer = tokenizer
        self.source = tokenizer.get_chat_template(chat_template)  # ConfigError when there is none
        self.end_of_turn = end_of_turn
        self.content_format = self._detect_format() if content_format == "auto" else content_format
        specials = [t.content for t in tokenizer.backend.get_added_tokens_decoder().values() if t.special]
        self._specials = sorted(set(specials), key=len, reverse=True)  # longest first: "<|im_end|>" before "<|im"

    def _render(self, messages, add_generation_prompt=False, turn=None) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                      chat_template=self.source)
        except Exception as e:  # InputError, or a Python error inside the template (e.g. str + list)
            where = "" if turn is None else f"turn {turn}: rendering the conversation up to this turn failed: "
            detail = str(e) if isinstance(e, InputError) else f"chat template failed: {type(e).__name__}: {e}"
            raise InputError(where + detail) from e

    def _detect_format(self) -> str:
        probe = "Xq7 probe"

        def attempt(content):
            try:
                return self._render([{"role": "user", "content": content}])
            except InputError:
                return None
        as_string, as_parts = attempt(probe), attempt([{"type": "text", "text": probe}])
        # a template that reads both forms is given parts (what a multimodal conversation is, and what transformers'
        # processors hand it); one that shows the list's Python repr ("[{'type': 'text', ...}]") reads strings only
        if as_parts is not None and (as_parts == as_string or (probe in as_parts and (
                probe not in (as_string or "") or "'type'" not in as_parts))):
            return "parts"
        if as_string is not None and probe in as_string:
            return "string"
        raise ConfigError("cannot tell whether this chat template reads message content as a string or as parts; "
                          "pass content_format='string' or 'parts'")

    def _template_messages(self, messages, placeholder):
        if self.content_format == "parts":
            return [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image" else p
                                                    for p in m["content"]]} for m in messages]
        return [{"role": m["role"], "content": "".join(placeholder if p["type"] == "image" else p["text"]
                                                       for p in m["content"])} for m in messages]

    def _diff(self, shorter: str, longer: str, what: str) -> str:
        if not longer.startswith(shorter):
            raise ConfigError(
                f"chat template is not prefix-stable at {what}: rendering the shorter conversation is not a "
                f"prefix of rendering the longer one, so segments (and the loss mask) cannot be derived from it. "
                f"Use a built-in template, or one that renders history the same way as the newest turn.\n"
                f"  shorter ends: {shorter[-80:]!r}\n"
                f"  longer has:   {longer[max(0, len(shorter) - 80):len(shorter) + 40]!r}")
        return longer[len(shorter):]

    def _split_end(self, body: str, image_placeholder: str) -> int:
        """Index just past the end-of-turn marker in an assistant body (len(body) if none)."""
        markers = [self.end_of_turn] if self.end_of_turn else [t for t in self._specials if t != image_placeholder]
        ends = [body.rfind(m) + len(m) for m in markers if m and body.rfind(m) >= 0]
        if self.end_of_turn and not ends:
            raise ConfigError(f"end_of_turn {self.end_of_turn!r} does not occur in a rendered assistant turn: {body!r}")
        return max(ends) if ends else len(body)

    def segments(self, messages, *, add_generation_prompt=False, image_placeholder="<image>") -> list[Segment]:
        _check_generation_prompt(messages, add_generation_prompt)
        if messages[0]["role"] == "assistant":
            raise InputError("turn 0: the jinja template mode needs the conversation to start with a system or "
                             "user message")
        msgs = self._template_messages(messages, image_placeholder)
        pieces = []  # (text, trainable, turn)
        previous = ""
        for k, m in enumerate(msgs):
            full = self._render(msgs[:k + 1], turn=k)
            if m["role"] == "assistant":
                prompted = self._render(msgs[:k], add_generation_prompt=True, turn=k)
                header = self._diff(previous, prompted, f"the generation prompt before turn {k}")
                body = self._diff(prompted, full, f"turn {k} (its generation prompt is not how the turn starts)")
                cut = self._split_end(body, image_placeholder)
                pieces += [(header, False, k), (body[:cut], True, k), (body[cut:], False, k)]
            else:
                pieces.append((self._diff(previous, full, f"turn {k}"), False, k))
            previous = full
        if add_generation_prompt:
            pieces.append((self._diff(previous, self._render(msgs, add_generation_prompt=True, turn=len(msgs) - 1),
                                      "the final generation prompt"), False, None))
        return self._split_images(pieces, messages, image_placeholder, self._text_spans(msgs, add_generation_prompt))

    def _text_spans(self, msgs, add_generation_prompt) -> list[tuple[int, int]]:
        """Spans of message text in the whole rendering (which the pieces concatenate to)."""
        _, spans = render_with_spans(lambda m: self._render(m, add_generation_prompt=add_generation_prompt), msgs)
        return spans if spans is not None else refuse_control_text(self.tokenizer, msgs)

    def _split_images(self, pieces, messages, placeholder, spans=()) -> list[Segment]:
        """Cut the rendered pieces at the image placeholder into text and image segments; `spans` (message text
        in the whole rendering) become each segment's own literal spans."""
        out, found, at = [], [0] * len(messages), 0
        for text, trainable, turn in pieces:
            for j, chunk in enumerate(text.split(placeholder)):
                if j > 0:
                    out.append(Segment(placeholder, False, turn, image=True))
                    if turn is None:
                        raise ConfigError(f"the chat template wrote the image token {placeholder!r} outside "
                                          "any message")
                    found[turn] += 1
                    at += len(placeholder)
                if chunk:
                    own = tuple((max(a, at) - at, min(b, at + len(chunk)) - at) for a, b in spans
                                if a < at + len(chunk) and at < b)
                    out.append(Segment(chunk, trainable, turn, literal=own))
                at += len(chunk)
        for turn, m in enumerate(messages):
            if found[turn] != count_images([m]):
                raise ConfigError(
                    f"turn {turn}: the chat template rendered {found[turn]} image token(s) {placeholder!r} for "
                    f"{count_images([m])} image part(s); is image_token the placeholder this template writes?")
        return out


def get_template(template, tokenizer=None, **options):
    """A template by name ("llava_v0", "llava_v1", "vicuna_v1", "chatml", "qwen", "plain",
    "jinja"), or a template object passed through. `options` override its fields, e.g.
    get_template("chatml", default_system="..."), get_template("plain", end="\\n"),
    get_template("jinja", tok, end_of_turn="<|eot_id|>")."""
    if not isinstance(template, str):
        if options:
            raise ConfigError("options are for templates given by name")
        return template
    if template == "llava_v1":
        return SeparatorTemplate(**{"name": "llava_v1", "system": LLAVA_SYSTEM, **options})
    if template == "vicuna_v1":
        return SeparatorTemplate(**{"name": "vicuna_v1", "system": VICUNA_SYSTEM, **options})
    if template == "llava_v0":
        return SeparatorTemplate(**{"name": "llava_v0", "system": LLAVA_SYSTEM, "roles": ("Human", "Assistant"),
                                    "sep": "###", "sep2": "###", **options})
    if template == "minigpt4":
        return SeparatorTemplate(**{"name": "minigpt4", "system": MINIGPT4_SYSTEM, "roles": ("Human", "Assistant"),
                                    "sep": "###", "sep2": "###", **options})
    if template == "chatml":
        return ChatMLTemplate(**options)
    if template == "qwen":
        return ChatMLTemplate(**{"name": "qwen", "default_system": QWEN_SYSTEM, **options})
    if template == "plain":
        if "end" not in options:
            eos = tokenizer.special_tokens_map.get("eos_token") if tokenizer is not None else None
            if eos is None:
                raise ConfigError("the plain template ends each caption with the eos token, but the tokenizer has "
                                  "none (or none was given): pass end=...")
            options["end"] = eos
        return PlainTemplate(**options)
    if template == "jinja":
        if tokenizer is None:
            raise ConfigError("the jinja template mode needs the tokenizer (it renders the tokenizer's chat template)")
        return JinjaTemplate(tokenizer, **options)
    raise ConfigError(f"unknown template {template!r}: expected one of {', '.join(TEMPLATES)}, or a template object")


TEMPLATES = ("llava_v0", "llava_v1", "vicuna_v1", "minigpt4", "chatml", "qwen", "plain", "jinja")


def render(segments) -> str:
    """The prompt string a segment list stands for (one placeholder per image)."""
    return "".join(s.text for s in segments)
