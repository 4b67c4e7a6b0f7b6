"""The files transformers' AutoProcessor reads beside the tokenizer's and the image processor's: the chat
template (chat_template.jinja) and, for LLaVA-style processors, processor_config.json (which class, how
many tokens an image becomes). With them an exported VLM is prompted the same way in transformers
(`AutoProcessor.from_pretrained(dir).apply_chat_template(...)`) as in Ocellus."""
from __future__ import annotations

import json
from pathlib import Path

# model_type -> the transformers processor class that expands one <image> into the tower's token count
PROCESSOR_CLASSES = {"llava": "LlavaProcessor", "llava_next": "LlavaNextProcessor"}


def write_processor_files(processor, path, model_type: str | None) -> None:
    """processor: an ocellus.data.processor.Processor. Writes chat_template.jinja when it has a template
    and processor_config.json when model_type has a LLaVA-style processor class."""
    path = Path(path)
    template = processor.chat_template
    if template:
        (path / "chat_template.jinja").write_text(template)
    if model_type in PROCESSOR_CLASSES:
        (path / "processor_config.json").write_text(json.dumps({
            "processor_class": PROCESSOR_CLASSES[model_type], "image_token": processor.image_token,
            "patch_size": processor.patch_size, "vision_feature_select_strategy": processor.feature_select,
            "num_additional_image_tokens": processor.num_extra_tokens}, indent=2))
