"""What transformers 5 makes of tokenizer_config.json's `tokenizer_class` when it loads a tokenizer.json.

The generic class (PreTrainedTokenizerFast, TokenizersBackend, or no class) runs tokenizer.json as it is. A class
with its own `__init__` keeps only the file's vocabulary, merges, post-processor and added tokens, and builds the
rest of the pipeline itself from the config's flags (transformers/tokenization_utils_tokenizers.py,
`convert_to_native_format`); it also has default special tokens for the ones the config leaves out.

Llama's class is the one whose pipeline real checkpoints' files disagree with: Llama-2 / Mistral / Vicuna / LLaVA
ship a tokenizer.json that prepends "▁" in a normalizer, so after every special token too ("legacy"), while
transformers' LlamaTokenizer builds a Metaspace pre-tokenizer that prepends it once (`legacy` false, the default),
at every split (`legacy` true) or never (`add_prefix_space` false). Other classes rebuild what their files hold
and are read as files.
"""
import json

import tokenizers

_META = "\u2581"   # "▁", SentencePiece's space


def _llama_pipeline(data: dict, config: dict) -> dict:
    """transformers' LlamaTokenizer.__init__ on the file's vocab and merges: byte-fallback BPE without an unk
    token, a Metaspace pre-tokenizer, no normalizer; the decoder strips the prepended space only if one is added."""
    prefix = config.get("add_prefix_space")
    prefix = True if prefix is None else bool(prefix)
    scheme = ("always" if config.get("legacy", False) else "first") if prefix else "never"
    model = data["model"]
    data["model"] = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                     "vocab": model["vocab"], "merges": model["merges"]}
    data["normalizer"] = None
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": _META, "prepend_scheme": scheme, "split": False}
    steps = [{"type": "Replace", "pattern": {"String": _META}, "content": " "}, {"type": "ByteFallback"},
             {"type": "Fuse"}]
    if prefix:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    data["decoder"] = {"type": "Sequence", "decoders": steps}
    return data


# tokenizer_class -> (the model type its __init__ builds, pipeline(tokenizer.json data, config), default specials)
_CLASSES = {
    name: ("BPE", _llama_pipeline, {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"})
    for name in ("LlamaTokenizer", "LlamaTokenizerFast")
}


def class_pipeline(backend: tokenizers.Tokenizer, config: dict) -> tokenizers.Tokenizer:
    """tokenizer.json's tokenizer as transformers runs it under config's tokenizer_class (the same one when the
    class reads the file as it is, or builds another kind of model than the file's)."""
    entry = _CLASSES.get(config.get("tokenizer_class"))
    if entry is None:
        return backend
    data = json.loads(backend.to_str())
    if data["model"].get("type") != entry[0]:
        return backend
    return tokenizers.Tokenizer.from_str(json.dumps(entry[1](data, config)))


def class_special_defaults(config: dict, named: dict) -> dict[str, str]:
    """The class's default special tokens for the names neither config nor `named` (what the checkpoint's files
    name) sets; a name the config sets to null stays unset."""
    entry = _CLASSES.get(config.get("tokenizer_class"))
    defaults = entry[2] if entry else {}
    return {name: token for name, token in defaults.items() if name not in config and name not in named}
