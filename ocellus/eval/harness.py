"""The evaluation harness: `ocellus eval --model DIR --task T [--shots K]`.

Tasks (held-out samples the model never trained on: a seed of their own):
  shapes-vqa        single-word QA; exact match after VQA normalisation, counting by the number
                    read from the answer; broken down by question type
  shapes-caption    short captions; corpus BLEU-4 and CIDEr-D against the ground-truth caption
                    and the detailed description
  shapes-grounding  Qwen-VL boxes for a named object; accuracy@IoU 0.5
  digits            scikit-learn's digits test split; exact match
  shapes-video      moving-shapes videos (data/shapes_video.py): "Which way does the circle move?", exact
                    match of the direction, broken down by direction; video models (Qwen2-VL) only
  retrieval | zeroshot | linear-probe   representation models (CLIP/SigLIP/MoCo exports), not
                    generation: image<->text recall@1/5/10, zero-shot accuracy, the digits linear
                    probe; delegated to ocellus/eval/retrieval.py
`--shots K` puts K solved examples (their images included) before the question as earlier
turns of the conversation: zero-, one- or few-shot prompting as in GPT-3.
shapes-vqa asks its questions as worded by `--phrasing` (PHRASINGS: the training wording, no suffix,
US spelling without it, or the paraphrases of ShapesConfig(phrasing="varied") on the eval seed), and
`--turns K` scores the K-th question of a K-turn conversation about the image, the earlier questions
answered by the model itself (its replies become the assistant turns, as a user chats).
Generation is greedy and batched (left padding), through the same engine as everything else.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ocellus.data.processor import Processor
from ocellus.errors import ConfigError
from ocellus.eval.caption import cider_d, corpus_bleu
from ocellus.eval.grounding import box_iou, grounding_hit, parse_boxes
from ocellus.eval.metrics import format_table, score_by_type
from ocellus.eval.vqa import count_match, vqa_exact_match
from ocellus.viz.progress import Progress
from ocellus.hub.checkpoint import load_model, trained_scene_size
from ocellus.hub.model_card import record_eval
from ocellus.hub.resolve import default_model_dir
from ocellus.data.processor import load_processor
from ocellus.data.digits import digits_samples
from ocellus.data.shapes import caption, describe, make_scene, sample_at, ShapesConfig
from ocellus.data.shapes_video import VideoShapesConfig, samples as video_samples
from ocellus.eval import retrieval

TASKS = ("shapes-vqa", "shapes-caption", "shapes-grounding", "digits", "shapes-video")
EVAL_SEED = 10_007   # scenes no recipe trains on (recipes use small seeds)
# --phrasing -> the ShapesConfig wording: (phrasing, keep the answer_prompt suffix)
PHRASINGS = {"canonical": ("canonical", True), "plain": ("canonical", False), "us": ("us", False),
             "varied": ("varied", True)}


def task_samples(task: str, n: int, image_size: int, seed: int = EVAL_SEED, phrasing: str = "canonical",
                 turns: int = 1) -> list[dict]:
    """Held-out samples; for shapes-vqa each asks `turns` questions worded by `phrasing` (PHRASINGS) and is
    scored on the last (its "type" and "answer")."""
    if (phrasing, turns) != ("canonical", 1) and task != "shapes-vqa":
        raise ConfigError(f"--phrasing and --turns apply to shapes-vqa only, not {task}")
    if phrasing not in PHRASINGS or turns < 1:
        raise ConfigError(f"phrasing must be one of {', '.join(PHRASINGS)} and turns >= 1, got {phrasing!r}, {turns}")
    if task == "digits":
        return digits_samples("test", seed=0, image_size=image_size)[:n]
    if task == "shapes-video":
        return video_samples(VideoShapesConfig(image_size=image_size, seed=seed), n)
    import numpy as np
    kind = {"shapes-vqa": "qa", "shapes-caption": "caption", "shapes-grounding": "grounding"}[task]
    wording, suffix = PHRASINGS[phrasing]
    cfg = ShapesConfig(image_size=image_size, seed=seed, min_size=max(0.18, 6.5 / image_size), phrasing=wording,
                       qa_turns=(turns, turns), **({} if suffix else {"answer_prompt": None}))
    out = []
    for i in range(n):
        s = sample_at(cfg, i, kind)
        if task == "shapes-caption":  # every caption-style answer of the scene is a reference
            scene = make_scene(np.random.default_rng([cfg.seed, i]), cfg)
            s["references"] = [caption(scene), describe(scene)]
        out.append(s)
    return out


def _users(sample: dict) -> list[dict]:
    return [m for m in sample["messages"] if m["role"] == "user"]


def _reply(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _conversation(sample: dict, shots: list[dict], replies: list[str] = ()) -> tuple[list[dict], list]:
    """Shots as solved earlier turns (their first question), then the sample's questions: those before
    `replies` answered by them, then the next one without its answer."""
    messages, images = [], []
    for shot in shots:
        answer = shot["answer"] if isinstance(shot["answer"], str) else shot["answer"][0]
        messages += [_users(shot)[0], _reply(answer)]
        images += shot["images"]
    for user, reply in zip(_users(sample), [*replies, None]):
        messages += [user] if reply is None else [user, _reply(reply)]
    return messages, images + list(sample["images"])


@torch.inference_mode()
def predict(model, processor, samples: list[dict], shots: list[dict], max_new_tokens: int,
            batch_size: int = 16, keep_special: bool = False, progress: bool = False) -> list[str]:
    """The model's reply to each sample's last question. A sample of several user turns is asked them in
    order, the model's own replies put in as the assistant turns before the next question.
    keep_special: decode special tokens too (grounding's <ref>/<box> are special in the shapes BPE),
    cutting each answer at its end-of-turn token instead. progress: samples done on stderr (viz/progress.py: a bar
    on a terminal, else a line every tenth of them or 30 s)."""
    preds = []
    bar = Progress(len(samples), desc="eval", unit="sample", every=max(1, len(samples) // 10)) if progress else None
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        replies = [[] for _ in chunk]
        for turn in range(max(len(_users(s)) for s in chunk)):
            live = [b for b, s in enumerate(chunk) if len(_users(s)) > turn]
            convs, images = zip(*(_conversation(chunk[b], shots, replies[b]) for b in live))
            videos = [v for b in live for v in chunk[b].get("videos", ())]   # shapes-video: one clip a sample
            batch = processor(messages=list(convs), images=[list(i) for i in images], videos=videos or None)
            stops = getattr(processor, "stop_strings", ())   # a template ending turns in text (MiniGPT-4's ###)
            out = model.generate(**batch, max_new_tokens=max_new_tokens,
                                 **({"stop_strings": stops, "tokenizer": processor.tokenizer} if stops else {}))
            T = batch["input_ids"].shape[1]
            for b, row in zip(live, out):
                replies[b].append(_answer(processor, row[T:].tolist(), keep_special))
        preds += [r[-1] for r in replies]
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return preds


def _answer(processor, ids: list[int], keep_special: bool) -> str:
    cut = getattr(processor, "cut_reply", lambda text: text)   # a Tokenizer (text-only checkpoint) has no stops
    if not keep_special:
        return cut(processor.decode(ids, skip_special_tokens=True)).strip()
    eos = processor.eos_token_id
    return cut(processor.decode(ids[:ids.index(eos)] if eos in ids else ids)).strip()


def score(task: str, samples: list[dict], preds: list[str]) -> dict:
    if task == "shapes-caption":
        refs = [s["references"] for s in samples]
        bleu, cider = corpus_bleu(preds, refs), cider_d(preds, refs)
        return {"table": {"BLEU-4": (len(preds), bleu.bleu), "CIDEr-D": (len(preds), cider.score)},
                "metric": "caption"}
    records = [{"type": s["type"], "pred": p, "gold": s["answer"]} for s, p in zip(samples, preds)]
    if task == "shapes-grounding":
        table = score_by_type(records, lambda pred, gold: grounding_hit(pred, parse_boxes(gold)[0].box))
        mean_iou = score_by_type(records, lambda pred, gold: box_iou(pred, parse_boxes(gold)[0].box))["all"][1]
        return {"table": table, "metric": "accuracy", "mean_iou": mean_iou}
    else:  # a numeric gold answer is a count: "three" and "3" both match it
        table = score_by_type(records, lambda pred, gold: count_match(pred, gold) if gold.isdigit()
                              else vqa_exact_match(pred, gold))
    return {"table": table, "metric": "accuracy"}


def evaluate(model_dir, task: str, n: int = 200, shots: int = 0, batch_size: int = 16, out: str | None = None,
             model=None, processor=None, printer=print, phrasing: str = "canonical", turns: int = 1,
             card: bool = False, quantize=None, progress: bool = False, image_size: int | None = None) -> dict:
    """Score a model on a task (held-out samples) -> the result dict (table per type); out: also as JSON;
    card: also into model_dir's model card (README.md) with the command that reproduces it.
    image_size: the side of the rendered scenes; default the one the model trained on (config.json's
    ocellus_scene_size, written by a recipe's export), else eval_image_size's.
    quantize="int8": the decoder with int8 weights (hub/checkpoint.load_model). progress: show predict's progress."""
    if task in retrieval.EVAL_TASKS:
        result = retrieval.evaluate(model_dir, task, n=n, printer=printer)
        if out:
            Path(out).write_text(json.dumps(result, indent=1))
        return result
    if task not in TASKS:
        raise ConfigError(f"unknown eval task {task!r}; choose from {', '.join(TASKS)}")
    model = model if model is not None else load_model(model_dir, quantize=quantize)
    processor = processor if processor is not None else load_processor(model_dir)
    if not isinstance(processor, Processor):
        raise ConfigError(f"--task {task} asks questions about images, and {model_dir} is a text-only checkpoint (no "
                          f"preprocessor_config.json / processor_config.json): give --model a vision-language model "
                          f"directory, e.g. {default_model_dir()} (the embedded tiny LLaVA)")
    if task == "shapes-video" and (shots or getattr(processor, "video_token", None) is None):
        raise ConfigError(f"--task shapes-video asks about videos: it needs a video model (Qwen2-VL with a "
                          f"video_token_id) and takes no --shots; {model_dir} "
                          f"{'has no video token' if processor.video_token is None else 'was given --shots'}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"--image-size must be a positive number of pixels, got {image_size!r}")
    size = image_size or trained_scene_size(model_dir) or eval_image_size(model, processor)
    samples = task_samples(task, n + shots, size, phrasing=phrasing, turns=turns)
    shot_pool, samples = samples[:shots], samples[shots:]
    max_new = {"shapes-vqa": 6, "digits": 4, "shapes-caption": 40, "shapes-grounding": 40, "shapes-video": 4}[task]
    preds = predict(model, processor, samples, shot_pool, max_new, batch_size,
                    keep_special=task == "shapes-grounding", progress=progress)
    result = score(task, samples, preds)
    result.update(task=task, n=len(samples), shots=shots, phrasing=phrasing, turns=turns, image_size=size,
                  examples=[{"question": _question(s), "pred": p, "gold": s["answer"]} for s, p in zip(samples[:5], preds)])
    asked = f"  phrasing={phrasing}  turns={turns}" if task == "shapes-vqa" else ""
    printer(f"{task}  n={len(samples)}  shots={shots}{asked}")
    printer(format_table(result["table"], score_name=result["metric"], percent=result["metric"] == "accuracy"))
    if "mean_iou" in result:
        printer(f"mean IoU {result['mean_iou']:.3f}")
    if out:
        Path(out).write_text(json.dumps({**result, "table": {k: list(v) for k, v in result["table"].items()}}, indent=1))
    if card:
        extra = (f" --phrasing {phrasing} --turns {turns}" if task == "shapes-vqa" else "") + \
            (f" --image-size {image_size}" if image_size else "")
        record_eval(model_dir, result, f"ocellus eval --model DIR --task {task} --n {n} --shots {shots}{extra}")
    return result


def eval_image_size(model, processor) -> int:
    """The side of the rendered eval scenes: the vision tower's fixed input size, else (dynamic-
    resolution families) the processor's configured size."""
    config = getattr(getattr(model, "vision_tower", None), "config", None)
    if getattr(config, "image_size", None):
        return int(config.image_size)
    icfg = processor.image_config
    side = icfg.size_hw or icfg.crop_size
    if side:
        return int(side[0])
    if icfg.shortest_edge:
        return int(icfg.shortest_edge)
    raise ConfigError("cannot tell the eval image size: the model's vision tower has no fixed image_size and "
                      "the processor's image config has no size")


def _question(sample: dict) -> str:
    """The text of the scored (last) question."""
    return " ".join(p["text"] for p in _users(sample)[-1]["content"] if p.get("type") == "text")
