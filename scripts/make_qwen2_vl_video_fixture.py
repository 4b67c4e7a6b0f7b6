"""Regenerate tests/parity/fixtures/qwen2_vl_video/: transformers' Qwen2VLProcessor (+ Qwen2VLVideoProcessor) on
fixed frames, the oracle tests/parity/test_qwen2_vl_video_processor.py compares Ocellus' processor with.

transformers' video processor needs torchvision, which this project's CPU torch cannot load beside it (PyPI's
torchvision is built for its own torch release), so the oracle runs in a second environment and its outputs
are committed. Two steps:

    python scripts/make_qwen2_vl_video_fixture.py inputs                 # this venv: tokenizer, configs, frames
    /tmp/tvenv/bin/python scripts/make_qwen2_vl_video_fixture.py expect  # torch + torchvision + transformers==5.23.0

(/tmp/tvenv: `python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
transformers==5.23.0 jinja2`). `expect` imports nothing of Ocellus.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "parity" / "fixtures" / "qwen2_vl_video"
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>")
# Qwen2-VL's template, cut to what the cases use: media parts wrapped in vision start / end markers
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PATCH, MERGE, TEMPORAL = 8, 2, 2
IMAGE_PIXELS = (16 * 16, 48 * 48)     # the image processor's (min, max) pixels
VIDEO_PIXELS = (16 * 16, 32 * 48)     # the video processor's: its own budget, so a mix-up shows
# the conversations: ("text", str) | ("video", frames name) | ("image", frames name)
CASES = {
    "single": [[("text", "which way does it move?"), ("video", "a"), ("image", "i")]],
    "batch": [[("video", "b"), ("text", "and this one?")], [("text", "first"), ("video", "a")]],
    "sampled": [[("video", "c"), ("text", "count the frames")]],
}
SAMPLED = {"fps": 2.0, "video_fps": 6.0}   # case "sampled": 12 frames at 6 fps sampled at 2 fps -> 4 frames


def frames() -> dict[str, np.ndarray]:
    """a: 5 frames at the video budget's size (no resize; an odd count, so the last frame is repeated);
    b: 4 frames that smart_resize shrinks; c: 12 frames for fps sampling; i: one image."""
    rng = np.random.default_rng(22)
    return {"a": rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8),
            "b": rng.integers(0, 256, (4, 44, 70, 3), dtype=np.uint8),
            "c": rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
            "i": rng.integers(0, 256, (1, 40, 40, 3), dtype=np.uint8)}


def messages(case) -> list[list[dict]]:
    return [[{"role": "user", "content": [{"type": kind} if kind != "text" else {"type": "text", "text": value}
                                          for kind, value in conv]}] for conv in case]


def media(case, kind: str) -> list[str]:
    return [value for conv in case for k, value in conv if k == kind]


def make_inputs() -> None:
    """Ocellus' venv: the tokenizer (a tiny BPE with Qwen's special tokens), config.json, both processor
    configs and the frames."""
    from safetensors.numpy import save_file
    import transformers as tf
    from ocellus.data.bpe import train_bpe
    FIXTURE.mkdir(parents=True, exist_ok=True)
    corpus = ["which way does it move? and this one? first count the frames left right up down"] * 20
    tok = train_bpe(corpus, 300, SPECIALS, chat_template=TEMPLATE, image_token="<|image_pad|>",
                    eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.save(FIXTURE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    cfg = tf.Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e4}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=PATCH,
                           spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    cfg.save_pretrained(FIXTURE)
    common = {"patch_size": PATCH, "merge_size": MERGE, "temporal_patch_size": TEMPORAL, "do_resize": True,
              "do_rescale": True, "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3}
    (FIXTURE / "preprocessor_config.json").write_text(json.dumps({
        **common, "image_processor_type": "Qwen2VLImageProcessor",
        "size": {"shortest_edge": IMAGE_PIXELS[0], "longest_edge": IMAGE_PIXELS[1]}}, indent=2))
    (FIXTURE / "video_preprocessor_config.json").write_text(json.dumps({
        **common, "video_processor_type": "Qwen2VLVideoProcessor", "do_sample_frames": False,
        "min_frames": 4, "max_frames": 768, "size": {"shortest_edge": VIDEO_PIXELS[0],
                                                      "longest_edge": VIDEO_PIXELS[1]}}, indent=2))
    save_file({f"frames_{k}": v for k, v in frames().items()}, str(FIXTURE / "frames.safetensors"))


def make_expected() -> None:
    """The oracle's environment (torchvision): transformers' Qwen2VLProcessor on every case."""
    import torch
    import transformers as tf
    from safetensors.numpy import load_file
    from safetensors.torch import save_file
    from transformers.video_utils import VideoMetadata
    clips = {k[len("frames_"):]: v for k, v in load_file(str(FIXTURE / "frames.safetensors")).items()}
    tok = tf.PreTrainedTokenizerFast(tokenizer_file=str(FIXTURE / "tokenizer.json"), pad_token="<|endoftext|>",
                                     padding_side="left")
    proc = tf.Qwen2VLProcessor(image_processor=tf.Qwen2VLImageProcessorPil.from_pretrained(FIXTURE),
                               video_processor=tf.Qwen2VLVideoProcessor.from_pretrained(FIXTURE),
                               tokenizer=tok, chat_template=TEMPLATE)
    out = {}
    for name, case in CASES.items():
        prompts = [proc.apply_chat_template(m, add_generation_prompt=True) for m in messages(case)]
        videos = [list(clips[v]) for v in media(case, "video")]
        images = [clips[i][0] for i in media(case, "image")] or None
        kw = {"cap_pixels_per_frame": False}
        if name == "sampled":
            kw |= {"do_sample_frames": True, "fps": SAMPLED["fps"], "video_metadata": [
                VideoMetadata(total_num_frames=len(v), fps=SAMPLED["video_fps"]) for v in videos]}
        batch = proc(text=prompts, images=images, videos=videos, padding=True, return_tensors="pt", **kw)
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                out[f"{name}.{key}"] = value.contiguous()
    save_file(out, str(FIXTURE / "expected.safetensors"),
              metadata={"transformers": tf.__version__, "torchvision": __import__("torchvision").__version__})
    print({k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    {"inputs": make_inputs, "expect": make_expected}[sys.argv[1]]()
