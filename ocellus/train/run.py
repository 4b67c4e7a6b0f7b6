"""`ocellus train RECIPE.yaml [key=value ...]`: recipe -> tokenizer, model, data -> Trainer -> export.

Three tasks share the loop:
  lm            next-token pretraining of a decoder on text (GPT-style), all tokens trained
  vit_classify  a ViT + linear head trained with cross-entropy on image labels (the original
                ViT recipe); the encoder is exported as a CLIPVisionModel checkpoint
  vlm           a LLaVA-style model trained on conversations, loss on assistant tokens only;
                stage 1 trains the connector, stage 2 connector + decoder (train.stage)
  qformer_pretrain  BLIP-2 stage 1: a Q-Former against a frozen ViT with ITC + ITG + ITM on
                captions (train/qformer_objectives.py); its export is a stage-2 recipe's qformer_from
  contrastive / moco  CLIP or SigLIP from scratch on shapes captions / MoCo v2 on augmented views
                (model, data, export and eval in train/contrastive_run.py)

model (recipe section):
  from: DIR                     load a whole HF-format checkpoint (e.g. stage 1's export)
  config: {...}                 build from a config.json-like dict (lm: decoder fields;
                                vit_classify: a vision config + num_classes)
  vision_from / llm_from: DIR   vlm: compose a LLaVA model from a ViT and a decoder checkpoint,
  connector: {depth: 2}         with a new connector between them
  init_from: DIR                a training checkpoint (or its parent `checkpoints/`) whose saved
                                tensors are loaded over the model, e.g. only stage 1's connector
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ocellus.data.bad_samples import BadSample, BadSampleReport, screen
from ocellus.eval.harness import predict, score, task_samples
from ocellus.errors import ConfigError, InputError
from ocellus.hub.checkpoint import load_model, save_model
from ocellus.hub.model_card import write_model_card
from ocellus.models.vision.vit import VisionTransformer, ViTClassifier, ViTConfig
from ocellus.nn.lora import merged_state_dict
from ocellus.train.distributed import DistInfo, full_model_state, is_fsdp, setup, teardown
from ocellus.train.loader import BatchLoader
from ocellus.data.packing import pack_batch
from ocellus.train.recipe import train_config
from ocellus.train.trainer import Trainer
from ocellus.train.vit_scene import SceneViTClassifier, patch_boxes, patch_classes, stack_labels
from ocellus.data.bpe import train_bpe
from ocellus.data.digits import digits_samples
from ocellus.data.encode import collate, encode_messages
from ocellus.data.hf_dataset import given, read_conversations, source_name
from ocellus.data.image import ImageProcessorConfig, load_image
from ocellus.data.llava_json import read_llava_json
from ocellus.data.shapes import caption, describe, Obj, sample_at, Scene, ShapesConfig
from ocellus.data.tokenizer import Tokenizer
from ocellus.hub.families import family_for_config, family_for_model
from ocellus.hub.vision_families import save_vision
from ocellus.models.families.registry import family_module, VLM_FAMILIES
from ocellus.models.vlm import VLM
from ocellus.train import albef_blip_run, contrastive_run
from ocellus.train.qformer_objectives import caption_dataset, compose_stage1
from ocellus.train.shard_loader import shard_loader
from ocellus.train.state import latest_checkpoint, load_partial
from ocellus.viz.curves import plot_curve

IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)
PACKED_TASKS = ("lm", "vlm")   # data.pack: a batch's samples share rows (data/packing.pack_batch)


# ---- tokenizer ---------------------------------------------------------------------------------
def build_tokenizer(recipe: dict, out_dir: Path):
    spec = recipe.get("tokenizer")
    if isinstance(spec, str):
        return Tokenizer.from_dir(spec)
    if not isinstance(spec, dict):
        model = recipe.get("model") or {}
        source = model.get("from") or model.get("llm_from")
        if source:
            return Tokenizer.from_dir(source)
        raise ConfigError("recipe needs `tokenizer` (a dir or {train_bpe: {...}}) or a model `from`/`llm_from` dir")
    if "from" in spec:
        return Tokenizer.from_dir(spec["from"])
    if "train_bpe" in spec:
        opts = dict(spec["train_bpe"])
        texts = list(_corpus_texts(recipe, int(opts.pop("corpus_n", 4000))))
        tok = train_bpe(texts, int(opts.pop("vocab_size", 512)), **opts)
        tok.save(out_dir / "tokenizer")
        return tok
    raise ConfigError(f"tokenizer section {spec} needs `from` or `train_bpe`")


def _shapes_config(data: dict, seed_key: str = "seed"):
    """data section -> ShapesConfig. kind_weights / qa_weights are mappings in YAML
    ({qa: 6, caption: 1}); kinds or types left out get weight 0."""
    kw = {k: data[k] for k in ("image_size", "max_objects", "min_objects", "answer_prompt", "hard_negatives",
                               "phrasing") if k in data}
    for key in ("conversation_turns", "qa_turns"):
        if key in data:
            turns = data[key]
            if not (isinstance(turns, (list, tuple)) and len(turns) == 2 and all(isinstance(t, int) for t in turns)):
                raise ConfigError(f"data.{key} must be [min, max] integers, got {turns!r}")
            kw[key] = tuple(turns)
    for key in ("kind_weights", "qa_weights"):
        if key in data:
            weights = data[key]
            if not isinstance(weights, dict) or not all(isinstance(v, (int, float)) for v in weights.values()):
                raise ConfigError(f"data.{key} must be a mapping of name -> weight (YAML: {{qa: 4, caption: 1}}, "
                                  f"a space after each colon), got {weights!r}")
            kw[key] = tuple((str(k), float(v)) for k, v in weights.items())
    return ShapesConfig(seed=int(data.get(seed_key, data.get("seed", 0))), **kw)


def _corpus_texts(recipe: dict, n: int):
    """Text of generated conversations (all kinds) and their role names, for BPE training."""
    cfg = _shapes_config(recipe.get("data") or {})
    for i in range(n):
        for m in sample_at(cfg, 1_000_000 + i, "mixed")["messages"]:
            yield m["role"]  # the chat template writes it before every turn: worth a token of its own
            for part in m["content"]:
                if part.get("type") == "text":
                    yield part["text"]


# ---- model -------------------------------------------------------------------------------------
def build_model(recipe: dict, tok):
    task, spec = recipe["task"], dict(recipe.get("model") or {})
    if "from" in spec:
        model = load_model(spec["from"])
    elif task == "lm":
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **spec.get("config", {}),
               "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
               "bos_token_id": tok.bos_token_id}
        model = family_for_config(cfg).build(cfg)
    elif task == "vit_classify":
        cfg = spec.get("config") or {}
        encoder = VisionTransformer(ViTConfig.from_hf(cfg))
        num_classes = int(spec.get("num_classes", 0) or 0) or _num_classes(recipe)
        if (recipe.get("data") or {}).get("labels") == "objects":
            model = SceneViTClassifier(encoder, num_classes, box_loss=float(spec.get("box_loss", 0.0)))
        else:
            if spec.get("box_loss"):
                raise ConfigError("model.box_loss needs data.labels: objects (boxes are per patch of a scene)")
            model = ViTClassifier(encoder, num_classes)
    elif task == "vlm":
        model = _compose_vlm(spec, tok)
    elif task == "qformer_pretrain":   # BLIP-2 stage 1: ITC + ITG + ITM (train/qformer_objectives.py)
        model = compose_stage1(spec, tok)
    elif task in ("contrastive", "moco"):
        model = contrastive_run.build_model(recipe, tok)
    elif task in ("albef", "blip"):   # ITC + ITM + MLM / LM pretraining: train/albef_blip_run.py
        model = albef_blip_run.build_model(recipe, tok)
    else:
        raise ConfigError(f"unknown task {task!r}")
    if spec.get("init_from"):
        _init_from(model, Path(spec["init_from"]))
    return model


def _num_classes(recipe: dict) -> int:
    data = recipe["data"]
    if data["source"] == "digits":
        return 10
    cfg = _shapes_config(data)
    return len(cfg.shapes) * len(cfg.colours)


def _compose_vlm(spec: dict, tok):
    """A vision-language model from pretrained parts + a new connector, by its family's `compose`
    (model.architecture: llava (default), llava_next, blip2, flamingo, qwen_vl, qwen2_vl, qwen2_5_vl, internvl)."""
    return family_module(spec.get("architecture", "llava")).compose(spec, tok)


def _init_from(model, path: Path) -> None:
    from safetensors.torch import load_file
    if (path / "latest").exists():
        path = latest_checkpoint(path)
    load_partial(model, load_file(str(path / "model.safetensors")), source=str(path))


# ---- data --------------------------------------------------------------------------------------
class EncodedDataset:
    """Samples made and encoded on access (deterministic by index), so nothing large is held.
    bad_samples: a file dataset's BadSampleReport (data/bad_samples.py), shown before step 1."""

    def __init__(self, n: int, make, bad_samples=None):
        self.n, self.make, self.bad_samples = n, make, bad_samples

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.make(i)


def image_config(size: int):
    return ImageProcessorConfig.from_dict({
        "do_resize": True, "size": {"height": size, "width": size}, "do_center_crop": False,
        "do_normalize": True, "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD), "resample": 3})


def build_dataset(recipe: dict, tok, model) -> tuple[EncodedDataset, callable]:
    task, data = recipe["task"], recipe["data"]
    n, max_len = int(data.get("n", 1000)), data.get("max_length")
    if task == "lm":
        cfg = _shapes_config(data)

        image_text = data.get("image_text", "drop")
        if image_text not in ("drop", "description", "caption"):
            raise ConfigError(f"data.image_text must be drop, description or caption, got {image_text!r}")

        def make(i):
            sample = sample_at(cfg, i, data.get("kind", "mixed"))
            stand_in = _scene_text(cfg, sample["objects"], image_text)
            msgs = [{"role": m["role"], "content": [({"type": "text", "text": stand_in + "\n"} if p.get("type") == "image"
                                                     else p) for p in m["content"]
                                                    if p.get("type") == "text" or (stand_in and p.get("type") == "image")]}
                    for m in sample["messages"]]
            return encode_messages(msgs, tok, data.get("template", "chatml"), train_on=data.get("train_on", "all"),
                                   max_length=max_len)
        pad = tok.pad_token_id or 0
        return EncodedDataset(n, make), (lambda rows: pack_batch(rows, pad, max_len)) if data.get("pack") else \
            (lambda rows: collate(rows, pad))
    if task == "vit_classify":
        return _classify_dataset(data, n, model)
    if task in ("contrastive", "moco"):
        return contrastive_run.build_dataset(recipe, tok, model)
    if task in ("albef", "blip"):
        return albef_blip_run.build_dataset(recipe, tok, model)
    if task == "qformer_pretrain":
        return caption_dataset(data, n, tok, model, _shapes_config(data), image_config(int(data.get(
            "image_size") or model.vision_tower.config.image_size)))
    return _vlm_dataset(recipe, data, n, tok, model)


def _scene_text(cfg, objects: list[dict], how: str) -> str:
    """What stands in for a scene's image in text-only pretraining (data.image_text): nothing
    ("drop"), its detailed description or its short caption, so the text holds what the image shows,
    as the text-only GPT-4 that wrote LLaVA's data read captions and boxes instead of pixels."""
    if how == "drop":
        return ""
    scene = Scene(cfg.image_size, cfg.background, tuple(Obj(o["shape"], o["colour"], tuple(o["bbox"])) for o in objects))
    return describe(scene) if how == "description" else caption(scene)


def _classify_dataset(data: dict, n: int, model):
    from ocellus.data.image import preprocess
    size = int(data.get("image_size", 32))
    icfg = image_config(size)
    if data["source"] == "digits":
        from ocellus.data.digits import digits_samples
        rows = digits_samples("train", seed=int(data.get("seed", 0)), image_size=size)
        return EncodedDataset(len(rows), lambda i: (preprocess([rows[i]["images"][0]], icfg)[0], rows[i]["label"])), \
            stack_labels
    from ocellus.data.shapes import make_scene, render
    import dataclasses
    labels = data.get("labels", "single")
    if labels not in ("single", "objects"):
        raise ConfigError(f"data.labels must be 'single' (one object per image, its (shape, colour) class) or "
                          f"'objects' (min..max_objects objects: the classes present + each patch's class), "
                          f"got {labels!r}")
    cfg = _shapes_config(data)
    if labels == "single":
        cfg = dataclasses.replace(cfg, min_objects=1, max_objects=1)
    classes = [(s, c) for s in cfg.shapes for c in cfg.colours]
    patch = model.encoder.config.patch_size

    def make(i):
        scene = make_scene(np.random.default_rng([cfg.seed, i]), cfg)
        image = render(scene)
        pixels = preprocess([image], icfg)[0]
        if labels == "single":  # the class of the one object
            obj = scene.objects[0]
            return pixels, classes.index((obj.shape, obj.colour))
        present = torch.zeros(len(classes))
        for obj in scene.objects:
            present[classes.index((obj.shape, obj.colour))] = 1.0
        row = (pixels, present, patch_classes(scene, image, classes, patch, size))
        return row + (patch_boxes(scene, image, patch, size),) if getattr(model, "patch_box", None) else row
    return EncodedDataset(n, make), stack_labels


def _family_of(model) -> str:
    name = family_for_model(model).name
    if name not in VLM_FAMILIES:
        raise ConfigError(f"task vlm needs a vision-language model; this is a {name!r} model")
    return name


def training_processor(model, tok, size: int):
    """The processor of the model's family at the recipe's image size (mean/std 0.5)."""
    return family_module(_family_of(model)).training_processor(model, tok, image_config(size))


def _vlm_dataset(recipe, data, n, tok, model):
    size = int(data.get("image_size") or _model_image_size(model))
    proc = training_processor(model, tok, size)
    template, train_on = data.get("template", "chatml"), data.get("train_on", "assistant")
    report, skip, max_len = None, bool(data.get("skip_bad_samples", False)), data.get("max_length")
    if data["source"] == "shapes":
        cfg = _shapes_config(data)
        get = lambda i: sample_at(cfg, i, data.get("kind", "mixed"))   # noqa: E731
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

    def make(i):
        s = get(i)
        try:
            pil = [load_image(im, name=f"sample {s.get('id', i)}, image {j}") for j, im in enumerate(s["images"])]
        except InputError as e:
            raise BadSample("bad_image", str(e)) from e
        images, counts = proc.image_inputs(pil)
        enc = encode_messages(s["messages"], tok, template, images_tokens=counts, image_token=proc.image_token,
                              image_wrap=proc.image_wrap, train_on=train_on, row=s.get("id", i))
        if max_len is not None and len(enc) > max_len:
            raise BadSample("too_long", f"sample {s.get('id', i)!r} is {len(enc)} tokens long after encoding, "
                                        f"over data.max_length={max_len}")
        return {"enc": enc, "images": images}

    def collate_vlm(rows):
        batch = collate([r["enc"] for r in rows], tok.pad_token_id or 0)
        for key in rows[0]["images"]:  # every image tensor concatenates along dim 0 (Processor.image_inputs)
            batch[key] = torch.cat([r["images"][key] for r in rows])
        return batch
    if data.get("pack"):
        collate_vlm = _packed_vlm_collate(model, tok.pad_token_id or 0, max_len)
    if report is None:
        return EncodedDataset(n, make), collate_vlm
    kept = screen(n, make, lambda i: f"{get(i).get('where')} (id {get(i).get('id')!r})", report, skip)
    return EncodedDataset(len(kept), lambda i: make(kept[i]), report), collate_vlm


def _packed_vlm_collate(model, pad: int, width: int | None):
    """data.pack for task vlm: a model whose images become tokens of their own sample (VLM: LLaVA, LLaVA-NeXT,
    InternVL, Qwen-VL) packs with data/packing.pack_batch, Qwen2-VL with its own M-RoPE ids per document;
    BLIP-2's query slots and Flamingo's cross-attention to the latest image are not packed."""
    name = _family_of(model)
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


def _model_image_size(model) -> int:
    config = getattr(getattr(model, "vision_tower", None), "config", None)
    if config is None or not hasattr(config, "image_size"):
        raise ConfigError("data.image_size is required for this model (its vision tower has no fixed image size)")
    return int(config.image_size)


# ---- export ------------------------------------------------------------------------------------
def export(recipe: dict, model, tok, out: Path) -> Path:
    """The trained model as a checkpoint directory (HF layout) with its model card (README.md)."""
    path = _export(recipe, model, tok, out)
    write_model_card(path, recipe, tok)
    return path


def _export(recipe: dict, model, tok, out: Path) -> Path:
    task = recipe["task"]
    path = Path((recipe.get("export") or {}).get("dir") or out / "model")
    if task in ("contrastive", "moco"):
        return contrastive_run.export(recipe, model, tok, path)
    if task in ("albef", "blip"):
        return albef_blip_run.export(recipe, model, tok, path)
    if task == "vit_classify":
        save_vision(model.encoder, path)
        (path / "classifier_head.json").write_text(json.dumps({"num_classes": model.classifier.out_features}))
        return path
    if task != "vlm":
        save_model(model, path, tokenizer=tok)
    else:  # with the processor's chat template (+ processor_config.json for LLaVA): transformers prompts it too
        size = int((recipe.get("data") or {}).get("image_size") or _model_image_size(model))
        save_model(model, path, tokenizer=tok, processor=training_processor(model, tok, size))
        family = family_module(_family_of(model))
        if hasattr(family, "export_processor"):  # a family whose preprocessing has more than size/mean/std
            family.export_processor(model, tok, image_config(size), path)
            return path
        (path / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
            "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD), "resample": 3}, indent=2))
    return path


def exportable(recipe: dict, model, tok, info: DistInfo):
    """The trained model as export takes it: itself, or under FSDP (its parameters are shards) a plain copy
    built again from the recipe, holding the full tensors gathered to rank 0's CPU (LoRA folded in). A
    collective: every rank calls it; ranks other than 0 get None."""
    if not is_fsdp(model):
        return model
    state = full_model_state(model)
    if not info.is_main:
        return None
    plain = build_model(recipe, tok)
    plain.load_state_dict(merged_state_dict(model, state))
    return plain.eval()


EVAL_DURING_TRAINING = ("shapes-vqa", "shapes-grounding")


def _eval_spec(recipe: dict, cfg) -> tuple[str, int] | None:
    """(eval task, n) when train.eval_every asks for evaluation during training; checked before anything is
    built, so a recipe that cannot be scored fails before step 1."""
    if not cfg.eval_every:
        return None
    spec = recipe.get("eval") or {}
    task, n = spec.get("task", "shapes-vqa"), spec.get("n", 200)
    if recipe["task"] != "vlm" or task not in EVAL_DURING_TRAINING:
        raise ConfigError(f"train.eval_every: evaluation during training is for task vlm with eval.task one of "
                          f"{', '.join(EVAL_DURING_TRAINING)}; got task {recipe['task']!r}, eval.task {task!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"eval.n must be a positive integer, got {n!r}")
    return task, n


def _evaluator(recipe: dict, model, tok, cfg):
    """train.eval_every > 0 (task vlm): held-out accuracy on the run's own model every eval_every steps, so a
    run draws accuracy against step and training seconds (issue 18's converged comparison). eval: {task:
    shapes-vqa | shapes-grounding, n: 200}; the samples are the eval seed's, as `ocellus eval` scores them."""
    spec = _eval_spec(recipe, cfg)
    if spec is None:
        return None
    task, n = spec
    size = int((recipe.get("data") or {}).get("image_size") or _model_image_size(model))
    samples, processor = task_samples(task, n, size), training_processor(model, tok, size)
    grounding = task == "shapes-grounding"

    def evaluate(m) -> dict:
        result = score(task, samples, predict(m, processor, samples, [], 40 if grounding else 6,
                                              keep_special=grounding))
        out = {kind: round(acc, 4) for kind, (_, acc) in result["table"].items()}
        return {**out, "mean_iou": round(result["mean_iou"], 4)} if grounding else out
    return evaluate


def run_recipe(recipe: dict, dataset=None) -> Path:
    """Train a validated recipe (train/recipe.load_recipe) -> the export dir. dataset: a `datasets.Dataset`
    (or DatasetDict, data.split picks) that a `data: {source: hf}` recipe without data.path trains on
    (data/hf_dataset.py; docs/DATA_FORMATS.md)."""
    # lazy: train's task modules and posttrain / recipe / schema import each other (issue 19 item 4: one task table)
    from ocellus.train.recipe import POSTTRAIN_TASKS
    if dataset is not None:
        if (recipe.get("data") or {}).get("source") != "hf" or recipe["data"].get("path"):
            raise ConfigError("run_recipe(recipe, dataset=...): the recipe must read it: data.source hf without "
                              "data.path")
        with given(dataset):
            return run_recipe(recipe)
    if (recipe.get("data") or {}).get("pack") and recipe["task"] not in PACKED_TASKS:
        raise ConfigError(f"data.pack: packing is not supported for task {recipe['task']!r} (only for "
                          f"{' and '.join(PACKED_TASKS)}); leave data.pack unset")
    if recipe["task"] in POSTTRAIN_TASKS:  # rm / dpo / grpo / ppo / distill: train/posttrain.py
        # lazy: train's task modules and posttrain / recipe / schema import each other (issue 19 item 4: one task table)
        from ocellus.train.posttrain import run_posttrain
        return run_posttrain(recipe)
    info = setup(recipe.get("distributed", "none"))
    cfg = train_config(recipe)
    _eval_spec(recipe, cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(recipe.get("seed", 0)))
    tok = build_tokenizer(recipe, out) if recipe["task"] not in ("vit_classify", "moco") else None
    model = build_model(recipe, tok)
    batch = int(recipe["train"].get("batch_size", 8))
    if recipe["data"].get("source") == "shards":   # tar shards, streamed: train/shard_loader.py
        loader = shard_loader(recipe, tok, model, batch, info)
    else:
        dataset, collate = build_dataset(recipe, tok, model)
        report = getattr(dataset, "bad_samples", None)
        if report is not None and report.skipped and info.is_main:   # skip_bad_samples: said before step 1
            print(f"[{recipe.get('name')}] {report.summary()}; each in {report.write(out)}", flush=True)
        loader = BatchLoader(dataset, batch, collate, seed=int(recipe.get("seed", 0)),
                             rank=info.rank, world_size=info.world_size)
    trainer = Trainer(model, loader, cfg, dist_info=info, evaluate=_evaluator(recipe, model, tok, cfg))
    if info.is_main:
        print(f"[{recipe.get('name')}] trainable parameters per part:\n{trainer.report}")
        (out / "recipe.json").write_text(json.dumps({k: v for k, v in recipe.items() if k != "_path"}, indent=1))
    trainer.fit()
    path, plain = None, exportable(recipe, model, tok, info)
    if info.is_main:
        plot_curve(trainer.history, out / "curve.png", title=recipe.get("name", ""))
        path = export(recipe, plain, tok, out)
        print(f"[{recipe.get('name')}] exported {path}")
    teardown()
    return path
