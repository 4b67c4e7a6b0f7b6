"""task vlm: a vision-language model trained on conversations, loss on assistant tokens only; stage 1 trains
the connector, stage 2 connector + decoder (train.stage).

model (recipe section):
  from: DIR                     load a whole VLM checkpoint (e.g. stage 1's export)
  vision_from / llm_from: DIR   compose a model from a ViT and a decoder checkpoint with a new bridge, by the
  architecture: llava ...       family's `compose` (llava (default), llava_next, blip2, flamingo, qwen_vl,
  connector: {depth: 2}         qwen2_vl, qwen2_5_vl, internvl: hub/families.VLM_FAMILIES)
data: {source: shapes | digits | llava_json | hf | shapes_video, n, kind, template, train_on, max_length, pack,
       interleave, image_size, skip_bad_samples, ...}   each sample through the family's training processor
       (shapes_video: moving-shapes clips, data/shapes_video.py, for a model with a video token: frames,
       max_distractors, question_variants)
Exported as an HF-format VLM with its processor files (train/vlm_export.py) and model card.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ocellus.data.bad_samples import BadSample, BadSampleReport, screen
from ocellus.data.digits import digits_samples
from ocellus.data.encode import collate, encode_messages
from ocellus.data.hf_dataset import read_conversations, source_name
from ocellus.data.image import load_image
from ocellus.data.llava_json import read_llava_json
from ocellus.data.packing import pack_batch
from ocellus.data.shards import conversation_of
from ocellus.data.shapes import sample_at
from ocellus.data.shapes_video import VideoShapesConfig, sample_at as video_sample_at
from ocellus.data.video import Video
from ocellus.errors import ConfigError, InputError
from ocellus.hub.families import family_module
from ocellus.models.vlm import VLM
from ocellus.train.recipe import check_recipe
from ocellus.train.recipe_data import EncodedDataset, shapes_config
from ocellus.train.run import build_tokenizer, run_trainer   # build_tokenizer: a hook run_trainer calls
from ocellus.train.vlm_export import export_vlm, family_of, model_image_size, training_processor

PACKS = True   # data.pack: LLaVA-style families pack a batch's samples into shared rows (_packed_collate)


def validate(recipe: dict, where: str = "recipe") -> None:
    def bad(msg):
        raise ConfigError(f"{where}: {msg}")

    stage = check_recipe(recipe, where, data="image")
    if stage is not None and all(p.mode == "frozen" for p in stage.parts.values()) and len(stage.parts) == 3:
        bad("train.stage freezes every part: nothing would train")
    if not ({"from", "vision_from", "config"} & set(recipe.get("model") or {})):
        bad("model needs `from` (a VLM checkpoint), or `vision_from` + `llm_from` (+ connector), or `config`")


def build_model(recipe: dict, tok):
    """A vision-language model from pretrained parts + a new connector, by its family's `compose`."""
    spec = dict(recipe.get("model") or {})
    return family_module(spec.get("architecture", "llava")).compose(spec, tok)


def build_dataset(recipe: dict, tok, model):
    data = recipe["data"]
    n = int(data.get("n", 1000))
    size = int(data.get("image_size") or model_image_size(model))
    proc = training_processor(model, tok, size)
    template, train_on = data.get("template", "chatml"), data.get("train_on", "assistant")
    report, skip, max_len = None, bool(data.get("skip_bad_samples", False)), data.get("max_length")
    if data["source"] == "shapes":
        cfg = shapes_config(data)
        get = lambda i: sample_at(cfg, i, data.get("kind", "mixed"))   # noqa: E731
    elif data["source"] == "shapes_video":
        if getattr(proc, "video_token", None) is None:
            raise ConfigError("data.source shapes_video needs a model with a video token (Qwen2-VL: model.video_token)")
        vcfg = VideoShapesConfig(seed=int(data.get("seed", 0)), image_size=size, **{
            k: data[k] for k in ("frames", "max_distractors", "question_variants") if k in data})
        get = lambda i: video_sample_at(vcfg, i)   # noqa: E731
    elif data["source"] == "digits":
        rows = digits_samples("train", seed=int(data.get("seed", 0)), image_size=size)
        n = min(n, len(rows))
        get = rows.__getitem__
    elif data["source"] == "hf":   # a Hugging Face dataset (data/hf_dataset.py): rows checked as a file's records
        report = BadSampleReport(source_name(data))
        rows = read_conversations(data, skip_bad_samples=skip, report=report)
        n = len(rows)   # every row (data.n, when given, was applied by the reader)
        get = rows.__getitem__
    else:   # a LLaVA-JSON / TRL file: every record checked here, every sample made once before step 1
        report = BadSampleReport(str(data["path"]))
        rows = read_llava_json(data["path"], skip_bad_samples=skip, report=report).samples
        n = min(n, len(rows))
        get = rows.__getitem__
    k = data.get("interleave", 1)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"data.interleave must be a positive int (samples per training sequence), got {k!r}")
    if k > 1:  # k samples as the turns of one conversation: interleaved images and text (Flamingo)
        one, n = get, n if data["source"] == "shapes" else min(n, len(rows) // k)
        get = lambda i: _interleave([one(i * k + j) for j in range(k)])   # noqa: E731

    encode = SampleEncoder(proc, tok, template, train_on, max_len)
    make = lambda i: encode(get(i), i)   # noqa: E731
    collate_vlm = vlm_collate(data, model, tok)
    if report is None:
        return EncodedDataset(n, make), collate_vlm
    kept = screen(n, make, lambda i: f"{get(i).get('where')} (id {get(i).get('id')!r})", report, skip)
    return EncodedDataset(len(kept), lambda i: make(kept[i]), report), collate_vlm


class SampleEncoder:
    """A conversation sample {"id", "messages", "images" | "videos"} -> {"enc", "images"}: its images decoded
    (data/image.load_image: a bad one is a BadSample) and through the family's training processor, the
    conversation encoded with the image tokens, data.max_length checked. A top-level class, so loader workers
    (data.source shards) can take it."""

    def __init__(self, proc, tok, template: str, train_on: str, max_len):
        self.proc, self.tok, self.template, self.train_on, self.max_len = proc, tok, template, train_on, max_len

    def __call__(self, s: dict, i=None) -> dict:
        proc, tok, max_len = self.proc, self.tok, self.max_len
        if s.get("videos"):
            return _video_sample(s, i, proc, tok, self.template, self.train_on, max_len)
        try:
            pil = [load_image(im, name=f"sample {s.get('id', i)}, image {j}") for j, im in enumerate(s["images"])]
        except InputError as e:
            raise BadSample("bad_image", str(e)) from e
        images, counts = proc.image_inputs(pil)
        enc = encode_messages(s["messages"], tok, self.template, images_tokens=counts, image_token=proc.image_token,
                              image_wrap=proc.image_wrap, train_on=self.train_on, row=s.get("id", i))
        if max_len is not None and len(enc) > max_len:
            raise BadSample("too_long", f"sample {s.get('id', i)!r} is {len(enc)} tokens long after encoding, "
                                        f"over data.max_length={max_len}")
        return {"enc": enc, "images": images}


def vlm_collate(data: dict, model, tok):
    """Encoded samples -> the model's batch: padded ids and labels, image tensors concatenated (data.pack:
    packed rows, _packed_collate)."""
    if data.get("pack"):
        return _packed_collate(model, tok.pad_token_id or 0, data.get("max_length"))

    def collate_vlm(rows):
        batch = collate([r["enc"] for r in rows], tok.pad_token_id or 0)
        for key in rows[0]["images"]:  # every image tensor concatenates along dim 0 (Processor.image_inputs)
            batch[key] = torch.cat([r["images"][key] for r in rows])
        return batch
    return collate_vlm


class ShardConversation:
    """data.source shards: a raw tar sample (image members + a conversation .json, data/shards.conversation_of)
    -> the encoded sample."""

    def __init__(self, encode: SampleEncoder):
        self.encode = encode

    def __call__(self, raw: dict) -> dict:
        return self.encode(conversation_of(raw), raw["__key__"])


def sample_data(recipe: dict, tok, model):
    """A stream's hook (tar shards, HF streaming): (SampleEncoder, collate) for conversation samples."""
    data = recipe["data"]
    if data.get("interleave", 1) != 1:
        raise ConfigError("data.interleave joins samples by index; a stream (tar shards, data.streaming) has no "
                          "index: leave it unset")
    size = int(data.get("image_size") or model_image_size(model))
    encode = SampleEncoder(training_processor(model, tok, size), tok, data.get("template", "chatml"),
                           data.get("train_on", "assistant"), data.get("max_length"))
    return encode, vlm_collate(data, model, tok)


def shard_data(recipe: dict, tok, model):
    """The shard loader's hook (train/shard_loader.py): (decode a tar sample -> encoded sample, collate)."""
    encode, collate = sample_data(recipe, tok, model)
    return ShardConversation(encode), collate


def _video_sample(s: dict, i: int, proc, tok, template: str, train_on: str, max_len) -> dict:
    """A video sample (a conversation whose media are videos only): its clips through the processor's video path,
    its video parts encoded as placeholders of the video token (encode_messages expands media placeholders by
    count, whatever the token), so the ids are those the processor gives the same conversation at inference."""
    if s.get("images"):
        raise ConfigError(f"sample {s.get('id', i)!r}: training on a conversation with both images and videos is not "
                          f"supported; give each sample one kind of media")
    tensors, counts = proc.video_inputs([Video(list(v)) for v in s["videos"]])
    messages = [{**m, "content": [{"type": "image"} if p["type"] == "video" else p for p in m["content"]]}
                for m in s["messages"]]
    enc = encode_messages(messages, tok, template, images_tokens=counts, image_token=proc.video_token,
                          train_on=train_on, row=s.get("id", i))
    if max_len is not None and len(enc) > max_len:
        raise BadSample("too_long", f"sample {s.get('id', i)!r} is {len(enc)} tokens long after encoding, "
                                    f"over data.max_length={max_len}")
    return {"enc": enc, "images": tensors}


def _packed_collate(model, pad: int, width: int | None):
    """data.pack for task vlm: a model whose images become tokens of their own sample (VLM: LLaVA, LLaVA-NeXT,
    InternVL, Qwen-VL) packs with data/packing.pack_batch, Qwen2-VL with its own M-RoPE ids per document;
    BLIP-2's query slots and Flamingo's cross-attention to the latest image are not packed."""
    name = family_of(model)
    family = family_module(name)
    if hasattr(family, "collate_packed"):
        own = lambda rows, samples, width: family.collate_packed(rows, samples, width, model, pad)  # noqa: E731
        return lambda rows: pack_batch([{"input_ids": r["enc"].input_ids, "labels": r["enc"].labels, **r["images"]}
                                        for r in rows], pad, width, family_collate=own)
    if not isinstance(model, VLM):
        raise ConfigError(f"data.pack: packing is not supported for task vlm with the {name} family (its images "
                          f"do not reach the decoder as tokens of their own sample); leave data.pack unset")
    return lambda rows: pack_batch([r["enc"] for r in rows], pad, width, images=[r["images"] for r in rows])


def _interleave(samples: list[dict]) -> dict:
    """Samples joined as the turns of one conversation, images in order: the interleaved image-text
    sequences Flamingo trains on, in the form few-shot prompts take (eval/harness.py `_conversation`)."""
    return {"id": samples[0].get("id"), "where": samples[0].get("where"),
            "messages": [m for s in samples for m in s["messages"]],
            "images": [im for s in samples for im in s["images"]]}


def export(recipe: dict, model, tok, path: Path) -> Path:
    """With the processor's chat template (+ processor_config.json for LLaVA): transformers prompts it too."""
    size = int((recipe.get("data") or {}).get("image_size") or model_image_size(model))
    return export_vlm(model, tok, size, path)


def run(recipe: dict) -> Path:
    return run_trainer(recipe, sys.modules[__name__])


__all__ = ["validate", "build_tokenizer", "build_model", "build_dataset", "sample_data", "shard_data", "export", "run"]
