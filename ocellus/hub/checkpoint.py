"""Load and save whole models, strictly: the one path of every kind Ocellus writes (decoder LMs, VLMs, vision
towers, BERT, dual encoders, generators, unified models), in Hugging Face format or Ocellus' own spec format.

Load: config.json -> its family in the registry (hub/families.py) -> model built without random init -> every
checkpoint tensor mapped through the family's key table (or explicitly dropped), every model tensor filled,
shapes checked; anything else is a CheckpointError listing all problems at once.
Save: the same table backwards; config.json; tied weights written once, as transformers expects.
"""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import torch
from torch import nn

from ocellus.errors import CheckpointError, ConfigError
from ocellus.hub.checkpoint_dir import read_config, read_json_object  # noqa: F401  (importers read it from here too)
from ocellus.hub.families import Family, family_for_config, family_for_model
from ocellus.hub.fp8 import FP8_METHOD, dequantize_checkpoint, is_fp8
from ocellus.hub.keymap import KeyMap
from ocellus.hub.processor_files import write_processor_files
from ocellus.hub.resolve import resolve
from ocellus.nn.lora import merged_state_dict
from ocellus.nn.quant import QUANT_METHOD, Int8Linear, quantization_config, quantize_model, quantized_modules, replace_module
from ocellus.hub.safetensors_io import _atomic_write_text, checkpoint_files, read_tensors, write_tensors

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).replace("torch.", "") in _DTYPES:
        return _DTYPES[str(dtype).replace("torch.", "")]
    raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")


@contextlib.contextmanager
def _skip_init(dtype: torch.dtype):
    """Build modules without running their random initialisers (the checkpoint overwrites every
    tensor; init of a large model costs seconds) and directly in the target dtype."""
    saved = {n: getattr(nn.init, n) for n in ("kaiming_uniform_", "uniform_", "normal_", "zeros_", "ones_",
                                               "trunc_normal_", "xavier_uniform_", "xavier_normal_")}
    old_dtype = torch.get_default_dtype()
    try:
        for n in saved:
            setattr(nn.init, n, lambda t, *a, **k: t)
        torch.set_default_dtype(dtype)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)
        torch.set_default_dtype(old_dtype)


QUANTIZE_CHOICES = ("int8",)


def parse_quantize(quantize) -> str | None:
    if quantize in (None, "none", ""):
        return None
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"unknown quantize {quantize!r}; use one of {list(QUANTIZE_CHOICES)} or None")
    return quantize


def _quantized_layout(model: nn.Module, qcfg, where: str) -> None:
    """Swap in an empty Int8Linear for each module a quantized checkpoint's quantization_config names
    (filled by the strict load that follows: no float weight is read or made)."""
    if not isinstance(qcfg, dict) or qcfg.get("quant_method") != QUANT_METHOD or qcfg.get("bits") != 8:
        raise CheckpointError(f"{where}: quantization_config {qcfg!r} is not one Ocellus reads "
                              f"(quant_method {QUANT_METHOD!r}, bits 8)")
    names = qcfg.get("modules")
    if not isinstance(names, list) or not names:
        raise CheckpointError(f"{where}: quantization_config names no quantized modules")
    for name in names:
        try:
            mod = model.get_submodule(str(name))
        except AttributeError:
            mod = None
        if not isinstance(mod, nn.Linear):
            raise CheckpointError(f"{where}: quantization_config names {name!r}, which is not a Linear layer of "
                                  f"{type(model).__name__}")
        replace_module(model, name, Int8Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                               dtype=mod.weight.dtype, device=mod.weight.device))


def _untied(tied: tuple[str, ...], model: nn.Module) -> tuple[str, ...]:
    """A tied weight whose module is int8 has its own tensor (the embedding it was tied to stays float)."""
    q = set(quantized_modules(model))
    return tuple(k for k in tied if k.rpartition(".")[0] not in q)


def _scale_key(name: str | None) -> tuple[str | None, str]:
    """'x.weight_scale' -> ('x.weight', '_scale'): a scale is named after its weight on both sides."""
    if name is not None and name.endswith(".weight_scale"):
        return name[:-len("_scale")], "_scale"
    return name, ""


def key_to_ours(keymap: KeyMap, theirs: str) -> str | None:
    base, suffix = _scale_key(theirs)
    ours = keymap.to_ours(base)
    return ours + suffix if ours is not None else None


def key_to_theirs(keymap: KeyMap, ours: str) -> str | None:
    base, suffix = _scale_key(ours)
    theirs = keymap.to_theirs(base)
    return theirs + suffix if theirs is not None else None


def load_model(path_or_id, dtype=None, device=None, quantize=None, family: Family | None = None) -> nn.Module:
    """The one strict load (ocellus.load, and every kind's loader: load_vision, load_generator, load_unified):
    config.json -> its family in the registry (hub/families.py) -> the model built without random init -> every
    checkpoint tensor through the family's key table. family: read the directory as this Family instead (an
    image tower read out of a CLIPModel checkpoint). quantize="int8": the decoder's Linear layers as Int8Linear
    (nn/quant.py): a float checkpoint is quantized after loading, an int8 checkpoint (config.json
    quantization_config) is read as it is. An int8 checkpoint loaded without quantize is refused: its weights
    are not float weights. A block-scaled fp8 checkpoint (DeepSeek-V3's release format) is dequantised into
    `dtype` on load (hub/fp8.py); any other quantization_config is a ConfigError naming its method. Keys the
    family marks checkpoint-only for this config (DeepSeek-V3's MTP layers) are skipped."""
    path = resolve(path_or_id)
    cfg = read_config(path)
    where = str(path / "config.json")
    fam = family or family_for_config(cfg, where=where)
    quantize = parse_quantize(quantize)
    qcfg = cfg.get("quantization_config")
    int8 = qcfg is not None and not is_fp8(qcfg)     # Ocellus' own int8 (or a method refused just below)
    if int8:
        method = qcfg.get("quant_method") if isinstance(qcfg, dict) else qcfg
        if method != QUANT_METHOD:
            raise ConfigError(f"{where}: quantization_config quant_method {method!r} is not one Ocellus reads: "
                              f"{FP8_METHOD!r} (block-scaled float8, DeepSeek-V3's release format; dequantised on "
                              f"load) and {QUANT_METHOD!r} (Ocellus' int8, with quantize='int8')")
        if quantize is None:
            raise CheckpointError(f"{path} holds int8-quantized weights (config.json quantization_config "
                                  f"{method}): load it with quantize='int8' (--quantize int8), or load the float "
                                  f"checkpoint it was made from")
    dtype = parse_dtype(dtype) or parse_dtype(cfg.get("dtype") or cfg.get("torch_dtype")) or torch.float32

    def build(cfg):
        with _skip_init(dtype):
            model = fam.build(cfg)
        if int8:
            _quantized_layout(model, qcfg, where)
        return model
    model = build(cfg)
    tensors = read_tensors(checkpoint_files(path))
    if separate_copies(model, tensors, fam.keymap, _untied(fam.tied(model), model)):
        # a head the config ties but the checkpoint holds apart (InternVL's top-level default true over an untied
        # text_config): transformers 5 keeps the two apart, and so do we, rather than drop the head
        model = build(untied_config(cfg))
    skipped = [re.compile(p) for p in fam.checkpoint_only(cfg)]
    if skipped:
        tensors = {k: t for k, t in tensors.items() if not any(p.match(k) for p in skipped)}
    if qcfg is not None and not int8:
        tensors = dequantize_checkpoint(tensors, qcfg, dtype, where)
    if fam.from_checkpoint is not None:
        tensors = fam.from_checkpoint(tensors)
    load_state_strict(model, tensors, fam.keymap, tied=_untied(fam.tied(model), model), source=str(path))
    if quantize is not None and not int8:
        quantize_model(model)
    model.eval()
    model.name_or_path = str(path_or_id)
    model.family_name = fam.name
    # the checkpoint's generation defaults (None: no file), read by the engine (infer/generation_config.py),
    # written back by save
    model.generation_defaults = read_json_object(path / "generation_config.json")
    return model.to(device) if device is not None else model


def load_state_strict(model: nn.Module, tensors: dict[str, torch.Tensor], keymap: KeyMap,
                      tied: tuple[str, ...] = (), source: str = "checkpoint") -> None:
    ours = model.state_dict()
    filled: dict[str, torch.Tensor] = {}
    unexpected, mismatched, wrong_shape = [], [], set()
    for theirs, t in tensors.items():
        if keymap.dropped(theirs):
            continue
        key = key_to_ours(keymap, theirs)
        if key in tied:              # a tied copy (some exports write it): the source tensor wins
            continue
        if key is None or key not in ours:
            unexpected.append(theirs)
        elif tuple(t.shape) != tuple(ours[key].shape):
            mismatched.append(f"{theirs}: checkpoint {tuple(t.shape)} vs model {tuple(ours[key].shape)}")
            wrong_shape.add(key)
        else:
            filled[key] = t
    missing = [key_to_theirs(keymap, k) or k for k in ours if k not in filled and k not in tied and k not in wrong_shape]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match its config ({type(model).__name__}):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(filled, strict=False)  # copies, casting to the model's dtype


def separate_copies(model: nn.Module, tensors: dict[str, torch.Tensor], keymap: KeyMap,
                    tied: tuple[str, ...]) -> list[str]:
    """The tied keys (ours) whose checkpoint tensor differs from the one of the weight they are tied to: a head
    trained apart under a config that ties it (some exports write an equal copy, which is no such key)."""
    if not tied:
        return []
    ours = model.state_dict()
    found = {}
    for theirs, t in tensors.items():
        key = None if keymap.dropped(theirs) else key_to_ours(keymap, theirs)
        if key is not None:
            found[key] = t
    out = []
    for key in tied:
        ptr = ours[key].data_ptr()
        src = next((k for k, v in ours.items() if k not in tied and v.data_ptr() == ptr), None)
        if key in found and src in found and (found[key].shape != found[src].shape
                                              or not torch.equal(found[key], found[src])):
            out.append(key)
    return out


def untied_config(cfg: dict) -> dict:
    """config.json with every tie_word_embeddings (top level, text_config) false."""
    out = {**cfg, "tie_word_embeddings": False}
    if isinstance(cfg.get("text_config"), dict):
        out["text_config"] = {**cfg["text_config"], "tie_word_embeddings": False}
    return out


# config.json's record of the side of the images a vision-language model trained on (written by a recipe's
# export, train/vlm_export.py): `ocellus eval` renders its scenes at that side. Without it eval falls back to the
# tower's input size, which is not what a tiling family (InternVL: 2x2 tiles + thumbnail) trains on.
SCENE_SIZE_KEY = "ocellus_scene_size"


def record_scene_size(model_dir, size: int) -> None:
    """Write `size` into model_dir's config.json as ocellus_scene_size (transformers ignores the extra key)."""
    path = Path(model_dir) / "config.json"
    _atomic_write_text(path, json.dumps({**json.loads(path.read_text()), SCENE_SIZE_KEY: int(size)}, indent=2))


def trained_scene_size(model_dir) -> int | None:
    """config.json's ocellus_scene_size in a local checkpoint dir, else None (a hub id, a dir without it)."""
    path = Path(str(model_dir)) / "config.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get(SCENE_SIZE_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{path}: {SCENE_SIZE_KEY} must be a positive integer (pixels), got {value!r}")
    return value


def save_model(model: nn.Module, out_dir, max_shard_bytes: int = 5 * 2**30, tokenizer=None, processor=None) -> Path:
    """Write HF format (config.json + safetensors, sharded past max_shard_bytes); opens in transformers
    (`ocellus.save`). tokenizer: written beside it. processor (a VLM's `Processor`): its tokenizer, chat template
    and, for LLaVA / LLaVA-NeXT, processor_config.json, so transformers' AutoProcessor prompts it as Ocellus does
    (the image processor config is the family's: preprocessor_config.json)."""
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        raise ConfigError(f"{type(model).__name__}'s parameters are shards (FSDP): gather the full tensors on one "
                          f"rank and save a plain copy (train/run.py `exportable` does this after training)")
    fam: Family = family_for_model(model)
    out = Path(out_dir)
    cfg = fam.hf_config(model)   # first: a model its format cannot describe is refused before anything is written
    tied = set(_untied(fam.tied(model), model))
    tensors = {}
    for k, t in merged_state_dict(model).items():   # LoRA adapters folded in: plain HF weights
        if k in tied:
            continue
        name = key_to_theirs(fam.keymap, k)
        if name is None:
            raise CheckpointError(f"{type(model).__name__}.{k} has no checkpoint name in the {fam.name} key table")
        tensors[name] = t.detach().cpu()
    if fam.to_checkpoint is not None:
        tensors = fam.to_checkpoint(tensors)
    write_tensors(tensors, out, max_shard_bytes=max_shard_bytes)
    if fam.config_dtype:
        cfg["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    cfg.pop("torch_dtype", None)
    cfg.pop("quantization_config", None)
    if quantized_modules(model):      # int8 weights (nn/quant.py): only quantize="int8" reads them back
        cfg["quantization_config"] = quantization_config(model)
    _atomic_write_text(out / "config.json", json.dumps(cfg, indent=2, sort_keys=True))
    if getattr(model, "generation_defaults", None) is not None:
        _atomic_write_text(out / "generation_config.json", json.dumps(model.generation_defaults, indent=2))
    if processor is not None:
        tokenizer = tokenizer or processor.tokenizer
        write_processor_files(processor, out, cfg.get("model_type"))
    if tokenizer is not None:
        tokenizer.save(out)
    return out
