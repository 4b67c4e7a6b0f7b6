"""Ocellus: one readable PyTorch implementation of the multimodal-LLM stack.

    model = ocellus.load(path_or_hub_id, dtype=None, device=None)
    proc  = ocellus.load_processor(path_or_hub_id)
    ids   = model.generate(**proc(...), max_new_tokens=32)
    ocellus.save(model, out_dir)
"""
from ocellus.errors import CheckpointError, ConfigError, InputError, OcellusError

__version__ = "0.1.0"


def load(path_or_hub_id, dtype=None, device=None):
    """A Hugging Face-format checkpoint dir (config.json + safetensors) or hub id -> model."""
    from ocellus.hub.checkpoint import load_model
    return load_model(path_or_hub_id, dtype=dtype, device=device)


def load_processor(path_or_hub_id):
    """A checkpoint's input side: a `Processor` (tokenizer + image processor + chat template + image-token
    expansion) when the directory has an image processor config (preprocessor_config.json, or
    processor_config.json's "image_processor" section as transformers 5 writes it), else its `Tokenizer`."""
    from ocellus.data.processor import Processor, image_processor_dict
    from ocellus.data.tokenizer import Tokenizer
    from ocellus.hub.resolve import resolve
    directory = resolve(path_or_hub_id)
    if image_processor_dict(directory) is not None:
        return Processor.from_dir(directory)
    return Tokenizer.from_dir(directory)


def default_model_dir():
    """The embedded default model's directory (ocellus/assets/llava-tiny-shapes, shipped as package data):
    a tiny LLaVA (ViT + MLP connector + decoder) trained from scratch on the shapes world by
    scripts/make_default_model.sh. `ocellus demo` and `ocellus chat` use it when no --model is given."""
    from pathlib import Path
    path = Path(__file__).resolve().parent / "assets" / "llava-tiny-shapes"
    if not (path / "config.json").is_file():
        raise CheckpointError(f"the embedded default model is missing from {path}; rebuild it with "
                              "scripts/make_default_model.sh (or pass --model DIR)")
    return path


def save(model, out_dir, tokenizer=None, processor=None, max_shard_bytes: int = 5 * 2**30):
    """Write HF format (config.json + safetensors, sharded past max_shard_bytes); opens in transformers.
    tokenizer: written beside it. processor (a VLM's `Processor`): its tokenizer, chat template and, for
    LLaVA / LLaVA-NeXT, processor_config.json, so transformers' AutoProcessor prompts it as Ocellus does
    (the image processor config is the family's: preprocessor_config.json)."""
    import json
    from pathlib import Path
    from ocellus.hub.checkpoint import save_model
    from ocellus.hub.processor_files import write_processor_files
    out = save_model(model, out_dir, max_shard_bytes=max_shard_bytes)
    if processor is not None:
        tokenizer = tokenizer or processor.tokenizer
        model_type = json.loads((Path(out) / "config.json").read_text()).get("model_type")
        write_processor_files(processor, out, model_type)
    if tokenizer is not None:
        tokenizer.save(out)
    return out


__all__ = ["load", "load_processor", "save", "default_model_dir", "OcellusError", "InputError", "ConfigError", "CheckpointError",
           "__version__"]
