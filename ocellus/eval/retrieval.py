"""Evaluating representations: image<->text retrieval recall@K, zero-shot classification with prompt
templates, and the linear probe.

- Recall@K (the Flickr30K/COCO retrieval protocol of CLIP, ALIGN, ALBEF): the fraction of queries
  with at least one correct item among their K most similar. Correctness is given as a boolean
  [queries, items] matrix, so a caption shared by several images (or several captions per image)
  counts every match as correct.
- Zero-shot classification (CLIP sec. 3.1.4): each class becomes texts from prompt templates
  ("a photo of a {}."), their normalised embeddings are averaged and renormalised into one
  classifier weight per class, and an image is assigned its most similar class.
- Linear probe (CLIP sec. 3.2 / MoCo sec. 4.1): freeze the encoder, fit an L2-regularised
  multinomial logistic regression on its features with full-batch L-BFGS (as scikit-learn's
  LogisticRegression, which CLIP used), report test accuracy.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import InputError
from ocellus.hub.checkpoint import load_model
from ocellus.data.digits import digits_samples
from ocellus.data.image import image_config, ImageProcessorConfig, preprocess
from ocellus.data.processor import image_processor_dict
from ocellus.data.shapes import render
from ocellus.data.shapes_pairs import pairs_config, scenes, shapes_pairs
from ocellus.data.tokenizer import Tokenizer
from ocellus.models.families.vit.checkpoint import load_vision
from ocellus.models.contrastive.clip import DualEncoder
from ocellus.models.contrastive.moco import pooled
from ocellus.models.text.clip_text import encode_texts
from ocellus.models.vision.vit import VisionTransformer

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")


def recall_at_k(similarity: torch.Tensor, correct: torch.Tensor, ks=(1, 5, 10)) -> dict[int, float]:
    """similarity, correct: [Q, I] -> {k: fraction of queries with a correct item in their top k}."""
    if similarity.shape != correct.shape or similarity.dim() != 2:
        raise InputError(f"similarity {tuple(similarity.shape)} and correct {tuple(correct.shape)} must be equal 2-D")
    none = (~correct.any(dim=1)).nonzero().flatten().tolist()
    if none:
        raise InputError(f"queries {none[:10]} have no correct item: recall would count them as misses silently")
    order = similarity.argsort(dim=1, descending=True)                             # [Q, I]
    hits = correct.gather(1, order)                                                # [Q, I] in rank order
    return {k: hits[:, :min(k, hits.shape[1])].any(dim=1).float().mean().item() for k in ks}


def retrieval_metrics(image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_image: torch.Tensor,
                      ks=(1, 5, 10), image_matches: torch.Tensor | None = None) -> dict[str, float]:
    """Normalised image [I, E] and text [T, E] embeddings; text_image [T] the index of each text's
    image. image_matches [I, I] (optional): images that are equally correct (e.g. identical scenes
    or captions). Returns {"i2t_R@1": ..., "t2i_R@1": ..., ...}."""
    if text_image.shape != (text_embeds.shape[0],):
        raise InputError(f"text_image must give one image index per text ({text_embeds.shape[0]}), "
                         f"got shape {tuple(text_image.shape)}")
    I = image_embeds.shape[0]
    same = image_matches if image_matches is not None else torch.eye(I, dtype=torch.bool)
    correct_t2i = same[text_image]                                                 # [T, I]
    sim = text_embeds @ image_embeds.t()                                           # [T, I]
    out = {f"t2i_R@{k}": v for k, v in recall_at_k(sim, correct_t2i, ks).items()}
    out.update({f"i2t_R@{k}": v for k, v in recall_at_k(sim.t(), correct_t2i.t(), ks).items()})
    return out


def zero_shot_weights(encode_text, classnames: list[str], templates=DEFAULT_TEMPLATES) -> torch.Tensor:
    """encode_text(list[str]) -> [n, E] -> class weights [C, E]: the renormalised mean of each class's
    normalised prompt embeddings."""
    if not classnames or not templates:
        raise InputError("zero-shot classification needs at least one class name and one template")
    weights = []
    for name in classnames:
        emb = F.normalize(encode_text([t.format(name) for t in templates]), dim=-1)   # [n_templates, E]
        weights.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(weights)                                                    # [C, E]


def zero_shot_accuracy(image_embeds: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor) -> float:
    """Top-1 accuracy of argmax_c <image, w_c> against labels [N]."""
    pred = (F.normalize(image_embeds, dim=-1) @ class_weights.t()).argmax(dim=1)
    return (pred == labels).float().mean().item()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 l2: float = 1e-3, max_iter: int = 300) -> float:
    """Fit softmax regression on frozen features (standardised with the train statistics) by
    full-batch L-BFGS with an L2 penalty; return test accuracy. Deterministic."""
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise InputError("linear_probe: features and labels must have the same number of rows")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    head = nn.Linear(xs.shape[1], num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(xs), train_y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (head(xt).argmax(1) == test_y).float().mean().item()


@torch.no_grad()
def embed_in_batches(fn, items, batch_size: int = 64) -> torch.Tensor:
    """fn(items[i:i+b]) -> [b, E], concatenated."""
    return torch.cat([fn(items[i:i + batch_size]) for i in range(0, len(items), batch_size)])




# ---- on the project's data: `ocellus eval --task retrieval | zeroshot | linear-probe` ---------------
EVAL_TASKS = ("retrieval", "zeroshot", "linear-probe")
EVAL_SEED = 10_007                 # held-out scenes: no recipe trains on this seed (as eval/harness.py)
DIGITS_SOURCE_SIZE = 32            # digits are drawn at 32 px, then resized to the model (as MoCo's training)
SHAPES_TEMPLATES = ("A {}.", "a photo of a {}.")
SHAPES_RENDER_SIZE = 64            # scenes are drawn at 64 px as the recipes' (data.image_size), then resized


def text_encoder(model, tok):
    """list[str] -> normalised text embeddings, tokenised the way the model was trained
    (CLIP: EOS + right padding with a mask; SigLIP: padded to max length, no mask). A model with its
    own text protocol (ALBEF, BLIP: [CLS] caption [SEP]) provides `encode_text_fn(tok)`."""
    if hasattr(model, "encode_text_fn"):
        return model.encode_text_fn(tok)
    cfg = model.text_model.config

    def encode(texts):
        batch = encode_texts(list(texts), tok, cfg.max_position_embeddings, pad_to_max=not cfg.causal)
        mask = batch["attention_mask"] if cfg.causal else None
        return F.normalize(model.get_text_features(batch["input_ids"], mask), dim=-1)
    return encode


def _load_dual(model_dir):
    model = load_model(model_dir)
    if not isinstance(model, DualEncoder) and not hasattr(model, "encode_text_fn"):
        raise InputError(f"{model_dir} holds a {type(model).__name__}; retrieval and zero-shot need a CLIPModel / "
                         "SiglipModel (or ALBEF / BLIP) checkpoint")
    pre = image_processor_dict(model_dir)
    if pre is None:
        raise InputError(f"{model_dir} has no preprocessor_config.json: cannot tell how images become pixels")
    return model, Tokenizer.from_dir(model_dir), ImageProcessorConfig.from_dict(pre)


def _image_encoder(model, icfg):
    return lambda images: F.normalize(model.get_image_features(preprocess(list(images), icfg)), dim=-1)


@torch.no_grad()
def shapes_retrieval(model, tok, icfg, n: int = 300) -> dict[str, float]:
    """Held-out scenes and their captions; identical captions count as equally correct."""
    pairs = [shapes_pairs({"image_size": SHAPES_RENDER_SIZE}, EVAL_SEED, n)(i) for i in range(n)]
    images, captions = [p[0] for p in pairs], [p[1] for p in pairs]
    img = embed_in_batches(_image_encoder(model, icfg), images)
    txt = embed_in_batches(text_encoder(model, tok), captions)
    same = torch.tensor([[a == b for b in captions] for a in captions])
    return retrieval_metrics(img, txt, torch.arange(n), image_matches=same)


@torch.no_grad()
def shapes_zero_shot(model, tok, icfg, n: int = 300, templates=SHAPES_TEMPLATES) -> dict[str, float]:
    """Held-out one-object scenes classified among every (colour, shape) by prompts alone."""
    one_object = {"image_size": SHAPES_RENDER_SIZE, "min_objects": 1, "max_objects": 1}
    cfg = pairs_config(one_object, EVAL_SEED + 1)
    classes = [f"{c} {s}" for c in cfg.colours for s in cfg.shapes]
    held_out = scenes(one_object, EVAL_SEED + 1, n)
    labels = torch.tensor([classes.index(f"{sc.objects[0].colour} {sc.objects[0].shape}") for sc in held_out])
    img = embed_in_batches(_image_encoder(model, icfg), [render(sc) for sc in held_out])
    weights = zero_shot_weights(text_encoder(model, tok), classes, templates)
    out = {"zeroshot_acc": zero_shot_accuracy(img, labels, weights), "classes": len(classes),
           "chance": 1 / len(classes)}
    for t in templates:           # each template alone, to see what prompt engineering buys
        out[f"acc[{t}]"] = zero_shot_accuracy(img, labels, zero_shot_weights(text_encoder(model, tok), classes, (t,)))
    return out


@torch.no_grad()
def digits_linear_probe(tower, icfg, seed: int = 0) -> dict[str, float]:
    """Linear probe of a frozen image tower on scikit-learn's digits (train split -> test split),
    next to the same architecture at random initialisation."""
    splits = {s: digits_samples(s, seed=0, image_size=DIGITS_SOURCE_SIZE) for s in ("train", "test")}
    pixels = {s: preprocess([r["images"][0] for r in rows], icfg) for s, rows in splits.items()}
    labels = {s: torch.tensor([r["label"] for r in rows]) for s, rows in splits.items()}
    torch.manual_seed(seed)
    random_tower = VisionTransformer(tower.config).eval()
    out = {}
    for name, enc in (("trained", tower.eval()), ("random_init", random_tower)):
        feats = {s: embed_in_batches(lambda x, e=enc: pooled(e, x), pixels[s], 256) for s in pixels}
        out[f"probe_acc_{name}"] = linear_probe(feats["train"], labels["train"], feats["test"], labels["test"])
    out.update(train=len(labels["train"]), test=len(labels["test"]))
    return out


def evaluate(model_dir, task: str, n: int = 300, printer=print) -> dict:
    """retrieval / zeroshot: a CLIPModel or SiglipModel dir on held-out shapes; linear-probe: any
    CLIP/SigLIP image tower dir (CLIPVisionModel, or a dual encoder's) on the digits."""
    if task not in EVAL_TASKS:
        raise InputError(f"unknown representation eval task {task!r}; choose from {', '.join(EVAL_TASKS)}")
    if task == "linear-probe":
        tower = load_vision(model_dir)
        pre = image_processor_dict(model_dir)
        size = tower.config.image_size
        icfg = ImageProcessorConfig.from_dict(pre) if pre is not None else image_config(size)
        result = digits_linear_probe(tower, icfg)
    else:
        model, tok, icfg = _load_dual(model_dir)
        result = shapes_retrieval(model, tok, icfg, n) if task == "retrieval" else shapes_zero_shot(model, tok, icfg, n)
    printer(f"{task}  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return result


__all__ = ["recall_at_k", "retrieval_metrics", "zero_shot_weights", "zero_shot_accuracy", "linear_probe",
           "embed_in_batches", "DEFAULT_TEMPLATES", "evaluate", "EVAL_TASKS", "shapes_retrieval", "shapes_zero_shot",
           "digits_linear_probe", "text_encoder"]
