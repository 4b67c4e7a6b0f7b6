"""The multimodal processor: structured messages + images -> the model's inputs.

    proc = Processor.from_dir(checkpoint)
    batch = proc(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
                 images=[pil_or_path], return_tensors="pt")
    batch -> {"input_ids" [B, T], "attention_mask" [B, T], "pixel_values" [N, 3, H, W]}
             (+ "image_sizes" [N, 2] and pixel_values [N, V, 3, H, W] for anyres checkpoints)

A Processor is four things a checkpoint directory describes:
- the tokenizer (tokenizer.json + tokenizer_config.json, ocellus/data/tokenizer.py);
- the image processor numbers (preprocessor_config.json, or the "image_processor" section of
  processor_config.json, which is where transformers 5 writes them), ocellus/data/image.py;
- the chat template (chat_template.jinja, or the tokenizer's);
- the image-token expansion: each image placeholder in the rendered prompt becomes as many image
  tokens as the vision tower yields for that image. The count comes from config.json (the vision
  tower's patch size, whether it has a CLS token, vision_feature_select_strategy, and for LLaVA-NeXT
  the anyres grid canvases) through `tokens_per_image`, the same function the model side counts
  with, so the two cannot disagree.

Two image layouts:
- single view (LLaVA, LLaVA-1.5): every image is resized/cropped to the tower's size, pixel_values
  [N, 3, H, W], the same token count for every image;
- anyres (LLaVA-NeXT, `image_grid_pinpoints`): a global view plus the tiles of the best grid canvas,
  pixel_values [N, V, 3, H, W] (views zero-padded to the batch's largest V) and image_sizes [N, 2]
  (original (H, W)); each image's token count depends on its own size.

What happens on a call, per conversation (the order transformers' LlavaProcessor uses, so ids match it):

    messages --normalize--> parts --chat template--> "<s>USER: <image>\\nWhat?ASSISTANT:"
             --each <image> repeated tokens_per_image(that image) times--> encode (no extra BOS: the
             template writes its own) --> ids; images --load_image, preprocess--> pixel_values
    then the rows are padded (left by default, for generation) into one batch.

Loud errors (principle 6): a conversation whose image placeholders do not match its images
raises InputError naming the sample; a tokenizer whose image token id differs from the model's
`image_token_index`, or a processor_config.json that counts image tokens differently from the
model, raises ConfigError when the processor is built, not after a silent mismatch at run time.

Other families (BLIP-2, Flamingo, Qwen2-VL, InternVL, ...) pass their own `image_inputs` function
(see ImageInputs) and build their processor in their family module (models/families/registry.py);
`from_dir` hands a checkpoint whose config.json model_type is theirs to that module.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ocellus.data.image import DEFAULT_MAX_PIXELS, ImageProcessorConfig, load_image, preprocess
from ocellus.data.image_tiling import preprocess_anyres, tokens_per_image
from ocellus.data.messages import normalize
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import ConfigError, InputError
from ocellus.hub.checkpoint_dir import read_json_object
from ocellus.data.templates import JinjaTemplate

# config.json model types this processor serves: one fixed-size ViT view, or LLaVA-NeXT anyres
SUPPORTED_MODEL_TYPES = ("llava", "llava_next")

# A family's own image path (BLIP-2 query slots, Qwen2-VL dynamic grids, InternVL tiles, ...):
# loaded images -> (tensors the model's forward takes, each concatenable along dim 0 across batches,
# e.g. pixel_values [N, 3, H, W] or Qwen2-VL's patches [sum P, D] + image_grid_thw [N, 3];
# and how many image placeholder tokens each image expands to).
ImageInputs = Callable[[list[Image.Image]], tuple[dict[str, torch.Tensor], list[int]]]


class ProcessorOutput(dict):
    """A dict of model inputs (pass it as `model(**batch)`), with `.to()` for the whole batch."""

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ProcessorOutput":
        """Move every tensor to `device`; `dtype` casts only floating tensors (pixel_values), never ids."""
        out = ProcessorOutput()
        for k, v in self.items():
            if isinstance(v, torch.Tensor):
                v = v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            out[k] = v
        return out


def _read_json(path: Path) -> dict | None:
    return read_json_object(path)   # a CheckpointError naming the file when it is not a JSON object


def read_model_type(directory) -> str | None:
    """config.json's model_type (None without config.json or without the key); a config.json that is not a
    JSON object is a CheckpointError naming it."""
    return (_read_json(Path(directory) / "config.json") or {}).get("model_type")


def image_processor_dict(directory) -> dict | None:
    """The image processor's settings in a checkpoint dir: preprocessor_config.json (transformers 4 and
    hub checkpoints), else processor_config.json's "image_processor" section (transformers 5 writes only
    that). None when the directory has neither, i.e. a text-only checkpoint."""
    directory = Path(directory)
    pre = _read_json(directory / "preprocessor_config.json")
    if pre is not None:
        return pre
    section = (_read_json(directory / "processor_config.json") or {}).get("image_processor")
    return section if isinstance(section, dict) else None


class Processor:
    """Tokenizer + image processor config + chat template + image-token expansion (see the module docstring).

    tokenizer: an ocellus Tokenizer that knows `image_token` as one special token.
    image_config: how images become pixels (resize, crop, normalise).
    patch_size, num_extra_tokens (1 for CLIP's CLS, 0 for SigLIP), feature_select ("default" drops the
        first token, "full" keeps it): how many tokens an image of a given size becomes.
    pad_to_square: LLaVA-1.5's "pad" aspect mode (LlavaImageProcessor's do_pad).
    grid_pinpoints, tile_size: LLaVA-NeXT anyres, the candidate canvases (H, W) and the tower's input
        size; None for single-view models.
    max_pixels: refuse images larger than this, checked on the file header before decoding.
    image_inputs: a family's own image path (ImageInputs); image_wrap: (before, after) text around each
        image's tokens, "{n}" numbering the images of a sample (InternVL, Qwen-VL).
    """

    def __init__(self, tokenizer: Tokenizer, image_config: ImageProcessorConfig, *, patch_size: int,
                 num_extra_tokens: int = 1, feature_select: str = "default", image_token: str = "<image>",
                 pad_to_square: bool = False, chat_template: str | None = None, grid_pinpoints=None,
                 tile_size: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 image_inputs: ImageInputs | None = None, image_wrap: tuple[str, str] = ("", "")):
        self.tokenizer = tokenizer
        self._image_inputs = image_inputs  # a family's own image path (see the ImageInputs docstring)
        # text written around each image's tokens, "{n}" = the image's 1-based number in its sample:
        # InternVL ("<img>", "</img>"), Qwen-VL ("Picture {n}: <img>", "</img>\n"); training's
        # encode_messages takes the same pair, so both sides write the same ids
        self.image_wrap = tuple(image_wrap)
        self.grid_pinpoints = tuple(tuple(int(x) for x in p) for p in grid_pinpoints) if grid_pinpoints else None
        if self.grid_pinpoints is not None:
            if tile_size is None:
                raise ConfigError("anyres processing needs tile_size (the vision tower's image_size)")
            # preprocess_anyres reads the canvases from the image config
            image_config = replace(image_config, image_grid_pinpoints=self.grid_pinpoints)
        self.tile_size = tile_size
        self.image_config = image_config
        self.patch_size = int(patch_size)
        self.num_extra_tokens = int(num_extra_tokens)
        self.feature_select = feature_select
        self.image_token = image_token
        self.image_token_id = self._check_image_token(tokenizer, image_token)
        self.pad_to_square = pad_to_square
        self.max_pixels = max_pixels
        self._chat_template = chat_template
        self._content_format = None  # "parts" or "string", found on the first render
        if image_inputs is not None:
            pass  # the family's function counts tokens itself
        elif self.grid_pinpoints is None:
            self.num_image_tokens(self.patch_size, self.patch_size)  # validates the numbers now
        else:
            self.num_image_tokens(self.tile_size, self.tile_size)

    @staticmethod
    def _check_image_token(tokenizer: Tokenizer, image_token: str) -> int:
        # The placeholder must survive tokenization as exactly one id, or the expanded prompt would hold
        # pieces of "<image>" instead of image tokens and the model's count check would fail far from here.
        index = tokenizer.backend.token_to_id(image_token)
        special = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values() if t.special}
        single = index is not None and tokenizer.encode(image_token, add_special_tokens=False) == [index]
        if not single or image_token not in special:
            raise ConfigError(f"the tokenizer does not have the image token {image_token!r} as one special token; "
                              f"add it (tokenizer_config.json 'image_token' or additional_special_tokens)")
        return index

    # ---- loading ------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path, counts=None) -> "Processor":
        """Build from a LLaVA / LLaVA-NeXT checkpoint directory: tokenizer files, preprocessor_config.json (or
        processor_config.json's image_processor), chat_template.jinja, and config.json for the token count.
        (Other families' dirs: `ocellus.load_processor`, which asks the family registry.)

        config.json is the model's truth (patch size, CLS token, feature strategy, image_token_index), read by
        counts(config, directory) -> the token-count numbers the model uses (the family's:
        models/families/llava.count_from_config); processor_config.json's own numbers (patch_size,
        vision_feature_select_strategy, num_additional_image_tokens, image_token) are used when there is no
        config.json and must agree with it when there is."""
        directory = Path(path)
        _read_json(directory / "config.json")   # a config.json that is not a JSON object fails first, naming it
        image_dict = image_processor_dict(directory)
        if image_dict is None:
            raise ConfigError(f"no image processor config in {directory} (preprocessor_config.json, or "
                              f"processor_config.json with an 'image_processor' section): a text-only checkpoint? "
                              f"use ocellus.load_processor, which returns its Tokenizer")
        ptype = str(image_dict.get("image_processor_type") or "")
        if "qwen" in ptype.lower() or image_dict.get("crop_to_patches"):
            raise ConfigError(f"{directory}: image processor {ptype or 'with crop_to_patches'} (dynamic tiling / "
                              f"resolution) is not supported by Processor yet; only LLaVA and LLaVA-NeXT are")
        image_config = ImageProcessorConfig.from_dict(image_dict)
        tokenizer = Tokenizer.from_dir(directory)
        proc_cfg = _read_json(directory / "processor_config.json") or {}
        model_cfg = _read_json(directory / "config.json")

        # What the processor config says (transformers' LlavaProcessor defaults where it is silent).
        counted = dict(patch_size=proc_cfg.get("patch_size"),
                       feature_select=proc_cfg.get("vision_feature_select_strategy"),
                       num_extra_tokens=proc_cfg.get("num_additional_image_tokens"))
        image_token = proc_cfg.get("image_token") or tokenizer.special_tokens_map.get("image_token") or "<image>"
        pinpoints = image_config.image_grid_pinpoints  # what the image processor would tile with
        if model_cfg is not None:
            if counts is None or model_cfg.get("model_type") not in SUPPORTED_MODEL_TYPES:
                raise ConfigError(f"{directory}: config.json model_type {model_cfg.get('model_type')!r} is not "
                                  f"supported by Processor yet; it supports {', '.join(SUPPORTED_MODEL_TYPES)}")
            truth = counts(model_cfg, directory)
            for key, value in counted.items():
                if value is not None and value != truth[key]:
                    raise ConfigError(
                        f"{directory}: processor_config.json has {key}={value!r} but config.json implies "
                        f"{truth[key]!r}; the processor would expand images into a different number of tokens "
                        f"than the vision tower yields. Fix processor_config.json")
            model_pinpoints = truth.pop("grid_pinpoints")
            if model_pinpoints is None and pinpoints is not None:
                raise ConfigError(f"{directory}: the image processor has image_grid_pinpoints (anyres views) but the "
                                  f"model ({model_cfg.get('model_type')}) takes one view per image")
            if model_pinpoints is not None and pinpoints is not None and tuple(model_pinpoints) != tuple(pinpoints):
                raise ConfigError(f"{directory}: image_grid_pinpoints differ between the image processor "
                                  f"{[list(p) for p in pinpoints]} and config.json "
                                  f"{[list(p) for p in model_pinpoints]}")
            counted, pinpoints = truth, model_pinpoints
        else:
            if counted["patch_size"] is None:
                raise ConfigError(f"{directory}: neither config.json nor processor_config.json gives the vision "
                                  f"patch size, so the number of tokens per image is unknown")
            counted["feature_select"] = counted["feature_select"] or "default"
            counted["num_extra_tokens"] = counted["num_extra_tokens"] or 0
            if pinpoints is not None:  # the tower's input size is the crop (or fixed) size of a view
                view = image_config.crop_size or image_config.size_hw or (image_config.shortest_edge,)
                counted["tile_size"] = view[0]
        processor = cls(tokenizer, image_config, image_token=image_token, grid_pinpoints=pinpoints,
                        pad_to_square=bool(image_dict.get("do_pad")) and "llava" in ptype.lower(),
                        chat_template=proc_cfg.get("chat_template") if not tokenizer.chat_template else None,
                        **counted)
        if model_cfg is not None:
            index = model_cfg.get("image_token_index", model_cfg.get("image_token_id"))
            if index is not None and int(index) != processor.image_token_id:
                raise ConfigError(f"{directory}: the tokenizer's image token {image_token!r} has id "
                                  f"{processor.image_token_id}, but config.json's image_token_index is {index}")
        return processor

    # ---- what the model needs to know -----------------------------------------------------------

    def num_image_tokens(self, height: int, width: int) -> int:
        """Tokens one image becomes (what the model splices in). Single view: (height, width) is the
        PREPROCESSED size (pixel_values' H, W). Anyres: it is the ORIGINAL image size, which decides
        the grid canvas and the unpadded tile rows/cols."""
        if self.grid_pinpoints is None:
            return tokens_per_image("clip", image_size=(height, width), patch_size=self.patch_size,
                                    feature_select=self.feature_select, num_extra_tokens=self.num_extra_tokens)
        return tokens_per_image("anyres", image_size=(height, width), grid_pinpoints=self.grid_pinpoints,
                                tile_size=self.tile_size, patch_size=self.patch_size,
                                feature_select=self.feature_select, num_extra_tokens=self.num_extra_tokens)

    @property
    def chat_template(self) -> str | None:
        return self._chat_template or self.tokenizer.chat_template

    # tokenizer pass-throughs used by generation and streaming code
    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(r, skip_special_tokens=skip_special_tokens) for r in rows]

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self.tokenizer.pad_token_id

    # ---- rendering ------------------------------------------------------------------------------

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, **extra) -> str:
        """Render one conversation to the prompt string, one image placeholder per image part.

        Multimodal templates read {"type": "image"} parts and write the placeholder themselves (as
        llava-hf's do); text-only templates (message['content'] a string) get each message joined
        with the placeholder inline. Which kind this template is, is found once by a probe render."""
        msgs, template = self._template_input(messages)
        return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt,
                                                  chat_template=template, **extra)

    def render_chat(self, messages, add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """(apply_chat_template's prompt, the spans of it that are message text): those are tokenized as plain
        text, so `<|im_end|>` typed in a message never becomes a control token (data/control_tokens.py)."""
        msgs, template = self._template_input(messages)
        prompt, spans = self.tokenizer.render_chat(msgs, add_generation_prompt=add_generation_prompt,
                                                   chat_template=template)
        if self._content_format != "parts" and spans:
            # a string-content template (MiniGPT-4's) gets each placeholder inside the message text
            # (_template_input): there it is markup, not text (a placeholder the user typed is refused by
            # _check_literal_placeholder), so the text spans stop at it
            spans = [piece for start, end in spans for piece in _split_at(prompt, start, end, self.image_token)]
        return prompt, spans

    def _template_input(self, messages) -> tuple[list[dict], str]:
        messages = normalize(messages)
        template = self.chat_template
        if template is None:
            raise ConfigError("this checkpoint has no chat template (chat_template.jinja / tokenizer_config.json); "
                              "pass text= with image placeholders instead of messages=")
        if self._content_format is None:
            self._content_format = JinjaTemplate(self.tokenizer, chat_template=template).content_format
        if self._content_format == "parts":  # image objects stay out of the template: it only tests the type
            msgs = [{"role": m["role"], "content": [{"type": "image"} if p["type"] == "image" else p
                                                    for p in m["content"]]} for m in messages]
        else:
            msgs = [{"role": m["role"], "content": "".join(self.image_token if p["type"] == "image" else p["text"]
                                                           for p in m["content"])} for m in messages]
        return msgs, template

    # ---- the call -------------------------------------------------------------------------------

    def __call__(self, messages=None, images=None, *, text=None, return_tensors: str | None = "pt",
                 add_generation_prompt: bool = True, padding_side: str = "left",
                 add_special_tokens: bool | None = None) -> ProcessorOutput:
        """Conversation(s) and their images -> input_ids, attention_mask (+ pixel_values when there are images).

        messages: one conversation (a list of {"role", "content"} dicts, content a string or parts) or
            a batch (a list of conversations). Images may instead be attached to their parts as
            {"type": "image", "image": pil_or_path}.
        images: for one conversation a list (or a single image); for a batch a flat list consumed in
            order, or one list per conversation. Each is a PIL image, path, bytes or data URL.
        text: instead of messages, prompt string(s) that already hold the image placeholder (no template).
        add_special_tokens: default False for messages (the template writes BOS itself, as transformers'
            apply_chat_template(tokenize=True)), True for text= (as a transformers tokenizer call).
        padding_side: "left" for generation, "right" for training/scoring.
        """
        if (messages is None) == (text is None):
            raise InputError("pass exactly one of messages= (structured conversations) or text= (prompt strings)")
        if return_tensors not in ("pt", None):
            raise ConfigError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")

        if messages is not None:
            convs = self._conversations(messages)
            attached = [[p.get("image", p.get("path")) for m in c for p in m["content"] if p["type"] == "image"]
                        for c in convs]
            counts = [len(a) for a in attached]
            if images is None and any(a and all(x is not None for x in a) for a in attached):
                images = attached  # images travelled inside their parts
            for b, c in enumerate(convs):
                self._check_literal_placeholder(c, b)
            prompts, spans = zip(*[self.render_chat(c, add_generation_prompt=add_generation_prompt) for c in convs])
            add_special = False if add_special_tokens is None else add_special_tokens
        else:
            prompts = [text] if isinstance(text, str) else list(text)
            if not prompts or not all(isinstance(t, str) for t in prompts):
                raise InputError("text must be a string or a non-empty list of strings")
            counts = [t.count(self.image_token) for t in prompts]
            spans = [[] for _ in prompts]   # a raw prompt is all markup: its caller wrote every token in it
            add_special = True if add_special_tokens is None else add_special_tokens

        per_sample = self._images_per_sample(images, counts)
        for b, prompt in enumerate(prompts):  # the template must have written one placeholder per image
            if prompt.count(self.image_token) != counts[b]:
                raise InputError(f"sample {b}: the rendered prompt holds {prompt.count(self.image_token)} "
                                 f"{self.image_token!r} placeholders for {counts[b]} images (does the chat template "
                                 f"drop image parts?)")

        images_out, per_image = {}, []
        flat = [(b, j, src) for b, srcs in enumerate(per_sample) for j, src in enumerate(srcs)]
        if flat:
            loaded = [load_image(src, name=f"sample {b}, image {j}", max_pixels=self.max_pixels) for b, j, src in flat]
            images_out, per_image = self.image_inputs(loaded)

        rows, next_count = [], iter(per_image)
        for b, prompt in enumerate(prompts):
            # transformers' expansion: each placeholder string repeated as often as its image has tokens,
            # then the whole prompt encoded once
            first, *rest = prompt.split(self.image_token)
            n = [next(next_count) for _ in rest]
            before, after = self.image_wrap
            inserted = [before.format(n=i + 1) + self.image_token * k + after.format(n=i + 1) for i, k in enumerate(n)]
            expanded = first + "".join(ins + piece for ins, piece in zip(inserted, rest))
            ids = self.tokenizer.encode(expanded, add_special_tokens=add_special,
                                        literal=self._shift(spans[b], prompt, inserted))
            if ids.count(self.image_token_id) != sum(n):
                raise ConfigError(f"sample {b}: {ids.count(self.image_token_id)} image tokens after tokenization, "
                                  f"expected {sum(n)} ({n} per image); the tokenizer merges {self.image_token!r} "
                                  f"with its neighbours")
            rows.append(ids)
        return self._pad(rows, images_out, return_tensors, padding_side)

    def _shift(self, spans, prompt: str, inserted: list[str]) -> list[tuple[int, int]]:
        """Message-text spans of the rendered prompt -> the same spans in the prompt with each placeholder
        replaced by its `inserted` text (message text never holds a placeholder: _check_literal_placeholder)."""
        at, growth, marks = -1, 0, []   # (placeholder position, growth of the text before the next one)
        for ins in inserted:
            at = prompt.index(self.image_token, at + 1)
            growth += len(ins) - len(self.image_token)
            marks.append((at, growth))
        shifted = []
        for a, b in spans:
            g = next((g for pos, g in reversed(marks) if pos < a), 0)
            shifted.append((a + g, b + g))
        return shifted

    def image_inputs(self, images: list[Image.Image]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Loaded images -> (the model's image tensors, image tokens per image). Training calls this
        too, so training data and inference count image tokens the same way."""
        if self._image_inputs is not None:
            return self._image_inputs(images)
        if self.grid_pinpoints is None:
            pixel_values = preprocess(images, self.image_config, pad_to_square=self.pad_to_square,
                                      max_pixels=None)                                          # [N, 3, H, W]
            return {"pixel_values": pixel_values}, [self.num_image_tokens(*pixel_values.shape[-2:])] * len(images)
        pixel_values, image_sizes = preprocess_anyres(images, self.image_config, max_pixels=None)
        per_image = [self.num_image_tokens(img.height, img.width) for img in images]
        return {"pixel_values": pixel_values, "image_sizes": image_sizes}, per_image  # [N, V, 3, H, W], [N, 2]

    @staticmethod
    def _conversations(messages) -> list[list[dict]]:
        if not isinstance(messages, (list, tuple)) or not messages:
            raise InputError("messages must be a conversation (a non-empty list of messages) or a list of them")
        batch = messages if isinstance(messages[0], (list, tuple)) else [messages]
        return [_normalize(c, b) for b, c in enumerate(batch)]

    def _check_literal_placeholder(self, conv, b):
        # "<image>" typed into the text would be expanded like a real image part and shift every image
        for turn, m in enumerate(conv):
            if any(p["type"] == "text" and self.image_token in p["text"] for p in m["content"]):
                raise InputError(f"sample {b}, turn {turn}: the text contains the image token {self.image_token!r} "
                                 f"literally; use an {{'type': 'image'}} part for each image")

    @staticmethod
    def _images_per_sample(images, counts: list[int]) -> list[list]:
        """Split `images` over the samples by their placeholder counts; any mismatch names the sample."""
        if images is None:
            images = []
        elif isinstance(images, (str, bytes, bytearray, os.PathLike, Image.Image)):
            images = [images]
        images = list(images)
        nested = bool(images) and all(isinstance(x, (list, tuple)) for x in images)
        if nested:
            if len(images) != len(counts):
                raise InputError(f"images has {len(images)} per-sample lists for {len(counts)} samples")
            for b, (srcs, n) in enumerate(zip(images, counts)):
                if len(srcs) != n:
                    raise InputError(f"sample {b}: {n} image placeholders but {len(srcs)} images given")
            return [list(s) for s in images]
        out, at = [], 0
        for b, n in enumerate(counts):
            if at + n > len(images):
                raise InputError(f"sample {b}: {n} image placeholders but only {len(images) - at} of the "
                                 f"{len(images)} images are left for it ({sum(counts)} placeholders in all)")
            out.append(images[at:at + n])
            at += n
        if at != len(images):
            raise InputError(f"{len(images)} images given but the samples have {sum(counts)} image placeholders "
                             f"({counts}); sample {len(counts) - 1} is the last to take images")
        return out

    def _pad(self, rows, images_out: dict, return_tensors, padding_side) -> ProcessorOutput:
        width = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            if any(len(r) != width for r in rows):
                raise ConfigError("the prompts have different lengths and the tokenizer has no pad_token to pad them")
            pad_id = 0  # never written: every row is full
        ids, mask = [], []
        for r in rows:
            pad = [pad_id] * (width - len(r))
            ones, zeros = [1] * len(r), [0] * (width - len(r))
            ids.append(pad + r if padding_side == "left" else r + pad)
            mask.append(zeros + ones if padding_side == "left" else ones + zeros)
        out = ProcessorOutput(input_ids=ids, attention_mask=mask)
        if return_tensors == "pt":
            out = ProcessorOutput(input_ids=torch.tensor(ids, dtype=torch.long),        # [B, T]
                                  attention_mask=torch.tensor(mask, dtype=torch.long))  # [B, T]
        out.update(images_out)  # pixel_values (+ image_sizes), tensors either way
        return out


def _split_at(text: str, start: int, end: int, token: str) -> list[tuple[int, int]]:
    """The span [start, end) of `text` cut around every occurrence of `token` in it (empty pieces dropped)."""
    pieces, at = [], start
    while (hit := text.find(token, at, end)) >= 0:
        pieces.append((at, hit))
        at = hit + len(token)
    pieces.append((at, end))
    return [(a, b) for a, b in pieces if b > a]


def _normalize(conv, b: int) -> list[dict]:
    """messages.normalize with errors naming the sample."""
    try:
        return normalize(conv)
    except InputError as e:
        raise InputError(f"sample {b}: {e}") from None


__all__ = ["Processor", "ProcessorOutput", "image_processor_dict"]
