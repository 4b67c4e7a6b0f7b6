"""`ocellus train RECIPE.yaml [key=value ...]`: recipe -> tokenizer, model, data -> Trainer -> export.

Three tasks share the loop:
  lm            next-token pretraining of a decoder on text (GPT-style), all tokens trained
  vit_classify  a ViT + linear head trained with cross-entropy on image labels (the original
                ViT recipe); the encoder is exported as a CLIPVisionModel checkpoint
  vlm           a LLaVA-style model trained on conversations, loss on assistant tokens only;
                stage 1 trains the connector, stage 2 connector + decoder (train.stage)

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

import torch

import ocellus
from ocellus.errors import ConfigError
from ocellus.train.loader import BatchLoader
from ocellus.train.recipe import train_config
from ocellus.train.trainer import Trainer

IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)


# ---- tokenizer ---------------------------------------------------------------------------------
def build_tokenizer(recipe: dict, out_dir: Path):
    from ocellus.data.tokenizer import Tokenizer
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
        from ocellus.data.bpe import train_bpe
        opts = dict(spec["train_bpe"])
        texts = list(_corpus_texts(recipe, int(opts.pop("corpus_n", 4000))))
        tok = train_bpe(texts, int(opts.pop("vocab_size", 512)), **opts)
        tok.save(out_dir / "tokenizer")
        return tok
    raise ConfigError(f"tokenizer section {spec} needs `from` or `train_bpe`")


def _shapes_config(data: dict, seed_key: str = "seed"):
    from ocellus.data.shapes import ShapesConfig
    kw = {k: data[k] for k in ("image_size", "max_objects", "min_objects", "answer_prompt") if k in data}
    return ShapesConfig(seed=int(data.get(seed_key, data.get("seed", 0))), **kw)


def _corpus_texts(recipe: dict, n: int):
    """Text of generated conversations (all kinds), for BPE training and text pretraining."""
    from ocellus.data.shapes import sample_at
    cfg = _shapes_config(recipe.get("data") or {})
    for i in range(n):
        for m in sample_at(cfg, 1_000_000 + i, "mixed")["messages"]:
            for part in m["content"]:
                if part.get("type") == "text":
                    yield part["text"]


# ---- model -------------------------------------------------------------------------------------
def build_model(recipe: dict, tok):
    task, spec = recipe["task"], dict(recipe.get("model") or {})
    if "from" in spec:
        model = ocellus.load(spec["from"])
    elif task == "lm":
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **spec.get("config", {}),
               "vocab_size": len(tok), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
               "bos_token_id": tok.bos_token_id}
        from ocellus.hub.families import family_for_config
        model = family_for_config(cfg).build(cfg)
    elif task == "vit_classify":
        from ocellus.models.vision.vit import ViTClassifier, ViTConfig, VisionTransformer
        cfg = spec.get("config") or {}
        model = ViTClassifier(VisionTransformer(ViTConfig.from_hf(cfg)), int(spec.get("num_classes", 0) or 0)
                              or _num_classes(recipe))
    elif task == "vlm":
        model = _compose_vlm(spec, tok)
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
    """LLaVA from a ViT checkpoint + a decoder checkpoint + a new connector."""
    if not (spec.get("vision_from") and spec.get("llm_from")):
        raise ConfigError("model for a vlm needs `from`, or both `vision_from` and `llm_from`")
    from ocellus.hub.checkpoint import read_config
    from ocellus.models.families.llava import build_llava
    image_token = spec.get("image_token", "<image>")
    image_id = tok.convert_tokens_to_ids(image_token)
    if image_id is None:
        raise ConfigError(f"the tokenizer has no image token {image_token!r}")
    vision_cfg, text_cfg = read_config(Path(spec["vision_from"])), read_config(Path(spec["llm_from"]))
    connector = spec.get("connector") or {}
    cfg = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
           "vision_config": vision_cfg, "text_config": text_cfg, "image_token_index": image_id,
           "vision_feature_layer": spec.get("feature_layer", -2),
           "vision_feature_select_strategy": spec.get("feature_select", "default"),
           "projector_hidden_act": connector.get("act", "gelu"), "projector_depth": connector.get("depth", 2)}
    model = build_llava(cfg)
    model.family_name = "llava"
    model.vision_tower.load_state_dict(ocellus.load(spec["vision_from"]).state_dict())
    model.language_model.load_state_dict(ocellus.load(spec["llm_from"]).state_dict())
    return model


def _init_from(model, path: Path) -> None:
    from ocellus.train.state import latest_checkpoint, load_partial
    from safetensors.torch import load_file
    if (path / "latest").exists():
        path = latest_checkpoint(path)
    load_partial(model, load_file(str(path / "model.safetensors")), source=str(path))


# ---- data --------------------------------------------------------------------------------------
class EncodedDataset:
    """Samples made and encoded on access (deterministic by index), so nothing large is held."""

    def __init__(self, n: int, make):
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return self.make(i)


def image_config(size: int):
    from ocellus.data.image import ImageProcessorConfig
    return ImageProcessorConfig.from_dict({
        "do_resize": True, "size": {"height": size, "width": size}, "do_center_crop": False,
        "do_normalize": True, "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD), "resample": 3})


def build_dataset(recipe: dict, tok, model) -> tuple[EncodedDataset, callable]:
    task, data = recipe["task"], recipe["data"]
    n, max_len = int(data.get("n", 1000)), data.get("max_length")
    if task == "lm":
        from ocellus.data.encode import collate, encode_messages
        from ocellus.data.shapes import sample_at
        cfg = _shapes_config(data)

        def make(i):
            msgs = [{"role": m["role"], "content": [p for p in m["content"] if p.get("type") == "text"]}
                    for m in sample_at(cfg, i, data.get("kind", "mixed"))["messages"]]
            return encode_messages(msgs, tok, data.get("template", "chatml"), train_on="all", max_length=max_len)
        return EncodedDataset(n, make), lambda rows: collate(rows, tok.pad_token_id or 0)
    if task == "vit_classify":
        return _classify_dataset(data, n)
    return _vlm_dataset(recipe, data, n, tok, model)


def _classify_dataset(data: dict, n: int):
    from ocellus.data.image import preprocess
    size = int(data.get("image_size", 32))
    icfg = image_config(size)
    if data["source"] == "digits":
        from ocellus.data.digits import digits_samples
        rows = digits_samples("train", seed=int(data.get("seed", 0)), image_size=size)
        return EncodedDataset(len(rows), lambda i: (preprocess([rows[i]["images"][0]], icfg)[0], rows[i]["label"])), \
            _stack_labels
    from ocellus.data.shapes import make_scene, render
    import dataclasses
    import numpy as np
    cfg = dataclasses.replace(_shapes_config(data), min_objects=1, max_objects=1)
    classes = [(s, c) for s in cfg.shapes for c in cfg.colours]

    def make(i):  # one object per image; the class is its (shape, colour) pair
        scene = make_scene(np.random.default_rng([cfg.seed, i]), cfg)
        obj = scene.objects[0]
        return preprocess([render(scene)], icfg)[0], classes.index((obj.shape, obj.colour))
    return EncodedDataset(n, make), _stack_labels


def _stack_labels(rows):
    return {"pixel_values": torch.stack([r[0] for r in rows]), "labels": torch.tensor([r[1] for r in rows])}


def _vlm_dataset(recipe, data, n, tok, model):
    from ocellus.data.encode import collate, encode_messages
    from ocellus.data.image import preprocess
    size = int(data.get("image_size", model.vision_tower.config.image_size))
    icfg = image_config(size)
    per_image = model.vision_tower.num_tokens(size, size, model.feature_select)
    template, train_on = data.get("template", "chatml"), data.get("train_on", "assistant")
    if data["source"] == "shapes":
        from ocellus.data.shapes import sample_at
        cfg = _shapes_config(data)
        get = lambda i: sample_at(cfg, i, data.get("kind", "mixed"))   # noqa: E731
    elif data["source"] == "digits":
        from ocellus.data.digits import digits_samples
        rows = digits_samples("train", seed=int(data.get("seed", 0)), image_size=size)
        n = min(n, len(rows))
        get = rows.__getitem__
    else:
        from ocellus.data.shapes import read_llava_json
        loaded = read_llava_json(data["path"], skip_bad_samples=bool(data.get("skip_bad_samples", False)))
        rows = loaded.samples if hasattr(loaded, "samples") else loaded[0]
        n = min(n, len(rows))
        get = rows.__getitem__

    def make(i):
        s = get(i)
        images = s["images"]
        enc = encode_messages(s["messages"], tok, template, images_tokens=[per_image] * len(images),
                              train_on=train_on, max_length=data.get("max_length"), row=s.get("id", i))
        return {"enc": enc, "pixels": preprocess(images, icfg)}

    def collate_vlm(rows):
        batch = collate([r["enc"] for r in rows], tok.pad_token_id or 0)
        batch["pixel_values"] = torch.cat([r["pixels"] for r in rows])
        return batch
    return EncodedDataset(n, make), collate_vlm


# ---- export ------------------------------------------------------------------------------------
def export(recipe: dict, model, tok, out: Path) -> Path:
    task = recipe["task"]
    path = Path((recipe.get("export") or {}).get("dir") or out / "model")
    if task == "vit_classify":
        from ocellus.hub.vision_families import save_vision
        save_vision(model.encoder, path)
        (path / "classifier_head.json").write_text(json.dumps({"num_classes": model.classifier.out_features}))
        return path
    ocellus.save(model, path, tokenizer=tok)
    if task == "vlm":
        size = model.vision_tower.config.image_size
        (path / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
            "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD), "resample": 3}, indent=2))
    return path


def run_recipe(recipe: dict) -> Path:
    from ocellus.train.distributed import setup, teardown
    info = setup(recipe.get("distributed", "none"))
    cfg = train_config(recipe)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(recipe.get("seed", 0)))
    tok = build_tokenizer(recipe, out) if recipe["task"] != "vit_classify" else None
    model = build_model(recipe, tok)
    dataset, collate = build_dataset(recipe, tok, model)
    batch = int(recipe["train"].get("batch_size", 8))
    loader = BatchLoader(dataset, batch, collate, seed=int(recipe.get("seed", 0)),
                         rank=info.rank, world_size=info.world_size)
    trainer = Trainer(model, loader, cfg, dist_info=info)
    if info.is_main:
        print(f"[{recipe.get('name')}] trainable parameters per part:\n{trainer.report}")
        (out / "recipe.json").write_text(json.dumps({k: v for k, v in recipe.items() if k != "_path"}, indent=1))
    trainer.fit()
    path = None
    if info.is_main:
        from ocellus.viz.curves import plot_curve
        plot_curve(trainer.history, out / "curve.png", title=recipe.get("name", ""))
        path = export(recipe, model, tok, out)
        print(f"[{recipe.get('name')}] exported {path}")
    teardown()
    return path
