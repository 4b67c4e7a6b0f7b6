"""A multi-turn chat session over a loaded model: history, images, streamed replies.

    session = ChatSession(ocellus.load(d), ocellus.load_processor(d), max_new_tokens=128)
    for delta in session.send("What is in the picture?", images=["cat.jpg"]):
        print(delta, end="", flush=True)
    for delta in session.send("And what colour is it?"):   # the first image and answer are still in context
        ...
    session.send("Which way does the circle move?", videos=["clip.gif"])   # a video model (Qwen2-VL)
    session.reset()

Each turn re-renders the whole conversation with the checkpoint's chat template and runs one
prefill over it (images included, so earlier images stay visible to later turns), then streams
the reply through `infer.generate.stream`. There is no cache kept across turns: simple and always
consistent with what the template renders, at the cost of re-reading the history each turn. With num_beams > 1
(`ocellus chat --num-beams N`) the reply is beam search's, as `generate` gives it: one piece at the end, since the
best hypothesis is known only then.

`send` checks everything it can before returning its iterator (image files, placeholder counts,
context length), so a bad image or a conversation that fills the context raises a typed error at once
and leaves the history untouched; the turn joins the history only once its reply is complete. A reply
gets at most max_new_tokens, and never more than the context leaves after the conversation so far.
Text-only checkpoints (whose `load_processor` is a Tokenizer) work too, without images. Videos (an animated
GIF / APNG / WebP, a directory of frames, or a list of frames: data/video_file.load_video) go to checkpoints
whose processor has a video placeholder (Qwen2-VL); each is decoded and checked once, when it is sent.

UnifiedChat is the same interface over a unified model (models/unified: Emu3, Janus, Show-o, SEED-LLaMA,
opened by models/unified/checkpoint.load_unified): a turn with an image is answered with its caption,
"draw <colour> <shape>" draws one and saves it as a PNG (viz/image_grid.save_grid).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ocellus.data.image import DEFAULT_MAX_PIXELS, load_image
from ocellus.data.processor import Processor, ProcessorOutput
from ocellus.data.video_file import load_video
from ocellus.errors import ConfigError, InputError, positive_int
from ocellus.infer.stop_text import reply_stops
from ocellus.viz.image_grid import save_grid


class ChatSession:
    """model: from `ocellus.load`; processor: from `ocellus.load_processor` (Processor or Tokenizer).
    system: an optional system message kept across resets. generation: GenerationConfig fields
    (max_new_tokens, temperature, top_p, seed, ...) used for every reply. max_pixels: per image and per video
    frame; max_video_frames: the most frames one video may have."""

    def __init__(self, model, processor, *, system: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_video_frames: int | None = 256, **generation):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer if isinstance(processor, Processor) else processor
        if processor.chat_template is None:  # both Processor and Tokenizer have the property
            raise ConfigError("chat needs a chat template, and this checkpoint has none "
                              "(chat_template.jinja / tokenizer_config.json)")
        self.system = system
        self.max_pixels = max_pixels
        self.max_video_frames = max_video_frames
        # the template's stop strings (MiniGPT-4's "###") end every reply, before the caller's own
        self.generation = {"max_new_tokens": 256, **generation,
                           "stop_strings": reply_stops(processor, generation.get("stop_strings"))}
        self.reset()

    @property
    def supports_images(self) -> bool:
        return isinstance(self.processor, Processor)

    @property
    def supports_videos(self) -> bool:
        return self.supports_images and self.processor.video_token is not None

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages: list[dict] = []
        if self.system:
            self.messages.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        self.images: list = []  # every image of the history, in the order of its parts
        self.videos: list = []  # every video of the history (decoded), likewise

    def load_image(self, src, name: str | None = None):
        """Open and check one image now (InputError naming it when unreadable, truncated or too big)."""
        if not self.supports_images:
            raise ConfigError("this checkpoint has no image processor (preprocessor_config.json / "
                              "processor_config.json): it is text-only")
        return load_image(src, name=name, max_pixels=self.max_pixels)

    def load_video(self, src, name: str | None = None):
        """Decode and check one video now (InputError naming it when unreadable or over a limit)."""
        if not self.supports_videos:
            raise ConfigError("this checkpoint takes no videos: its processor has no video placeholder token "
                              "(video_token_id); video models such as Qwen2-VL do")
        return load_video(src, name=name or f"video {src}", max_frames=self.max_video_frames,
                          max_frame_pixels=self.max_pixels)

    def send(self, text: str, images=(), videos=()) -> Iterator[str]:
        """Add a user turn (its images first, then its videos, then the text) and return an iterator over the
        reply's text deltas. Errors about the input are raised here, before any token is generated."""
        if not isinstance(text, str):
            raise InputError(f"the message must be a string, got {type(text).__name__}")
        loaded = [self.load_image(src, name=f"image {k}") for k, src in enumerate(images)]
        clips = [self.load_video(src, name=f"video {k}") for k, src in enumerate(videos)]
        if not text.strip() and not loaded and not clips:
            raise InputError("empty message")
        content = ([{"type": "image"} for _ in loaded] + [{"type": "video"} for _ in clips]
                   + ([{"type": "text", "text": text}] if text else []))
        user = {"role": "user", "content": content}
        batch = self._encode(self.messages + [user], self.images + loaded, self.videos + clips)
        length, room = batch["input_ids"].shape[1], self.model.max_context - batch["input_ids"].shape[1]
        if room < 1:
            raise InputError(f"the conversation is {length} tokens, which fills the model's context of "
                             f"{self.model.max_context} tokens: /reset the history or send a shorter message")
        return self._reply(user, loaded, clips, batch, min(self.generation["max_new_tokens"], room))

    def _encode(self, messages, images, videos=()) -> dict:
        if self.supports_images:
            batch = self.processor(messages=messages, images=images, videos=list(videos) or None,
                                   add_generation_prompt=True)
        else:  # text-only: string content, the template's own BOS (no post-processor BOS on top, as transformers)
            plain = [{"role": m["role"], "content": "".join(p["text"] for p in m["content"])} for m in messages]
            ids = self.tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=True)
            batch = ProcessorOutput(input_ids=torch.tensor([ids]))
        return batch.to(next(self.model.parameters()).device)

    def _reply(self, user: dict, loaded: list, clips: list, batch: dict, max_new_tokens: int) -> Iterator[str]:
        # lazy: a command imports only the code it runs (ocellus --help stays fast)
        from ocellus.infer.generate import stream
        # every processor output but the ids is a prefill input: pixel_values (+ image_sizes, image_grid_thw),
        # pixel_values_videos, video_grid_thw, ...
        extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
        generation = {**self.generation, "max_new_tokens": max_new_tokens}
        if (generation.get("num_beams") or 1) > 1:
            deltas = self._beam_reply(batch, extra, generation)
        else:
            deltas = stream(self.model, self.tokenizer, batch["input_ids"], batch.get("attention_mask"),
                            **extra, **generation)
        pieces = []
        for delta in deltas:
            pieces.append(delta)
            yield delta
        # Only a finished turn enters the history: an interrupted one is as if it had not been sent. The
        # reply is stored stripped (the template puts its own space after "ASSISTANT:"); an empty reply
        # leaves no turn behind, since an assistant message with no content is not a valid message.
        reply = "".join(pieces).strip()
        if reply:
            self.messages += [user, {"role": "assistant", "content": [{"type": "text", "text": reply}]}]
            self.images += loaded
            self.videos += clips

    def _beam_reply(self, batch: dict, extra: dict, generation: dict) -> Iterator[str]:
        """Beam search picks its reply only at the end, so the reply comes as one piece: the best hypothesis,
        its ids already cut before the processor's and the user's stop strings (infer/beam.py)."""
        from ocellus.infer.generate import models_generate   # lazy, as stream above
        run = models_generate(self.model)   # the model's own: it refuses beams it cannot search
        ids = batch["input_ids"]                                                          # [1, T]
        out = run(ids, batch.get("attention_mask"), tokenizer=self.tokenizer, **extra, **generation)
        text = self.tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
        if text:
            yield text


def drawing_options(model) -> set[str]:
    """The keyword options a unified model's drawing takes: `generate_images`'s, and where it passes **kw on, those
    of the method that writes the image's tokens (generate_image_ids; SEED: generate_codes)."""
    def keywords(fn):
        params = inspect.signature(fn).parameters.values()
        return ({p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)},
                any(p.kind == p.VAR_KEYWORD for p in params))
    names, more = keywords(model.generate_images)
    if more:
        names |= keywords(getattr(model, "generate_image_ids", None) or model.generate_codes)[0]
    return names - {"captions"}


class UnifiedChat:
    """The ChatSession interface of `ocellus chat` (load_image, send, reset) over a unified model: a turn with
    an image is answered with its caption; "draw <colour> <shape>" draws one and saves it as a PNG.
    seed: the drawing's random generator; caption_tokens: a caption's length limit (None: the model's default);
    generate: drawing options over the checkpoint's own (`generate` in its config), each one the model's drawing
    takes (drawing_options), else ConfigError naming it."""
    supports_images = True

    def __init__(self, model, out_dir=".", seed: int = 0, caption_tokens: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, **generate):
        takes = drawing_options(model)
        unknown = sorted(set(generate) - takes)
        if unknown:
            raise ConfigError(f"{type(model).__name__} draws with the options {sorted(takes)}; it has no {unknown}")
        self.model, self.out, self.n = model, Path(out_dir), 0
        self.generate = {**getattr(model, "generate_options", {}), **generate}
        self.generator = torch.Generator().manual_seed(seed)
        positive_int(caption_tokens, "a caption's length (max_new_tokens)", optional=True)
        self.caption = {} if caption_tokens is None else {"max_new_tokens": caption_tokens}
        self.max_pixels = max_pixels

    def reset(self) -> None:
        pass   # every turn stands alone: the tiny models are not trained on multi-turn dialogue

    def load_image(self, src, name: str | None = None):
        return load_image(src, name=name, max_pixels=self.max_pixels)

    def send(self, text: str, images=()):
        S = self.model.image_size
        if images:
            px = torch.stack([torch.tensor(np.asarray(im.convert("RGB").resize((S, S))), dtype=torch.float32)
                              .permute(2, 0, 1) / 127.5 - 1 for im in images])      # [N, 3, S, S]
            yield "; ".join(self.model.describe(px, **self.caption))
            return
        words = text.lower().replace(",", " ").replace(".", " ").split()
        if not words or words[0] not in ("draw", "generate", "paint"):
            raise InputError(f"this model describes an attached image (/image PATH) or draws: 'draw <colour> <shape>' "
                             f"with a colour in {self.model.colours}; got {text!r}")
        caption = " ".join(w for w in words[1:] if w in self.model.text.index and self.model.text.index[w] > 2)
        if len(caption.split()) != 2:
            raise InputError(f"say what to draw as '<colour> <shape>' (colours {self.model.colours}); got {text!r}")
        image = self.model.generate_images([caption], generator=self.generator, **self.generate)
        self.n += 1
        path = save_grid(image, self.out / f"drawn_{self.n}.png", nrow=1, scale=8)
        yield f"drew a {caption}: {path}"
