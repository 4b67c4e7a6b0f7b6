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

Where the pieces live: the settings a checkpoint dir holds are read by hub/processor_files.py; the default
image path (a CLIP-style tower's patches, single view or LLaVA-NeXT's anyres) is data/patch_images.py; a batch's
images / videos are split over its samples by data/media_per_sample.py. This module is what joins them.

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
(see ImageInputs); every family builds its processor in its own folder (models/families/<name>/processor.py,
LLaVA's too), and `from_dir` hands a checkpoint to the family the registry (hub/families.py) names for its
config.json model_type.
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ocellus.data.image import DEFAULT_MAX_PIXELS, ImageProcessorConfig, load_image
from ocellus.data.media_per_sample import images_per_sample, videos_per_sample
from ocellus.data.messages import MEDIA_KEYS, count_images, count_videos, normalize, part_media
from ocellus.data.patch_images import PatchImages
from ocellus.data.templates import JinjaTemplate
from ocellus.data.tokenizer import Tokenizer
from ocellus.data.video import Video
from ocellus.data.video_file import load_video
from ocellus.errors import ConfigError, InputError
from ocellus.hub.families import processor_module
# the processor settings of a checkpoint dir; the families' processors import them from here too
from ocellus.hub.processor_files import (image_processor_dict, read_json as _read_json,  # noqa: F401
                                         read_model_type, video_processor_dict)
from ocellus.hub.resolve import resolve

# A family's own image path (BLIP-2 query slots, Qwen2-VL dynamic grids, InternVL tiles, ...):
# loaded images -> (tensors the model's forward takes, each concatenable along dim 0 across batches,
# e.g. pixel_values [N, 3, H, W] or Qwen2-VL's patches [sum P, D] + image_grid_thw [N, 3];
# and how many image placeholder tokens each image expands to).
ImageInputs = Callable[[list[Image.Image]], tuple[dict[str, torch.Tensor], list[int]]]
# A video model's video path (Qwen2-VL): decoded videos (data/video_file.Video) -> (pixel_values_videos,
# video_grid_thw, ...; how many video placeholder tokens each video expands to).
VideoInputs = Callable[[list[Video]], tuple[dict[str, torch.Tensor], list[int]]]


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
    video_token, video_inputs: a video model's placeholder (Qwen2-VL's <|video_pad|>) and its video path
        (VideoInputs); {"type": "video"} parts and `videos=` are accepted only when both are given.
    stop_strings: text that ends a reply where the template ends a turn with plain text rather than an eos
        token (MiniGPT-4's "###"): generation stops there and the reply is cut before it (cut_reply).
    """

    def __init__(self, tokenizer: Tokenizer, image_config: ImageProcessorConfig, *, patch_size: int,
                 num_extra_tokens: int = 1, feature_select: str = "default", image_token: str = "<image>",
                 pad_to_square: bool = False, chat_template: str | None = None, grid_pinpoints=None,
                 tile_size: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 image_inputs: ImageInputs | None = None, image_wrap: tuple[str, str] = ("", ""),
                 video_token: str | None = None, video_inputs: VideoInputs | None = None,
                 stop_strings: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        # file name -> the image / video processor settings of the directory it was read from (from_dir), written
        # back as they were by ocellus.save: a saved checkpoint's processor is the one it was loaded with
        self.source_settings: dict[str, dict] = {}
        if any(not isinstance(s, str) or not s for s in stop_strings):
            raise ConfigError(f"stop_strings must be non-empty strings, got {stop_strings!r}")
        self.stop_strings = tuple(stop_strings)
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
        if (video_token is None) != (video_inputs is None):
            raise ConfigError("a video processor needs both video_token and video_inputs")
        if video_token == image_token:
            raise ConfigError(f"the video token {video_token!r} must differ from the image token")
        self.video_token, self._video_inputs = video_token, video_inputs
        self.video_token_id = None if video_token is None else self._check_image_token(tokenizer, video_token)
        self.pad_to_square = pad_to_square
        self.max_pixels = max_pixels
        self._chat_template = chat_template
        self._content_format = None  # "parts" or "string", found on the first render
        self._reads_both = False     # the template reads content given as a string and as parts (_reads_both)
        # the default image path (data/patch_images.py); a family's image_inputs counts tokens itself
        self._patches = PatchImages(image_config, patch_size=self.patch_size, num_extra_tokens=self.num_extra_tokens,
                                    feature_select=feature_select, pad_to_square=pad_to_square,
                                    grid_pinpoints=self.grid_pinpoints, tile_size=tile_size)
        if image_inputs is None:
            self._patches.check()

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
    def from_dir(cls, path) -> "Processor":
        """The processor of a checkpoint directory, built by the family that serves its config.json model_type:
        the registry's processor module (hub/families.py) and its processor_from_dir; LLaVA's for a directory
        without config.json (processor_config.json then gives the numbers). `load_processor` (=
        ocellus.load_processor) returns a text-only checkpoint's Tokenizer instead."""
        directory = Path(path)
        module = processor_module(read_model_type(directory), str(directory / "config.json"))
        processor = module.processor_from_dir(directory)
        processor.source_settings = {name: settings for name, settings in (
            ("preprocessor_config.json", image_processor_dict(directory)),
            ("video_preprocessor_config.json", video_processor_dict(directory))) if settings is not None}
        return processor

    # ---- what the model needs to know -----------------------------------------------------------

    def num_image_tokens(self, height: int, width: int) -> int:
        """Tokens one image becomes on the default image path (PatchImages.num_image_tokens)."""
        return self._patches.num_image_tokens(height, width)

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

    def cut_reply(self, text: str) -> str:
        """A generated reply up to the first of the template's stop strings (the whole text when none occurs)."""
        for stop in self.stop_strings:
            text = text.split(stop, 1)[0]
        return text

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
            spans = [piece for start, end in spans for piece in _split_at(prompt, start, end, self._markers)]
        return prompt, spans

    def _template_input(self, messages) -> tuple[list[dict], str]:
        given_as_string = [isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages or ()]
        messages = normalize(messages, videos=self.video_token is not None)
        template = self.chat_template
        if template is None:
            raise ConfigError("this checkpoint has no chat template (chat_template.jinja / tokenizer_config.json); "
                              "pass text= with image placeholders instead of messages=")
        if self._content_format is None:
            self._content_format = JinjaTemplate(self.tokenizer, chat_template=template).content_format
            self._reads_both = _reads_both(self.tokenizer, template)
        if self._reads_both:
            # a template with a branch for each form may render them differently ("user \nhi" for parts, "user hi"
            # for a string): each message goes in the form its sender wrote, as transformers passes it
            msgs = [{"role": m["role"], "content": m["content"][0]["text"] if as_string else
                     [{"type": p["type"]} if p["type"] != "text" else p for p in m["content"]]}
                    for m, as_string in zip(messages, given_as_string)]
        elif self._content_format == "parts":  # media objects stay out of the template: it only tests the type
            msgs = [{"role": m["role"], "content": [{"type": p["type"]} if p["type"] != "text" else p
                                                    for p in m["content"]]} for m in messages]
        else:
            marker = {"image": self.image_token, "video": self.video_token}
            msgs = [{"role": m["role"], "content": "".join(marker.get(p["type"]) or p["text"] for p in m["content"])}
                    for m in messages]
        return msgs, template

    # ---- the call -------------------------------------------------------------------------------

    def __call__(self, messages=None, images=None, *, videos=None, text=None, return_tensors: str | None = "pt",
                 add_generation_prompt: bool = True, padding_side: str = "left",
                 add_special_tokens: bool | None = None) -> ProcessorOutput:
        """Conversation(s) and their images / videos -> input_ids, attention_mask (+ pixel_values when there are
        images, + pixel_values_videos / video_grid_thw when there are videos).

        messages: one conversation (a list of {"role", "content"} dicts, content a string or parts) or
            a batch (a list of conversations). Images may instead be attached to their parts as
            {"type": "image", "image": pil_or_path}; videos as {"type": "video", "video": src}.
        images: for one conversation a list (or a single image); for a batch a flat list consumed in
            order, or one list per conversation. Each is a PIL image, path, bytes or data URL.
        videos: (video models only) a list of videos consumed in order over the samples, each a file path
            (GIF / APNG / WebP), a directory of frames, a list of frames, a [T, H, W, 3] uint8 array or a
            data/video_file.Video (data/video_file.load_video); a single path or Video may stand alone.
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
        if videos is not None and self.video_token is None:
            raise ConfigError("this processor takes no videos: the model has no video placeholder token "
                              "(video_token_id); only video models (Qwen2-VL) read videos")

        if messages is not None:
            convs = self._conversations(messages)
            counts, video_counts = [count_images(c) for c in convs], [count_videos(c) for c in convs]
            images = _from_parts(images, convs, "image", counts)   # media may travel inside their parts
            videos = _from_parts(videos, convs, "video", video_counts)
            for b, c in enumerate(convs):
                self._check_literal_placeholder(c, b)
            raw = messages if isinstance(messages[0], (list, tuple)) else [messages]   # (content form kept)
            prompts, spans = zip(*[self.render_chat(c, add_generation_prompt=add_generation_prompt) for c in raw])
            add_special = False if add_special_tokens is None else add_special_tokens
        else:
            prompts = [text] if isinstance(text, str) else list(text)
            if not prompts or not all(isinstance(t, str) for t in prompts):
                raise InputError("text must be a string or a non-empty list of strings")
            counts = [t.count(self.image_token) for t in prompts]
            video_counts = [t.count(self.video_token) if self.video_token else 0 for t in prompts]
            spans = [[] for _ in prompts]   # a raw prompt is all markup: its caller wrote every token in it
            add_special = True if add_special_tokens is None else add_special_tokens

        per_sample = images_per_sample(images, counts)
        per_video = videos_per_sample(videos, video_counts)
        for b, prompt in enumerate(prompts):  # the template must have written one placeholder per image / video
            for token, n, what in ((self.image_token, counts[b], "images"), (self.video_token, video_counts[b], "videos")):
                if token is not None and prompt.count(token) != n:
                    raise InputError(f"sample {b}: the rendered prompt holds {prompt.count(token)} {token!r} "
                                     f"placeholders for {n} {what} (does the chat template drop {what[:-1]} parts?)")

        images_out, per_image = {}, []
        flat = [(b, j, src) for b, srcs in enumerate(per_sample) for j, src in enumerate(srcs)]
        if flat:
            loaded = [load_image(src, name=f"sample {b}, image {j}", max_pixels=self.max_pixels) for b, j, src in flat]
            images_out, per_image = self.image_inputs(loaded)
        videos_out, per_clip = {}, []
        clips = [(b, j, src) for b, srcs in enumerate(per_video) for j, src in enumerate(srcs)]
        if clips:
            decoded = [load_video(src, name=f"sample {b}, video {j}", max_frame_pixels=self.max_pixels)
                       for b, j, src in clips]
            videos_out, per_clip = self.video_inputs(decoded)

        rows, next_count, next_clip = [], iter(per_image), iter(per_clip)
        for b, prompt in enumerate(prompts):
            # transformers' expansion: each placeholder string repeated as often as its image / video has tokens,
            # then the whole prompt encoded once
            pieces = re.split(f"({'|'.join(re.escape(t) for t in self._markers)})", prompt)  # text, marker, text, ...
            before, after = self.image_wrap
            expanded, marks, number, at = pieces[0], [], 0, len(pieces[0])
            want = dict.fromkeys(self._markers, 0)   # a prompt without media must hold none of their ids either
            for marker, piece in zip(pieces[1::2], pieces[2::2]):
                if marker == self.image_token:
                    k, number = next(next_count), number + 1
                    inserted = before.format(n=number) + marker * k + after.format(n=number)
                else:  # a video: its pads alone (the template writes Qwen2-VL's <|vision_start|>/<|vision_end|>)
                    k = next(next_clip)
                    inserted = marker * k
                want[marker] += k
                marks.append((at, len(inserted) - len(marker)))
                expanded += inserted + piece
                at += len(marker) + len(piece)
            ids = self.tokenizer.encode(expanded, add_special_tokens=add_special, literal=_shift(spans[b], marks))
            for marker, n in want.items():
                token_id = self.image_token_id if marker == self.image_token else self.video_token_id
                if ids.count(token_id) != n:
                    raise ConfigError(f"sample {b}: {ids.count(token_id)} {marker!r} tokens after tokenization, "
                                      f"expected {n}; the tokenizer merges {marker!r} with its neighbours")
            rows.append(ids)
        return self._pad(rows, {**images_out, **videos_out}, return_tensors, padding_side)

    @property
    def _markers(self) -> tuple[str, ...]:
        """The placeholder strings the rendered prompt may hold: the image token, and the video token if any."""
        return (self.image_token,) + ((self.video_token,) if self.video_token else ())

    def video_inputs(self, videos: list[Video]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Decoded videos -> (the model's video tensors, video tokens per video); training calls this too."""
        if self._video_inputs is None:
            raise ConfigError("this processor takes no videos (no video_inputs)")
        return self._video_inputs(videos)

    def image_inputs(self, images: list[Image.Image]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Loaded images -> (the model's image tensors, image tokens per image). Training calls this
        too, so training data and inference count image tokens the same way."""
        if self._image_inputs is not None:
            return self._image_inputs(images)
        return self._patches(images)

    def _conversations(self, messages) -> list[list[dict]]:
        if not isinstance(messages, (list, tuple)) or not messages:
            raise InputError("messages must be a conversation (a non-empty list of messages) or a list of them")
        batch = messages if isinstance(messages[0], (list, tuple)) else [messages]
        return [_normalize(c, b, self.video_token is not None) for b, c in enumerate(batch)]

    def _check_literal_placeholder(self, conv, b):
        # "<image>" typed into the text would be expanded like a real image part and shift every image; a run of
        # text parts is checked joined, as the template writes it ("<ima" + "ge>" is "<image>" in the prompt)
        for turn, m in enumerate(conv):
            runs = _text_runs(m["content"])
            for token in self._markers:
                if any(token in run for run in runs):
                    kind = "image" if token == self.image_token else "video"
                    raise InputError(f"sample {b}, turn {turn}: the text contains the {kind} token {token!r} "
                                     f"literally; use an {{'type': '{kind}'}} part for each {kind}")

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


def load_processor(path_or_hub_id):
    """A checkpoint's input side (`ocellus.load_processor`): a `Processor` (tokenizer + image processor + chat
    template + image-token expansion) when the directory has an image processor config (preprocessor_config.json,
    or processor_config.json's "image_processor" section as transformers 5 writes it), else its `Tokenizer`.
    The family that serves config.json's model_type builds the processor (Processor.from_dir)."""
    directory = resolve(path_or_hub_id)
    if image_processor_dict(directory) is None:
        return Tokenizer.from_dir(directory)
    return Processor.from_dir(directory)


def _split_at(text: str, start: int, end: int, tokens: tuple[str, ...]) -> list[tuple[int, int]]:
    """The span [start, end) of `text` cut around every occurrence of any of `tokens` in it (empty pieces dropped)."""
    pieces, at = [], start
    pattern = re.compile("|".join(re.escape(t) for t in tokens))
    while (hit := pattern.search(text, at, end)) is not None:
        pieces.append((at, hit.start()))
        at = hit.end()
    pieces.append((at, end))
    return [(a, b) for a, b in pieces if b > a]


def _shift(spans, marks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Message-text spans of the rendered prompt -> the same spans in the expanded prompt. marks: each placeholder's
    (position in the rendered prompt, how much longer its expansion is), in order (message text never holds a
    placeholder: _check_literal_placeholder)."""
    shifted, cumulative, growth = [], [], 0
    for pos, grew in marks:
        growth += grew
        cumulative.append((pos, growth))
    for a, b in spans:
        g = next((g for pos, g in reversed(cumulative) if pos < a), 0)
        shifted.append((a + g, b + g))
    return shifted


def _reads_both(tokenizer: Tokenizer, template: str) -> bool:
    """Whether `template` renders a message's text given as a string and as a list of parts, each showing the text
    and neither the list's Python repr (a text-only template writing {{ message['content'] }} shows that)."""
    probe = "Xq7 probe"

    def shows(content) -> bool:
        try:
            out = tokenizer.apply_chat_template([{"role": "user", "content": content}], chat_template=template)
        except Exception:  # noqa: BLE001 -- any failure of the template on this form means it does not read it
            return False
        return probe in out and "'type'" not in out
    return shows(probe) and shows([{"type": "text", "text": probe}])


def _text_runs(parts: list[dict]) -> list[str]:
    """The text of each run of consecutive text parts (a media part ends a run)."""
    runs = [""]
    for p in parts:
        if p["type"] == "text":
            runs[-1] += p["text"]
        else:
            runs.append("")
    return runs


def _from_parts(given, convs: list[list[dict]], kind: str, counts: list[int]):
    """The images (kind "image") or videos a call uses: `given` (images= / videos=), or the ones the parts carry
    (messages.MEDIA_KEYS: {"type": "image", "url": ...}, as transformers' apply_chat_template reads them).
    Either every part of that kind carries one or none does: one bare part among carrying ones would be
    matched with another part's media. Given both ways, they must be the same objects (or the same path /
    bytes): otherwise which one the model sees would be a guess."""
    carried = [[(f"sample {b}, turn {t}, part {j}", part_media(p, f"sample {b}, turn {t}, part {j}"))
                for t, m in enumerate(conv) for j, p in enumerate(m["content"]) if p["type"] == kind]
               for b, conv in enumerate(convs)]
    flat = [pair for per in carried for pair in per]
    if all(src is None for _, src in flat):
        return given
    if given is None or (isinstance(given, (list, tuple)) and not given):   # images=[]: none given beside them
        bare = next((where for where, src in flat if src is None), None)
        if bare is not None:
            raise InputError(f"{bare}: this {kind} part carries no {kind} ({', '.join(MEDIA_KEYS[kind])}) while "
                             f"other {kind} parts do; attach one to every {kind} part or pass them all as {kind}s=")
        # images may be nested per sample; videos are flat (one video may itself be a list of frames)
        return [[src for _, src in per] for per in carried] if kind == "image" else [src for _, src in flat]
    split = images_per_sample(given, counts) if kind == "image" else videos_per_sample(given, counts)
    for per, srcs in zip(carried, split):
        for (where, src), other in zip(per, srcs):
            if src is not None and not _same_source(src, other):
                raise InputError(f"{where}: the part carries a {kind} other than the one {kind}s= gives for it; "
                                 f"pass each {kind} once (in its part or in {kind}s=)")
    return given


def _same_source(a, b) -> bool:
    """The same media object, or the same path / bytes."""
    if a is b:
        return True
    paths = (str, os.PathLike)
    if isinstance(a, paths) and isinstance(b, paths):
        return os.fspath(a) == os.fspath(b)
    return isinstance(a, (bytes, bytearray)) and isinstance(b, (bytes, bytearray)) and a == b


def _normalize(conv, b: int, videos: bool = False) -> list[dict]:
    """messages.normalize with errors naming the sample."""
    try:
        return normalize(conv, videos=videos)
    except InputError as e:
        raise InputError(f"sample {b}: {e}") from None


__all__ = ["Processor", "ProcessorOutput", "image_processor_dict", "load_processor"]
