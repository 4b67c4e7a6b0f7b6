"""A trained vision-language model's processor and export: its family's training processor at the recipe's
image size, and the HF-format directory (weights, tokenizer, chat template, processor files) that
`ocellus.load_processor` and transformers' AutoProcessor open. Task vlm and every post-training method
(their policies, the reward model's backbone) export through `export_vlm`."""
from __future__ import annotations

import json
from pathlib import Path

from ocellus.errors import ConfigError
from ocellus.hub.checkpoint import record_scene_size, save_model
from ocellus.hub.families import family_for_model
from ocellus.hub.families import family_module, VLM_FAMILIES
from ocellus.train.recipe_data import IMAGE_MEAN, IMAGE_STD, image_config


def family_of(model) -> str:
    name = family_for_model(model).name
    if name not in VLM_FAMILIES:
        raise ConfigError(f"task vlm needs a vision-language model; this is a {name!r} model")
    return name


def model_image_size(model) -> int:
    config = getattr(getattr(model, "vision_tower", None), "config", None)
    if config is None or not hasattr(config, "image_size"):
        raise ConfigError("data.image_size is required for this model (its vision tower has no fixed image size)")
    return int(config.image_size)


def training_processor(model, tok, size: int):
    """The processor of the model's family at the recipe's image size (mean/std 0.5)."""
    return family_module(family_of(model)).training_processor(model, tok, image_config(size))


def export_vlm(model, tok, size: int, path: Path) -> Path:
    """model + tokenizer as a checkpoint dir, with the processor's chat template (+ processor_config.json for
    LLaVA) so transformers prompts it too, and the image preprocessing at `size`. No model card: the runner
    that knows the recipe writes it (run.export, run.run_method). config.json also records `size` as
    ocellus_scene_size: the side of the images it trained on, which `ocellus eval` renders its scenes at -- a
    tiling family (InternVL) trains on scenes larger than its tower's input, and scored on tower-sized scenes
    it sees one tile of a picture it never saw so small (transformers ignores the extra key)."""
    path = Path(path)
    save_model(model, path, tokenizer=tok, processor=training_processor(model, tok, size))
    record_scene_size(path, size)
    family = family_module(family_of(model))
    if hasattr(family, "export_processor"):  # a family whose preprocessing has more than size/mean/std
        family.export_processor(model, tok, image_config(size), path)
        return path
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
        "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD), "resample": 3}, indent=2))
    return path
