"""Structured messages -> (input_ids, labels): the loss mask comes from the message structure.

    messages --normalize--> parts --template--> [Segment(text, trainable, turn, image)]
             --tokenize each segment--> ids, labels (-100 where not trained)

Each segment is tokenized on its own (add_special_tokens=False) and the ids are concatenated,
so every label boundary is a token boundary by construction: there is no arithmetic over
re-tokenized substrings to go wrong (LLaVA's preprocess_v1 does that, and when it goes wrong it
masks the whole sample with a "tokenization mismatch" warning). Three details keep the ids
equal to what tokenizing the whole rendered string would give:
- adjacent non-trained text segments are tokenized as one string (and the pieces of one reply
  too), so segment borders fall only at reply borders and images;
- a segment that does not start the sequence is encoded behind a special "anchor" token that is
  then dropped: SentencePiece-style tokenizers (Metaspace, prepend_scheme="first") add their
  "▁" word-start marker only at the start of an input, and a fresh encode() would add one at
  every segment;
- after concatenation the ids are decoded and compared with the rendered text; a tokenizer
  that still changes the text segment-wise raises ConfigError instead of training on it.

What is trained (train_on):
- "assistant" (default): every assistant reply and its end-of-turn marker — llava_v1 " {a}</s>",
  llava_v0 " {a}###", chatml "{a}<|im_end|>" (not the "\\n" after it), plain "{caption}{eos}",
  jinja: up to the last special token of the reply (see templates.JinjaTemplate). Never role
  headers, system text, user turns, BOS or image tokens.
- "last": only the final assistant message's reply.
- "all": every token except BOS, image tokens (and, in collate, padding).
"""
from dataclasses import dataclass, field

import torch

from ocellus.data.control_tokens import control_strings
from ocellus.data.messages import normalize, validate
from ocellus.data.templates import Segment, get_template
from ocellus.errors import ConfigError, InputError

IGNORE_INDEX = -100  # labels value cross-entropy skips (PyTorch's and transformers' default ignore_index)


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]                        # IGNORE_INDEX where not trained
    tokens_per_image: list[int] = field(default_factory=list)
    truncated_from: int | None = None        # the length before truncate=True cut it, else None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def _where(row) -> str:
    return f"row {row}: " if row is not None else ""


def _image_token_id(tokenizer, image_token: str) -> int:
    """The id of the image token, which must be one special token (never split, never merged)."""
    index = tokenizer.backend.token_to_id(image_token)
    special = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values() if t.special}
    single = index is not None and tokenizer.encode(image_token, add_special_tokens=False) == [index]
    if not single or image_token not in special:
        raise ConfigError(
            f"the tokenizer does not know the image token {image_token!r} as a special token, so it cannot mark "
            f"image positions; add it (tokenizer_config.json 'image_token' / additional_special_tokens) and resize "
            f"the model's embeddings, or pass the image_token the checkpoint uses")
    return index


def _bos_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer's post-processor puts before a text (e.g. [bos] for Llama, [] for Qwen)."""
    bare, full = tokenizer.encode("a", add_special_tokens=False), tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start]
    return []


def _merge(segments: list[Segment]) -> list[Segment]:
    """Join neighbouring text segments that share a role in the mask, so they tokenize as one string:
    any untrained text, or the pieces of one reply (e.g. Vicuna's " " + answer + "</s>")."""
    out = []
    for s in segments:
        if not s.text and not s.image:
            continue
        last = out[-1] if out else None
        if (last is not None and not s.image and not last.image and s.trainable == last.trainable
                and (not s.trainable or s.turn == last.turn)):
            shifted = tuple((a + len(last.text), b + len(last.text)) for a, b in s.literal)
            out[-1] = last._replace(text=last.text + s.text, literal=last.literal + shifted)
        else:
            out.append(s)
    return out


def _markup(s: Segment) -> str:
    """A segment's text outside its message-text spans: what the template itself wrote."""
    cuts = [0, *(x for span in s.literal for x in span), len(s.text)]
    return "".join(s.text[cuts[i]:cuts[i + 1]] for i in range(0, len(cuts), 2))


class _SegmentTokenizer:
    """encode() for a piece of text that continues a sequence (see the module docstring)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.anchor = None
        for index, token in sorted(tokenizer.backend.get_added_tokens_decoder().items()):
            # A special token that strips no whitespace around it, so " text" after it keeps its space.
            if token.special and not (token.lstrip or token.rstrip or token.single_word):
                if tokenizer.encode(token.content + " a", add_special_tokens=False)[:1] == [index]:
                    self.anchor = (token.content, index)
                    break

    def __call__(self, text: str, first: bool, literal=(), controls=None) -> list[int]:
        """literal: spans of `text` that are message text, where `controls` (control-token strings) are read as
        plain text (data/control_tokens.py)."""
        if first or self.anchor is None:
            return self.tokenizer.encode(text, add_special_tokens=False, literal=literal, controls=controls)
        n = len(self.anchor[0])
        ids = self.tokenizer.encode(self.anchor[0] + text, add_special_tokens=False,
                                    literal=[(a + n, b + n) for a, b in literal], controls=controls)
        return ids[1:]


def encode_messages(
    messages,
    tokenizer,
    template="chatml",
    *,
    images_tokens=(),
    image_token: str = "<image>",
    image_wrap: tuple[str, str] = ("", ""),
    train_on: str = "assistant",
    max_length: int | None = None,
    truncate: bool = False,
    add_generation_prompt: bool = False,
    add_bos: bool | None = None,
    check_roundtrip: bool = True,
    row=None,
) -> EncodedSample:
    """Tokenize one conversation and build its labels.

    messages: normal form or anything messages.normalize accepts (string content included).
    template: a name from templates.TEMPLATES or a template object.
    images_tokens: for each image part, in order, how many tokens the vision side yields for it
        (data/image.py computes these); each placeholder becomes that many image-token ids.
    image_wrap: (before, after) text around each image's ids, untrained, "{n}" = the image's 1-based
        number (Processor.image_wrap: InternVL's "<img>...</img>", Qwen-VL's "Picture {n}: <img>...").
    add_bos: None follows the template (jinja: the template writes BOS itself) and else the
        tokenizer's post-processor (Llama/Vicuna add one, Qwen does not).
    max_length: a longer sample raises InputError, or with truncate=True is cut (never through an
        image) and reports its original length in `truncated_from`.
    row: names the sample in error messages (dataset index, LLaVA id).

    Raises InputError for bad conversations (naming the row and the turn), image-count
    mismatches, over-long samples and samples left with nothing to train on; ConfigError for a
    tokenizer/template that cannot do what is asked.
    """
    if train_on not in ("assistant", "last", "all"):
        raise ConfigError(f"train_on must be 'assistant', 'last' or 'all', got {train_on!r}")
    messages = normalize(messages, row=row)
    images_tokens = list(images_tokens)
    validate(messages, num_images=len(images_tokens), row=row)
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in images_tokens):
        raise InputError(f"{_where(row)}images_tokens must be positive ints, got {images_tokens}")
    for turn, m in enumerate(messages):
        if any(p["type"] == "text" and image_token in p["text"] for p in m["content"]):
            raise InputError(f"{_where(row)}turn {turn}: the text contains the image token {image_token!r} literally; "
                             f"use an {{'type': 'image'}} part (or messages.from_llava for LLaVA-format text)")
    image_id = _image_token_id(tokenizer, image_token) if images_tokens else None

    template = get_template(template, tokenizer)
    try:
        segments = template.segments(messages, add_generation_prompt=add_generation_prompt,
                                     image_placeholder=image_token)
    except InputError as e:
        raise InputError(f"{_where(row)}{template.name} template: {e}") from e

    last_assistant = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)

    def trained(s: Segment) -> bool:
        if s.image:
            return False
        if train_on == "all":
            return True
        return s.trainable and (train_on == "assistant" or s.turn == last_assistant)

    if add_bos is None:
        add_bos = template.bos
    prefix = _bos_prefix(tokenizer) if add_bos is None else ([tokenizer.bos_token_id] if add_bos else [])
    if None in prefix:
        raise ConfigError("add_bos=True, but the tokenizer has no bos_token")
    input_ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)
    encode_piece = _SegmentTokenizer(tokenizer)
    merged = _merge(segments)
    controls = control_strings(tokenizer, "".join(_markup(s) for s in merged))  # the whole sample's markup
    images = iter(images_tokens)
    expected_text, number = [], 0   # number: the image's 1-based position, for image_wrap's "{n}"
    for k, s in enumerate(merged):
        if s.image:
            n, number = next(images), number + 1
            before, after = (w.format(n=number) for w in image_wrap)
            ids = encode_piece(before, first=k == 0) if before else []
            ids += [image_id] * n + (encode_piece(after, first=False) if after else [])
            expected_text.append(before + image_token * n + after)
        else:
            ids = encode_piece(s.text, first=k == 0, literal=s.literal, controls=controls)
            expected_text.append(s.text)
        input_ids += ids
        labels += ids if trained(s) else [IGNORE_INDEX] * len(ids)

    if image_id is not None and input_ids.count(image_id) != sum(images_tokens):
        raise ConfigError(f"{_where(row)}{input_ids.count(image_id)} image tokens after encoding, expected "
                          f"{sum(images_tokens)} (does the template itself write {image_token!r}?)")
    if check_roundtrip:
        decoded, rendered = tokenizer.decode(input_ids[len(prefix):]), "".join(expected_text)
        if decoded != rendered:
            raise ConfigError(
                f"{_where(row)}tokenizing the conversation segment by segment changes its text, so the ids would "
                f"not be what the model sees at inference (a tokenizer that adds a prefix space to every input?)."
                f"\n  rendered: {rendered[:200]!r}\n  decoded:  {decoded[:200]!r}\n"
                f"Pass check_roundtrip=False only if the difference is a harmless normalisation.")

    sample = EncodedSample(input_ids, labels, images_tokens)
    if max_length is not None and len(input_ids) > max_length:
        if not truncate:
            raise InputError(f"{_where(row)}sample is {len(input_ids)} tokens long, over max_length={max_length} "
                             f"(pass truncate=True to cut it, or raise the limit)")
        last_image = max((i for i, t in enumerate(input_ids) if image_id is not None and t == image_id), default=-1)
        if last_image >= max_length:
            raise InputError(f"{_where(row)}sample is {len(input_ids)} tokens long; cutting it to "
                             f"max_length={max_length} would cut through its images (last image token at {last_image})")
        sample = EncodedSample(input_ids[:max_length], labels[:max_length], images_tokens,
                               truncated_from=len(input_ids))
        if sample.num_trained == 0 and any(label != IGNORE_INDEX for label in labels):
            raise InputError(f"{_where(row)}cutting the {len(input_ids)}-token sample to max_length={max_length} "
                             "leaves no trained token")
    if sample.num_trained == 0 and not add_generation_prompt:
        raise InputError(f"{_where(row)}nothing to train on: no assistant reply is trained with train_on={train_on!r} "
                         "(a conversation without an assistant turn? use add_generation_prompt=True for prompts)")
    return sample


def collate(samples, pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad samples to one [B, T] batch: input_ids (pad_id), attention_mask (0 on padding),
    labels (IGNORE_INDEX on padding). Left padding is for batched generation."""
    if padding_side not in ("right", "left"):
        raise ConfigError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if pad_id is None:
        raise ConfigError("collate needs a pad_id (the tokenizer has no pad_token? pass e.g. the eos id)")
    if not samples:
        raise InputError("collate got no samples")
    rows = [(list(s.input_ids), list(s.labels)) if isinstance(s, EncodedSample) else (list(s["input_ids"]),
                                                                                       list(s["labels"]))
            for s in samples]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)   # [B, T]
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)     # [B, T]
    for b, (ids, lab) in enumerate(rows):
        if len(ids) != len(lab):
            raise InputError(f"sample {b}: {len(ids)} input_ids but {len(lab)} labels")
        span = slice(0, len(ids)) if padding_side == "right" else slice(width - len(ids), width)
        input_ids[b, span] = torch.tensor(ids, dtype=torch.long)
        labels[b, span] = torch.tensor(lab, dtype=torch.long)
        attention_mask[b, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
