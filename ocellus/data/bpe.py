"""Train a small byte-level BPE tokenizer on text the project generates.

The tiny recipes train on synthetic data (ocellus/data/shapes.py, digits.py), so they need a
tokenizer fitted to that text rather than a 150k-entry vocabulary borrowed from a big model:
a few hundred merges keep the embedding table small and every word of the data one or two
tokens long. This is the GPT-2 / Qwen recipe at toy scale, built with the `tokenizers` library:

- byte-level pre-tokenization and decoding (GPT-2): any string encodes, nothing maps to <unk>;
- digits split one per token (as Qwen2's pre-tokenizer does with \\p{N}): box coordinates such as
  "(125,730)" then become a handful of digit tokens the model can learn compositionally, instead
  of arbitrary merges like "12" + "5";
- special tokens that are never split: ChatML's `<|im_start|>` / `<|im_end|>` and
  `<|endoftext|>`, the image placeholder `<image>`, and Qwen-VL's grounding markup
  `<ref>`, `</ref>`, `<box>`, `</box>` (Qwen-VL, Bai et al. 2023, sec. 3.2: a box is written
  `<ref>text</ref><box>(x1,y1),(x2,y2)</box>` with coordinates in [0, 1000));
- a ChatML chat template that reads message content either as a string or as content parts,
  writing each image part as the `<image>` placeholder.

The result is an ocellus Tokenizer; `Tokenizer.save` writes tokenizer.json +
tokenizer_config.json, which transformers' AutoTokenizer opens with the same encodings.
"""
from collections.abc import Iterable

from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<ref>", "</ref>", "<box>", "</box>")

# ChatML (Qwen's format) over content parts: a string content is written as is; in a parts list an
# image part becomes the "<image>" placeholder (expanded to image-token ids later, by encode.py) and
# a text part its text. One line, so Jinja's trim_blocks/lstrip_blocks cannot change whitespace.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Iterable[str] = SPECIAL_TOKENS,
    chat_template: str | None = CHATML,
    *,
    eos_token: str | None = "<|im_end|>",
    pad_token: str | None = "<|endoftext|>",
    image_token: str | None = "<image>",
    split_digits: bool = True,
    min_frequency: int = 2,
    model_max_length: int | None = None,
) -> Tokenizer:
    """Train a byte-level BPE on `texts` and wrap it as an ocellus Tokenizer.

    vocab_size counts everything: the 256 byte symbols, the special tokens and the merges (the
    trainer stops early when the text has no more pairs seen `min_frequency` times).
    eos/pad/image_token name which special tokens play those roles (written to
    tokenizer_config.json as `eos_token` etc.; each must be one of `special_tokens`). There is
    no BOS: ChatML models (Qwen) start prompts with `<|im_start|>`, not a BOS token.
    """
    try:
        from tokenizers import Tokenizer as RawTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers
    except ImportError as e:  # tokenizers is a runtime dependency, but say what to do if it is missing
        raise ConfigError("train_bpe needs the `tokenizers` package: pip install tokenizers") from e

    special_tokens = list(dict.fromkeys(special_tokens))  # unique, order kept: ids 0..k-1 in this order
    roles = {"eos_token": eos_token, "pad_token": pad_token, "image_token": image_token}
    for role, token in roles.items():
        if token is not None and token not in special_tokens:
            raise ConfigError(f"{role} {token!r} is not among the special tokens {special_tokens}")
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # all 256 byte symbols, so every string encodes
    if vocab_size < len(alphabet) + len(special_tokens):
        raise ConfigError(f"vocab_size {vocab_size} is smaller than the {len(alphabet)} byte symbols plus "
                          f"{len(special_tokens)} special tokens; use at least {len(alphabet) + len(special_tokens)}")

    raw = RawTokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)  # no invented leading space: text round-trips
    raw.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=special_tokens, initial_alphabet=alphabet, show_progress=False)
    raw.train_from_iterator(texts, trainer)  # the trainer registers special_tokens as special added tokens

    named = {role: token for role, token in roles.items() if token is not None}
    extra = [t for t in special_tokens if t not in named.values()]  # the grounding markup, ChatML start, ...
    config = {"bos_token": None, "clean_up_tokenization_spaces": False}
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    templates = {"default": chat_template} if chat_template is not None else {}
    return Tokenizer(raw, special_tokens=named, extra_special_tokens=extra, chat_templates=templates, config=config)
