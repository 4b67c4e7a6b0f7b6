"""Ocellus: one readable PyTorch implementation of the multimodal-LLM stack.

    model = ocellus.load(path_or_hub_id, dtype=None, device=None, quantize=None)
    proc  = ocellus.load_processor(path_or_hub_id)
    ids   = model.generate(**proc(...), max_new_tokens=32)
    ocellus.save(model, out_dir)
"""
from ocellus.errors import CheckpointError, ConfigError, InputError, OcellusError

__version__ = "0.1.0"


def load(path_or_hub_id, dtype=None, device=None, quantize=None):
    """A Hugging Face-format checkpoint dir (config.json + safetensors) or hub id -> model.
    quantize="int8": the decoder's Linear layers hold per-channel int8 weights (nn/quant.py); `dtype` stays
    the compute dtype. A checkpoint saved quantized loads only with quantize="int8"."""
    from ocellus.hub.checkpoint import load_model   # in the function: the root runs before every ocellus import
    return load_model(path_or_hub_id, dtype=dtype, device=device, quantize=quantize)


def load_processor(path_or_hub_id):
    """A checkpoint's input side: a `Processor` (tokenizer + image processor + chat template + image-token
    expansion) when the directory has an image processor config (preprocessor_config.json, or
    processor_config.json's "image_processor" section as transformers 5 writes it), else its `Tokenizer`."""
    from ocellus.data.processor import load_processor as load   # in the function: as load's
    return load(path_or_hub_id)


def default_model_dir():
    """The embedded default model's directory (ocellus/assets/llava-tiny-shapes, shipped as package data):
    a tiny LLaVA (ViT + MLP connector + decoder) trained from scratch on the shapes world by
    scripts/make_default_model.sh. `ocellus demo` and `ocellus chat` use it when no --model is given."""
    from ocellus.hub.resolve import default_model_dir as embedded   # in the function: as load's
    return embedded()


def save(model, out_dir, tokenizer=None, processor=None, max_shard_bytes: int = 5 * 2**30):
    """Write HF format (config.json + safetensors, sharded past max_shard_bytes); opens in transformers.
    tokenizer: written beside it. processor (a VLM's `Processor`): its tokenizer, chat template and, for
    LLaVA / LLaVA-NeXT, processor_config.json, so transformers' AutoProcessor prompts it as Ocellus does
    (the image processor config is the family's: preprocessor_config.json)."""
    from ocellus.hub.checkpoint import save_model   # in the function: as load's
    return save_model(model, out_dir, max_shard_bytes=max_shard_bytes, tokenizer=tokenizer, processor=processor)


__all__ = ["load", "load_processor", "save", "default_model_dir", "OcellusError", "InputError", "ConfigError", "CheckpointError",
           "__version__"]
