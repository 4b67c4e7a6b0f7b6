"""BLIP-2's processor (MiniGPT-4's too): each image becomes num_query_tokens placeholders, the Q-Former's
outputs; MiniGPT-4 renders prompts with its own template and wraps images in <Img>...</Img>.

BLIP-2's text= call is transformers' Blip2Processor's: the prompt holds no placeholder, and each sample's one
image puts its num_query_tokens image tokens in front of the encoded text, before its BOS and outside the
padding (`processor(images=image, text="Question: what is this? Answer:")`)."""
from __future__ import annotations

from pathlib import Path

import torch

from ocellus.data.image import ImageProcessorConfig, load_image, preprocess
from ocellus.data.media_per_sample import images_per_sample
from ocellus.data.processor import image_processor_dict, Processor, ProcessorOutput
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError, InputError
from ocellus.hub.checkpoint_dir import read_json_object
from ocellus.models.families.blip2.modeling import VARIANTS, Blip2


def image_inputs_fn(image_config, num_query_tokens: int, max_pixels=None):
    """The processor's image side: each image -> pixel_values [1, 3, H, W] and num_query_tokens placeholders."""

    def image_inputs(images):
        return {"pixel_values": preprocess(images, image_config, max_pixels=max_pixels)}, [num_query_tokens] * len(images)
    return image_inputs


class Blip2Processor(Processor):
    """Processor whose text= call with images is transformers' Blip2Processor's (the module docstring); messages=
    and image-free text= are the shared Processor's."""

    def __call__(self, messages=None, images=None, *, text=None, **kwargs) -> ProcessorOutput:
        if messages is None and text is None and images is not None:
            return self._images_alone(images)
        if messages is not None or text is None or images is None:
            return super().__call__(messages, images, text=text, **kwargs)
        prompts = [text] if isinstance(text, str) else text
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(t, str) for t in prompts):
            raise InputError("text must be a string or a non-empty list of strings")
        for b, prompt in enumerate(prompts):
            # transformers would put the query tokens in front and keep these too: more image tokens than the
            # image has queries, which its model refuses (masked_scatter) -- refuse it here, naming the sample
            if self.image_token in prompt:
                raise InputError(f"sample {b}: the text holds {prompt.count(self.image_token)} {self.image_token!r} "
                                 f"placeholders; BLIP-2's processor puts each image's query tokens in front of the "
                                 f"text itself (as transformers' Blip2Processor): write the prompt without them")
        try:
            per_sample = images_per_sample(images, [1] * len(prompts))
        except InputError as e:
            raise InputError(f"BLIP-2's text= call takes one image per text (its query tokens go in front of "
                             f"that text): {e}") from None
        out = super().__call__(text=text, **kwargs)     # the text alone: its BOS, padded as the call asks
        loaded = [load_image(srcs[0], name=f"sample {b}, image 0", max_pixels=self.max_pixels)
                  for b, srcs in enumerate(per_sample)]
        images_out, counts = self.image_inputs(loaded)
        return _prefix_image_tokens(out, counts, self.image_token_id, images_out)


    def _images_alone(self, images) -> ProcessorOutput:
        """`processor(images=image)` (captioning): pixel_values alone, as transformers'; the model's generate then
        writes the prompt (each image's query tokens + BOS)."""
        flat = images_per_sample(images, [len(images) if isinstance(images, (list, tuple)) else 1])[0]
        if not flat:
            raise InputError("images is empty: pass at least one image (or text= / messages=)")
        loaded = [load_image(src, name=f"image {j}", max_pixels=self.max_pixels) for j, src in enumerate(flat)]
        return ProcessorOutput(self.image_inputs(loaded)[0])


def _prefix_image_tokens(out: ProcessorOutput, counts: list[int], image_id: int, images_out: dict) -> ProcessorOutput:
    """Each row's image tokens in front of its padded text, attended (transformers' layout: padding stays between
    them and the text when it is on the left)."""
    ids, mask = out["input_ids"], out["attention_mask"]
    if isinstance(ids, torch.Tensor):
        n = counts[0]   # one image per row, every image num_query_tokens: one width
        front = torch.full((ids.shape[0], n), image_id, dtype=ids.dtype)                   # [B, Q]
        out["input_ids"] = torch.cat([front, ids], dim=1)                                   # [B, Q + T]
        out["attention_mask"] = torch.cat([torch.ones_like(front), mask], dim=1)          # [B, Q + T]
    else:
        out["input_ids"] = [[image_id] * n + row for n, row in zip(counts, ids)]
        out["attention_mask"] = [[1] * n + row for n, row in zip(counts, mask)]
    out.update(images_out)
    return out


def _processor(tok, image_config, num_query_tokens: int, qformer_part: str = "connector", image_wrap=("", "")):
    """MiniGPT-4 (qformer_part "vision") renders prompts with its own template; BLIP-2 with the tokenizer's, and its
    text= call is transformers' Blip2Processor's (Blip2Processor; MiniGPT-4 has no such processor: the shared one)."""
    size = image_config.size_hw or image_config.crop_size
    if not size:
        raise ConfigError("a BLIP-2 processor needs a fixed image size (size: {height, width})")
    variant = VARIANTS["minigpt4" if qformer_part == "vision" else "blip2"]
    cls = Processor if qformer_part == "vision" else Blip2Processor
    return cls(tok, image_config, patch_size=size[0], num_extra_tokens=0, feature_select="full",
               image_inputs=image_inputs_fn(image_config, num_query_tokens), image_wrap=tuple(image_wrap),
               chat_template=variant["chat_template"], stop_strings=variant["stop_strings"])


def training_processor(model: Blip2, tok, image_config):
    return _processor(tok, image_config, model.num_query_tokens, model.qformer_part, model.image_wrap)


def processor_from_dir(directory):
    directory = Path(directory)
    image_dict = image_processor_dict(directory)
    if image_dict is None:
        raise ConfigError(f"{directory}: no preprocessor_config.json; a BLIP-2 checkpoint needs its image settings")
    cfg = read_json_object(directory / "config.json") or {}
    queries = int(cfg.get("num_query_tokens", 32))
    # transformers' Blip2Processor counts the image tokens with processor_config.json's num_query_tokens, its
    # model with config.json's: two counts would give ids the model refuses
    stated = (read_json_object(directory / "processor_config.json", ConfigError) or {}).get("num_query_tokens")
    if stated is not None and stated != queries:
        raise ConfigError(f"{directory}: processor_config.json's num_query_tokens is {stated}, but config.json's "
                          f"is {queries} (the Q-Former's query count)")
    proc = _processor(Tokenizer.from_dir(directory), ImageProcessorConfig.from_dict(image_dict),
                      queries, cfg.get("qformer_part", "connector"), cfg.get("image_wrap") or ("", ""))
    index = cfg.get("image_token_index")
    if index is not None and index != proc.image_token_id:
        raise ConfigError(f"{directory}: the tokenizer's image token has id {proc.image_token_id}, but config.json's "
                          f"image_token_index is {index}")
    return proc
