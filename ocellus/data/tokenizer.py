"""Text tokenizer: a thin wrapper over a `tokenizers.Tokenizer` (tokenizer.json) that reads a
Hugging Face tokenizer directory and behaves like transformers 5.x `AutoTokenizer` on it
(the generic `TokenizersBackend` path, transformers/tokenization_utils_tokenizers.py):

- encode/decode go straight to the tokenizer.json pipeline, except where the tokenizer class AutoTokenizer picks
  (tokenizer_config's `tokenizer_class`, or config.json's model_type) builds its own (Llama, GPT2, GPTNeoX,
  Qwen2, CLIP, Bert, T5: data/tokenizer_classes.py), as transformers does.
  Its post-processor decides whether BOS/EOS are added; when tokenizer.json exists transformers *ignores*
  tokenizer_config's `add_bos_token`/`add_eos_token`, and so do we.
- tokenizer_config's `added_tokens_decoder` (what transformers v4 saves) is added over tokenizer.json's added
  tokens, its flags winning, as transformers 5 does.
- padding/truncation stored in tokenizer.json are switched off: transformers' `encode` never
  pads and truncates only when asked.
- every named special token (`bos_token`, ..., any other `*_token` such as `image_token`) and
  `additional_special_tokens` is registered as a special added token, as transformers does
  at load, so it is never split and `skip_special_tokens` drops it.
- `clean_up_tokenization_spaces` applies to non-BPE models only (unless the config insists), as in
  transformers 5.

What `save()` writes reopens in `AutoTokenizer` with the same encodings.
"""

import json
from pathlib import Path

import tokenizers
from tokenizers import AddedToken

from ocellus.data.chat_template import render_chat_template
from ocellus.data.control_tokens import encode_with_literals, refuse_control_text, render_with_spans
from ocellus.data.tokenizer_classes import (class_config, class_extra_tokens, class_finish, class_pipeline,
                                            class_special_defaults, class_word_suffix)
from ocellus.errors import CheckpointError, ConfigError, InputError
from ocellus.hub.checkpoint_dir import read_json_object

# The special tokens transformers names; other `*_token` keys in the config are model-specific ones.
NAMED_SPECIAL_TOKENS = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)
_ADDED_TOKEN_FIELDS = ("single_word", "lstrip", "rstrip", "normalized", "special")


def _read_json(path: Path) -> dict | None:
    return read_json_object(path)   # a CheckpointError naming the file when it is not a JSON object


def _token(value) -> AddedToken | None:
    """A special token from a config: "<s>" or {"content": "<s>", "lstrip": ..., ...}."""
    if isinstance(value, str):
        return AddedToken(value, special=True, normalized=False)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {k: bool(value[k]) for k in _ADDED_TOKEN_FIELDS if k in value}
        return AddedToken(value["content"], **{**flags, "special": True})
    return None


def _special_tokens(config: dict, special_map: dict | None) -> tuple[dict[str, AddedToken], list[AddedToken]]:
    """(named tokens, extra tokens) from tokenizer_config.json and special_tokens_map.json."""
    sources = [config]
    if special_map and "added_tokens_decoder" not in config:
        sources.append(special_map)  # legacy checkpoints: the map overrides the config, as in transformers
    named, extra = {}, []
    for source in sources:
        named.update({k: _token(v) for k, v in source.items() if k.endswith("_token") and _token(v) is not None})
        # v4 writes additional_special_tokens (a list) and, for multimodal tokenizers, extra_special_tokens (a
        # dict of named model-specific tokens) side by side; v5 writes extra_special_tokens as either: read both
        listed = {}   # content -> token: one entry per token whichever key lists it
        for key in ("additional_special_tokens", "extra_special_tokens"):
            tokens = source.get(key)
            if isinstance(tokens, dict):
                named.update({k: _token(v) for k, v in tokens.items() if _token(v) is not None})
            elif tokens:
                listed.update((t.content, t) for t in map(_token, tokens) if t is not None and t.content not in listed)
        if listed:
            extra = list(listed.values())
    return named, extra


def _config_added_tokens(config: dict) -> list[AddedToken] | None:
    """tokenizer_config.json's added_tokens_decoder ({id: {"content": ..., "lstrip": ...}}, what transformers v4
    saves) as AddedTokens in id order (a named one turns special when the named tokens are registered); None when
    the config has none.
    transformers 5 re-adds them over tokenizer.json's, so their flags win, and a class that rebuilds the pipeline
    gets only these (data/tokenizer_classes.py)."""
    entries = config.get("added_tokens_decoder")
    if entries is None:
        return None
    if not isinstance(entries, dict) or not all(isinstance(e, dict) and isinstance(e.get("content"), str)
                                                and str(k).isdigit() for k, e in entries.items()):
        raise ConfigError("tokenizer_config.json field 'added_tokens_decoder' must map token ids to "
                          "{\"content\": ..., ...} objects")
    ordered = sorted(entries.items(), key=lambda kv: int(kv[0]))
    return [AddedToken(e["content"], **{k: bool(e[k]) for k in _ADDED_TOKEN_FIELDS if k in e}) for _, e in ordered]


def _chat_templates(directory: Path, config: dict) -> dict[str, str]:
    """name -> template. Files win over tokenizer_config.json, as in transformers."""
    templates = {}
    in_config = config.get("chat_template")
    if isinstance(in_config, str):
        templates["default"] = in_config
    elif isinstance(in_config, list):  # older form: [{"name": "default", "template": ...}, ...]
        templates.update({t["name"]: t["template"] for t in in_config})
    elif isinstance(in_config, dict):
        templates.update(in_config)
    processor_json = _read_json(directory / "chat_template.json")  # processor-level file
    if processor_json and isinstance(processor_json.get("chat_template"), str):
        templates["default"] = processor_json["chat_template"]
    if (directory / "chat_template.jinja").is_file():
        templates["default"] = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    for extra in sorted((directory / "additional_chat_templates").glob("*.jinja")):
        templates[extra.stem] = extra.read_text(encoding="utf-8")
    return templates


class Tokenizer:
    """Text <-> token ids, chat templates, and save/load in Hugging Face format."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        special_tokens: dict[str, AddedToken | str] | None = None,
        extra_special_tokens: list[AddedToken | str] | None = None,
        chat_templates: dict[str, str] | None = None,
        config: dict | None = None,
    ):
        self.backend = backend
        self.config = dict(config or {})  # the rest of tokenizer_config.json, written back by save()
        self.chat_templates = dict(chat_templates or {})
        self._special = {k: _token(v) if isinstance(v, str) else v for k, v in (special_tokens or {}).items()}
        self._extra = [_token(t) if isinstance(t, str) else t for t in (extra_special_tokens or [])]
        # Padding/truncation in tokenizer.json are kept (in their JSON form) for save(), not applied to encode().
        serialized = json.loads(backend.to_str())
        self._json_truncation, self._json_padding = serialized["truncation"], serialized["padding"]
        backend.no_truncation()
        backend.no_padding()
        self._register_special_tokens()
        self._word_suffix = class_word_suffix(self.config)   # CLIP's "</w>": decode makes it a space

    def _register_special_tokens(self):
        # Like transformers' load: re-add a named token tokenizer.json already has as it is there (keeps its
        # lstrip/rstrip), add the others as new special tokens. Both end up special, so decode can skip them.
        # New tokens get their ids in transformers' order: the standard named ones as NAMED_SPECIAL_TOKENS lists
        # them (whatever order the config writes them in), then the model-specific ones (image_token, ...) in
        # config order, then the listed extras.
        # A listed extra (additional_special_tokens) that tokenizer.json already has keeps its flags, special or
        # not; a named one becomes special.
        existing = {t.content: t for t in self.backend.get_added_tokens_decoder().values()}
        rank = {name: k for k, name in enumerate(NAMED_SPECIAL_TOKENS)}
        named = [t for _, t in sorted(self._special.items(), key=lambda kv: rank.get(kv[0], len(rank)))]
        tokens = [existing.get(t.content, t) for t in named] + [t for t in self._extra if t.content not in existing]
        if tokens:
            self.backend.add_special_tokens(tokens)

    # ---- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path) -> "Tokenizer":
        directory = Path(path)
        tokenizer_json = directory / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise CheckpointError(
                f"no tokenizer.json in {directory}: Ocellus needs the fast-tokenizer file "
                "(convert a sentencepiece/vocab-only checkpoint with transformers' AutoTokenizer.save_pretrained)"
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        except Exception as e:  # the Rust side raises plain Exception
            raise CheckpointError(f"cannot parse {tokenizer_json}: {e}") from e
        config = _read_json(directory / "tokenizer_config.json") or {}
        named, extra = _special_tokens(config, _read_json(directory / "special_tokens_map.json"))
        # a tokenizer_class that builds its own pipeline (data/tokenizer_classes.py): its default special tokens,
        # its model and pipeline over the file's vocabulary, and (once its tokens have ids) its post-processor
        as_class = class_config(config, backend, _read_json(directory / "config.json"))  # model_type picks too
        named.update({k: _token(v) for k, v in class_special_defaults(as_class, named).items()})
        extra += [_token(t) for t in class_extra_tokens(as_class)]
        special = {k: t.content for k, t in named.items()}
        # the class the directory resolves to is the one save() writes, as transformers writes its own class
        listed = _config_added_tokens(config)
        backend = class_pipeline(backend, as_class, special, keep_added=listed is None)
        if listed:
            backend.add_tokens(listed)
        tokenizer = cls(backend, named, extra, _chat_templates(directory, config), as_class)
        class_finish(as_class, tokenizer.backend, special, [t.content for t in extra], tokenizer.convert_tokens_to_ids)
        return tokenizer

    def save(self, path) -> None:
        """Write tokenizer.json + tokenizer_config.json (special tokens, chat template)."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        data = json.loads(self.backend.to_str())
        data["truncation"], data["padding"] = self._json_truncation, self._json_padding
        (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        config = {k: v for k, v in self.config.items() if not self._owned_config_key(k, v)}
        config.update({k: t.content for k, t in self._special.items()})
        if self._extra:
            config["additional_special_tokens"] = [t.content for t in self._extra]  # read by v4 and v5
        if set(self.chat_templates) == {"default"}:
            config["chat_template"] = self.chat_templates["default"]
        elif self.chat_templates:
            config["chat_template"] = [{"name": k, "template": v} for k, v in self.chat_templates.items()]
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        text = json.dumps(config, ensure_ascii=False, indent=2)
        (directory / "tokenizer_config.json").write_text(text, encoding="utf-8")

    @staticmethod
    def _owned_config_key(key: str, value) -> bool:
        # Keys save() rewrites from this object's state (special tokens, templates); added_tokens_decoder
        # is dropped because tokenizer.json carries every added token with its id. Flags such as
        # add_bos_token (also "*_token", but a bool) are kept.
        rewritten = ("chat_template", "added_tokens_decoder", "additional_special_tokens", "extra_special_tokens")
        return key in rewritten or (key.endswith("_token") and _token(value) is not None)

    # ---- vocabulary ---------------------------------------------------------------------------

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens as strings, e.g. {"bos_token": "<s>", "image_token": "<image>"}."""
        return {k: t.content for k, t in self._special.items()}

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (transformers' `len(tokenizer)`)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def _special_id(self, name: str) -> int | None:
        token = self._special.get(name)
        return None if token is None else self.convert_tokens_to_ids(token.content)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk_token")

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | None | list[int | None]:
        """Token string(s) -> id(s); an unknown token maps to the unk id (None without one), as in transformers."""
        if isinstance(tokens, str):
            index = self.backend.token_to_id(tokens)
            return index if index is not None else self.unk_token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | None | list[str | None]:
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(i) for i in ids]

    # ---- text <-> ids -------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True, literal=(), controls=None) -> list[int]:
        """literal: [start, end) spans of `text` (the message text of a rendered chat prompt) where control-token
        strings (<|im_end|>, <image>, ...; `controls` overrides which) are read as plain text
        (data/control_tokens.py)."""
        if not isinstance(text, str):
            raise InputError(f"encode expects a str, got {type(text).__name__}")
        if literal:
            return encode_with_literals(self, text, literal, add_special_tokens, controls)
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        """clean_up_tokenization_spaces: None reads tokenizer_config.json's (as transformers does)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids  # accepts tensors and arrays too
        ids = [ids] if isinstance(ids, int) else [int(i) for i in ids]
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if self._word_suffix:
            text = text.replace(self._word_suffix, " ").strip()   # as CLIPTokenizer's decode does
        return _clean_up_tokenization(text) if self._cleans_up(clean_up_tokenization_spaces) else text

    def batch_decode(self, rows, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in rows]

    def _cleans_up(self, asked: bool | None = None) -> bool:
        # transformers 5 applies the clean-up to BPE only when the config insists: it eats real spaces there
        asked = self.config.get("clean_up_tokenization_spaces") if asked is None else asked
        bpe = type(self.backend.model).__name__ == "BPE"
        return bool(asked) and (not bpe or bool(self.config.get(_CLEAN_UP_BPE_TOO)))

    def unsettled_tail(self, text: str) -> int:
        """How many trailing characters of a decoded text later tokens may still change (the streaming
        detokenizer holds them back): with the clean-up on, a tail that may grow into " 's", " .", ...; else 0."""
        return _clean_up_prefix(text) if self._cleans_up() else 0

    # ---- chat ---------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        """The default chat template, or None when the checkpoint ships none."""
        return self.chat_templates.get("default")

    def get_chat_template(self, chat_template: str | None = None, tools=None) -> str:
        """Template source: an explicit one (or the name of a shipped one), else `tool_use` when
        tools are given and shipped, else `default` — transformers' order."""
        if chat_template is not None:
            return self.chat_templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in self.chat_templates:
            return self.chat_templates["tool_use"]
        if "default" in self.chat_templates:
            return self.chat_templates["default"]
        if self.chat_templates:
            raise ConfigError(
                f"this tokenizer has several chat templates and no default: pass chat_template= one of "
                f"{sorted(self.chat_templates)}"
            )
        raise ConfigError("this tokenizer has no chat template (tokenizer_config.json / chat_template.jinja)")

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        tools: list[dict] | None = None,
        chat_template: str | None = None,
        **extra,
    ) -> str | list[int]:
        """Render a conversation; with tokenize=True return its ids. The template adds whatever
        BOS it wants, so ids are encoded without special tokens (as transformers does); the messages'
        text is tokenized as plain text, never into control tokens (render_chat)."""
        if tokenize:
            text, spans = self.render_chat(messages, add_generation_prompt, tools=tools, chat_template=chat_template,
                                           **extra)
            return self.encode(text, add_special_tokens=False, literal=spans)
        template = self.get_chat_template(chat_template, tools)
        kwargs = {**self.special_tokens_map, **extra}  # explicit kwargs override the token strings
        return render_chat_template(template, messages, add_generation_prompt, tools=tools, **kwargs)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False, tools: list[dict] | None = None,
                    chat_template: str | None = None, **extra) -> tuple[str, list[tuple[int, int]]]:
        """(the rendered conversation, the [start, end) spans of it that are message text): encode(text,
        literal=spans) reads those as plain text. InputError when the template changes message text so its
        spans cannot be found and a text holds a control-token string (data/control_tokens.py)."""
        template = self.get_chat_template(chat_template, tools)
        kwargs = {**self.special_tokens_map, **extra}

        def render(msgs):
            return render_chat_template(template, msgs, add_generation_prompt, tools=tools, **kwargs)
        text, spans = render_with_spans(render, messages)
        return text, spans if spans is not None else refuse_control_text(self, messages)


_CLEAN_UP_BPE_TOO = "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"
# transformers' `clean_up_tokenization`: glue punctuation and English contractions back on
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _clean_up_tokenization(text: str) -> str:
    for before, after in _CLEAN_UP:
        text = text.replace(before, after)
    return text


def _clean_up_prefix(text: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a pattern the clean-up rewrites."""
    for k in range(min(3, len(text)), 0, -1):
        if any(before.startswith(text[-k:]) and len(before) > k for before, _ in _CLEAN_UP):
            return k
    return 0
