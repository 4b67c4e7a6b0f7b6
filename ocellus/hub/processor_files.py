"""A checkpoint's processor files, read and written.

Read: the settings a processor is built from (data/processor.py, each family's processor.py): the image
processor's (preprocessor_config.json, or processor_config.json's "image_processor" section as transformers 5
writes it), a video model's video processor's, and config.json's model_type, which picks the family; every file
is untrusted JSON (hub/checkpoint_dir.py: a file that is not a JSON object is a CheckpointError naming it).

Written: what transformers' AutoProcessor reads beside the tokenizer's and the image processor's: the chat
template (chat_template.jinja) and, for LLaVA-style processors, processor_config.json (which class, how
many tokens an image becomes). With them an exported VLM is prompted the same way in transformers
(`AutoProcessor.from_pretrained(dir).apply_chat_template(...)`) as in Ocellus."""
from __future__ import annotations

import json
from pathlib import Path

from ocellus.hub.checkpoint_dir import read_json_object

def read_json(path: Path) -> dict | None:
    """A JSON object file of a checkpoint dir, None when it is not there."""
    return read_json_object(path)   # a CheckpointError naming the file when it is not a JSON object


def read_model_type(directory) -> str | None:
    """config.json's model_type (None without config.json or without the key); a config.json that is not a
    JSON object is a CheckpointError naming it."""
    return (read_json(Path(directory) / "config.json") or {}).get("model_type")


def _settings(directory, own_file: str, section: str) -> dict | None:
    """A processor's settings: its own file (transformers 4 and hub checkpoints), else its section of
    processor_config.json (transformers 5 writes only that); None when the directory has neither."""
    directory = Path(directory)
    own = read_json(directory / own_file)
    if own is not None:
        return own
    found = (read_json(directory / "processor_config.json") or {}).get(section)
    return found if isinstance(found, dict) else None


def image_processor_dict(directory) -> dict | None:
    """The image processor's settings in a checkpoint dir: preprocessor_config.json, else processor_config.json's
    "image_processor" section. None for a text-only checkpoint."""
    return _settings(directory, "preprocessor_config.json", "image_processor")


def video_processor_dict(directory) -> dict | None:
    """A video model's video processor settings: video_preprocessor_config.json, else processor_config.json's
    "video_processor" section; None when neither is there."""
    return _settings(directory, "video_preprocessor_config.json", "video_processor")


# model_type -> the transformers processor class that expands one <image> into the tower's token count
PROCESSOR_CLASSES = {"llava": "LlavaProcessor", "llava_next": "LlavaNextProcessor"}


def write_processor_files(processor, path, model_type: str | None) -> None:
    """processor: an ocellus.data.processor.Processor. Writes the image / video processor settings it was read
    with (Processor.source_settings: preprocessor_config.json, video_preprocessor_config.json), chat_template.jinja
    when it has a template and processor_config.json when model_type has a LLaVA-style processor class."""
    path = Path(path)
    for name, settings in getattr(processor, "source_settings", {}).items():
        (path / name).write_text(json.dumps(settings, indent=2))
    template = processor.chat_template
    if template:
        (path / "chat_template.jinja").write_text(template)
    if model_type in PROCESSOR_CLASSES:
        (path / "processor_config.json").write_text(json.dumps({
            "processor_class": PROCESSOR_CLASSES[model_type], "image_token": processor.image_token,
            "patch_size": processor.patch_size, "vision_feature_select_strategy": processor.feature_select,
            "num_additional_image_tokens": processor.num_extra_tokens}, indent=2))
    elif model_type == "llava_onevision":
        (path / "processor_config.json").write_text(json.dumps(onevision_processor_config(processor), indent=2))


def onevision_processor_config(processor) -> dict:
    """LlavaOnevisionProcessor's settings: it counts an image's tokens from num_image_tokens (one tile's patches,
    a square: (tile / patch)^2) and vision_aspect_ratio (the anyres_max_N cap), which transformers defaults to
    anyres_max_9 when the file leaves them out, whatever the model packs."""
    return {"processor_class": "LlavaOnevisionProcessor", "image_token": processor.image_token,
            "num_image_tokens": (processor.tile_size // processor.patch_size) ** 2,
            "vision_feature_select_strategy": processor.feature_select,
            "vision_aspect_ratio": f"anyres_max_{processor.max_patches}"}
