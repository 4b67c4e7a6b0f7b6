"""What transformers 5 makes of tokenizer_config.json's `tokenizer_class` when it loads a tokenizer.json.

The generic class (PreTrainedTokenizerFast, TokenizersBackend, or no class) runs tokenizer.json as it is. A class
with its own `__init__` keeps only the file's vocabulary, merges, post-processor and added tokens, and builds the
rest of the pipeline itself from the config's flags (transformers/tokenization_utils_tokenizers.py,
`convert_to_native_format`); it also has default special tokens for the ones the config leaves out, and some set
their own post-processor (transformers/models/<name>/tokenization_<name>.py, each class's `__init__`):

- Llama: Llama-2 / Mistral / Vicuna / LLaVA ship a tokenizer.json that prepends "▁" in a normalizer, so after
  every special token too ("legacy"), while LlamaTokenizer builds a Metaspace pre-tokenizer that prepends it once
  (`legacy` false, the default), at every split (`legacy` true) or never (`add_prefix_space` false). A byte-level
  file under this class (DeepSeek, Llama-3 fine-tunes) is run as it is: AutoTokenizer switches to the generic class.
- GPT2 (OPT, BLIP-2's text side): byte-level BPE, `add_prefix_space` from the config; the file's normalizer is
  dropped.
- GPTNeoX (OpenFlamingo's MPT): NFC, byte-level; its post-processor adds no BOS / EOS (add_bos_token and
  add_eos_token are dropped when a tokenizer.json exists), whatever the file's adds.
- Qwen2 (Qwen2-VL, InternVL on Qwen2): NFC, Qwen's split regex, byte-level without its own regex; every special
  token, named or listed, is re-added as special without the file's lstrip / rstrip flags.
- CLIP: NFC, whitespace runs to one space, lowercase, CLIP's split regex, "</w>" word ends; the post-processor
  wraps text in <|startoftext|> ... <|endoftext|>, and decode turns "</w>" into a space and strips the text.
- Bert (BLIP / ALBEF / Q-Former): WordPiece under a BertNormalizer from do_lower_case / strip_accents /
  tokenize_chinese_chars; the post-processor writes [CLS] $A [SEP].
- T5 (Flan-T5 in BLIP-2 / InstructBLIP): Unigram with unk id 2, the file's precompiled charsmap (and no other
  normalizer), whitespace split + Metaspace; the post-processor appends </s>; `extra_ids` sentinels
  <extra_id_N> are special tokens.

Which class runs is AutoTokenizer's pick (class_config): a checkpoint's config.json model_type can override the
named class (LLaVA / LLaVA-NeXT / Mistral checkpoints that name LlamaTokenizer run their file as it is).
A class whose model kind differs from the file's (a WordPiece file under GPT2Tokenizer) is a ConfigError naming
tokenizer_class: transformers would build the class's model from a vocabulary it was not made for.
"""
import json
from dataclasses import dataclass, field
from typing import Callable

import tokenizers
from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors

from ocellus.errors import ConfigError

_META = "\u2581"   # "▁", SentencePiece's space
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_BPE_PLAIN = {"dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
              "fuse_unk": False, "byte_fallback": False, "ignore_merges": False}


def _flag(config: dict, name: str, default, null=ConfigError):
    """config[name] as a bool (default when absent; `null` when null, where the class accepts None). Anything else
    is a ConfigError naming the field: transformers' class fails on it."""
    if name not in config:
        return default
    value = config[name]
    if value is None and null is not ConfigError:
        return null
    if not isinstance(value, bool):
        raise ConfigError(f"tokenizer_config.json field {name!r} must be true or false, got {value!r}")
    return value


def _byte_level(prefix: bool, use_regex: bool = True):
    return pre_tokenizers.ByteLevel(add_prefix_space=prefix, trim_offsets=True, use_regex=use_regex)


@dataclass(frozen=True)
class _Class:
    """What a tokenizer class's __init__ builds over the file's vocabulary."""
    model: str                                     # the model kind the class builds ("BPE", "WordPiece", ...)
    options: Callable[[dict, dict], dict]          # (config, special tokens) -> the model's JSON options
    pipeline: Callable[[tokenizers.Tokenizer, dict], None]   # sets normalizer / pre-tokenizer / decoder
    specials: dict = field(default_factory=dict)   # default special tokens
    post: Callable | None = None                   # (special tokens, token -> id) -> its own post-processor
    word_suffix: str | None = None                 # decode replaces it with " " and strips the text (CLIP)
    required: tuple = ()                           # special tokens its model or post-processor cannot do without
    readds: bool = False                           # re-adds every special token as a plain special one (Qwen2)


def _llama_options(config, special):
    return {"dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": True, "byte_fallback": True, "ignore_merges": False}


def _llama_pipeline(backend, config):
    """transformers' LlamaTokenizer.__init__: a Metaspace pre-tokenizer, no normalizer; the decoder strips the
    prepended space only if one is added."""
    prefix = _flag(config, "add_prefix_space", True, null=True)
    scheme = ("always" if _flag(config, "legacy", False, null=False) else "first") if prefix else "never"
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_META, prepend_scheme=scheme, split=False)
    steps = [decoders.Replace(_META, " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))


def _gpt2_pipeline(backend, config):
    backend.normalizer = None
    backend.pre_tokenizer = _byte_level(_flag(config, "add_prefix_space", False))
    backend.decoder = decoders.ByteLevel()


def _qwen2_pipeline(backend, config):
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        _byte_level(_flag(config, "add_prefix_space", False, null=False), use_regex=False)])
    backend.decoder = decoders.ByteLevel()


def _gpt_neox_pipeline(backend, config):
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=_flag(config, "add_prefix_space", False),
                                                     trim_offsets=_flag(config, "trim_offsets", True))
    backend.decoder = decoders.ByteLevel()


def _no_specials_post(special, token_id):
    # GPTNeoXTokenizer rebuilds the post-processor from add_bos_token / add_eos_token, which transformers drops
    # from the config when a tokenizer.json exists: nothing is added, whatever the file's post-processor says
    return processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])


def _clip_options(config, special):
    return {**_BPE_PLAIN, "end_of_word_suffix": "</w>", "unk_token": special["unk_token"]}


def _clip_pipeline(backend, config):
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True), _byte_level(False)])
    backend.decoder = decoders.ByteLevel()


def _clip_post(special, token_id):
    eos, bos = special["eos_token"], special["bos_token"]
    return processors.RobertaProcessing((eos, token_id(eos)), (bos, token_id(bos)), trim_offsets=False,
                                        add_prefix_space=False)


def _bert_options(config, special):
    return {"unk_token": special["unk_token"], "continuing_subword_prefix": "##", "max_input_chars_per_word": 100}


def _bert_pipeline(backend, config):
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=_flag(config, "tokenize_chinese_chars", True),
        strip_accents=_flag(config, "strip_accents", None, null=None),
        lowercase=_flag(config, "do_lower_case", True))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")


def _bert_post(special, token_id):
    cls, sep = special["cls_token"], special["sep_token"]
    return processors.TemplateProcessing(single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
                                         special_tokens=[(cls, token_id(cls)), (sep, token_id(sep))])


def _t5_options(config, special):
    return {"unk_id": 2, "byte_fallback": False}


def _t5_pipeline(backend, config):
    # the normalizer is the file's precompiled charsmap, set by class_pipeline
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always")])
    backend.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always", split=True)


def _t5_post(special, token_id):
    # transformers writes the literal "</s>" with the eos token's id, whatever the eos token is
    return processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                         special_tokens=[("</s>", token_id(special["eos_token"]))])


_LLAMA = _Class("BPE", _llama_options, _llama_pipeline, {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"})
_GPT2 = _Class("BPE", lambda c, s: dict(_BPE_PLAIN), _gpt2_pipeline,
               {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})
_QWEN2 = _Class("BPE", lambda c, s: dict(_BPE_PLAIN), _qwen2_pipeline,
                {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
                readds=True)
_GPT_NEOX = _Class("BPE", lambda c, s: dict(_BPE_PLAIN), _gpt_neox_pipeline,
                   {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                    "pad_token": "<|padding|>"}, _no_specials_post)
_CLIP = _Class("BPE", _clip_options, _clip_pipeline,
               {"unk_token": "<|endoftext|>", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>"}, _clip_post, "</w>", ("unk_token", "bos_token", "eos_token"))
_BERT = _Class("WordPiece", _bert_options, _bert_pipeline,
               {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                "mask_token": "[MASK]"}, _bert_post, required=("unk_token", "cls_token", "sep_token"))
_T5 = _Class("Unigram", _t5_options, _t5_pipeline, {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
             _t5_post, required=("eos_token",))

# tokenizer_class -> what its __init__ builds; the *Fast names are the same class in transformers 5
_CLASSES = {f"{name}{fast}": entry for name, entry in (
    ("LlamaTokenizer", _LLAMA), ("GPT2Tokenizer", _GPT2), ("Qwen2Tokenizer", _QWEN2), ("GPTNeoXTokenizer", _GPT_NEOX),
    ("CLIPTokenizer", _CLIP), ("BertTokenizer", _BERT), ("T5Tokenizer", _T5)) for fast in ("", "Fast")}


def _entry(config: dict) -> _Class | None:
    """The class that rebuilds the pipeline, None for one that reads the file as it is."""
    return _CLASSES.get(config.get("tokenizer_class"))


# config.json's model_type -> the tokenizer class transformers 5 registers for it (TOKENIZER_MAPPING_NAMES in
# transformers/models/auto/tokenization_auto.py), for the model types Ocellus loads; "" is the generic class
MODEL_TYPE_CLASSES = {
    "llava": "", "llava_next": "", "mistral": "", "phi3": "", "pixtral": "",
    "qwen2": "Qwen2Tokenizer", "qwen2_vl": "Qwen2Tokenizer", "qwen2_5_vl": "Qwen2Tokenizer", "qwen3": "Qwen2Tokenizer",
    "internvl": "Qwen2Tokenizer", "opt": "GPT2Tokenizer", "blip-2": "GPT2Tokenizer", "instructblip": "GPT2Tokenizer",
    "gpt_neox": "GPTNeoXTokenizer", "mpt": "GPTNeoXTokenizer", "clip": "CLIPTokenizer", "bert": "BertTokenizer",
    "blip": "BertTokenizer", "t5": "T5Tokenizer", "idefics2": "LlamaTokenizer",
}
# model types whose checkpoints' tokenizer_class transformers overrides with the registered class
# (MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS there)
WRONG_HUB_CLASS = frozenset({"llava", "llava_next", "phi3", "qwen2"})
_GENERIC = "TokenizersBackend"


def class_config(config: dict, backend: tokenizers.Tokenizer, model_config: dict | None = None) -> dict:
    """tokenizer_config as the class_* functions read it: its tokenizer_class replaced by the class transformers 5's
    AutoTokenizer picks for the directory (model_config: the checkpoint's config.json, when it has one):
    - a byte-level file under LlamaTokenizer runs with the generic class (Metaspace would garble it);
    - a model type transformers registers another class for than the config names: that class when it is the
      generic one (LLaVA, LLaVA-NeXT, Mistral checkpoints run their tokenizer.json as it is, whatever
      LlamaTokenizer they name) or the model type's hub class is known to be wrong (Qwen2), else the named one;
    - no class named: the model type's (the generic one for a type not in the table)."""
    model_config = model_config or {}
    named = config.get("tokenizer_class") or model_config.get("tokenizer_class")
    model_type = model_config.get("model_type")
    registered = MODEL_TYPE_CLASSES.get(model_type) if isinstance(model_type, str) else None
    picked = _picked(named, model_type, registered, backend)
    # the config stays as it is unless the pick builds another pipeline (saved as the class that ran)
    return config if _CLASSES.get(picked) is _CLASSES.get(config.get("tokenizer_class")) else {
        **config, "tokenizer_class": picked}


def _picked(named: str | None, model_type, registered: str | None, backend: tokenizers.Tokenizer) -> str:
    if named is None:
        return registered or _GENERIC
    if _CLASSES.get(named) is _LLAMA and model_type not in WRONG_HUB_CLASS and '"ByteLevel"' in backend.to_str():
        return _GENERIC
    if registered is not None and registered != named.removesuffix("Fast"):
        return (registered or _GENERIC) if (registered == "" or model_type in WRONG_HUB_CLASS) else named
    return named


def class_pipeline(backend: tokenizers.Tokenizer, config: dict, special: dict[str, str],
                   keep_added: bool = True) -> tokenizers.Tokenizer:
    """tokenizer.json's tokenizer as transformers runs it under config's tokenizer_class (the same one when the
    class reads the file as it is). special: the named special tokens' strings, defaults included. keep_added
    false: a class that rebuilds the pipeline drops the file's added tokens (the config's added_tokens_decoder
    lists the ones transformers adds back)."""
    entry = _entry(config)
    if entry is None:
        return backend
    data = json.loads(backend.to_str())
    kind = data["model"].get("type")
    if kind != entry.model:
        raise ConfigError(f"tokenizer class {config['tokenizer_class']!r} (tokenizer_config.json's tokenizer_class, "
                          f"or the one config.json's model_type picks) builds a {entry.model} model, but "
                          f"tokenizer.json holds a {kind} one; set tokenizer_class to 'PreTrainedTokenizerFast' to "
                          f"run the file as it is")
    for name in entry.required:   # transformers fails on these (or builds a "None" token)
        if not isinstance(special.get(name), str):
            raise ConfigError(f"tokenizer_config.json sets {name} to null, but {config['tokenizer_class']} "
                              f"needs one")
    if not keep_added:
        data["added_tokens"] = []
    if entry is _T5:
        data["normalizer"] = _precompiled(data.get("normalizer"))
    data["model"].update(entry.options(config, special))
    unk = data["model"].get("unk_token")
    if unk is not None and unk not in data["model"]["vocab"]:   # transformers fails at the first unknown word
        raise ConfigError(f"tokenizer_config.json's unk_token {unk!r} is not in tokenizer.json's vocabulary, "
                          f"which {config['tokenizer_class']} needs")
    built = tokenizers.Tokenizer.from_str(json.dumps(data))
    entry.pipeline(built, config)
    return built


def _precompiled(normalizer: dict | None) -> dict | None:
    """The file's Precompiled normalizer (SentencePiece's charsmap), alone or in a Sequence; None without one."""
    steps = (normalizer or {}).get("normalizers", [normalizer] if normalizer else [])
    return next((s for s in steps if s.get("type") == "Precompiled" and s.get("precompiled_charsmap")), None)


def class_finish(config: dict, backend: tokenizers.Tokenizer, special: dict[str, str], extras: list[str],
                 token_id) -> None:
    """What the class's __init__ does once its tokens have ids (token_id: token -> id): Qwen2 re-adds every special
    token, named or listed, as special with no lstrip / rstrip / single_word (the file's flags are dropped, and a
    listed extra the file holds as a plain token turns special); GPTNeoX, CLIP, Bert and T5 set their own
    post-processor."""
    entry = _entry(config)
    if entry is None:
        return
    if entry.readds:
        contents = dict.fromkeys([*special.values(), *extras])
        backend.add_special_tokens([tokenizers.AddedToken(c, special=True, normalized=False) for c in contents])
    if entry.post is not None:
        backend.post_processor = entry.post(special, token_id)


def class_word_suffix(config: dict) -> str | None:
    """The end-of-word suffix the class's decode turns into a space before stripping the text (CLIP's "</w>")."""
    entry = _entry(config)
    return None if entry is None else entry.word_suffix


def class_special_defaults(config: dict, named: dict) -> dict[str, str]:
    """The class's default special tokens for the names neither config nor `named` (what the checkpoint's files
    name) sets; a name the config sets to null stays unset."""
    entry = _entry(config)
    defaults = entry.specials if entry else {}
    return {name: token for name, token in defaults.items() if name not in config and name not in named}


def class_extra_tokens(config: dict) -> list[str]:
    """Extra special tokens the class adds: T5's `extra_ids` sentinels <extra_id_0>, ... when the config lists no
    additional_special_tokens / extra_special_tokens (an empty list too: transformers then adds none)."""
    if _entry(config) is not _T5 or any(isinstance(config.get(k), list) for k in ("additional_special_tokens",
                                                                                  "extra_special_tokens")):
        return []
    count = config.get("extra_ids", 100)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"tokenizer_config.json field 'extra_ids' must be an int >= 0, got {count!r}")
    return [f"<extra_id_{i}>" for i in range(count)]
