"""`ocellus demo`: the embedded default model looks at shapes images it has never seen.

The package ships a tiny LLaVA trained from scratch on the generated shapes world
(ocellus/assets/llava-tiny-shapes, made by scripts/make_default_model.sh; see
recipes/llava_tiny_shapes/). The demo renders a few new scenes from a seed no recipe or eval
uses, asks each questions of different types (colour, shape, count, existence, spatial), answers
them all in one greedy batch, prints every answer next to the ground truth with the accuracy, and
writes the images plus one attention heat map (ocellus.viz.attention_map.explain: which patches
the answer looked at) into the output folder. A few seconds on a CPU.

make_tiny_checkpoint() builds a text-only checkpoint with random weights on the spot; tests use it
as a small model to drive the command line with.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

DEMO_SEED = 20_240   # scenes no recipe (seeds 0-4) or eval (10_007) uses
QUESTION_TYPES = ("colour", "shape", "count", "existence", "spatial")
VIEW_SCALE = 4       # the PNGs are drawn 4x larger (nearest neighbour) so the tiny images can be seen

CORPUS = [
    "Ocellus reads images and text with one transformer.",
    "A red circle sits left of a blue square.",
    "Vision encoders turn patches into tokens; a connector maps them into the language model.",
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need, and a KV cache makes decoding fast.",
] * 20


def make_tiny_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """A text-only Llama-config decoder with seeded random weights + a byte-level BPE, in HF format."""
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    import ocellus
    from ocellus.data.bpe import train_bpe
    from ocellus.models.text.decoder import DecoderConfig, DecoderLM
    from ocellus.nn.rope import RopeConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Byte-level BPE with the ChatML specials (+ image/grounding tokens) and a ChatML template.
    tok = train_bpe(CORPUS, vocab_size=384, model_max_length=512)
    tok.save(path)

    vocab, eos = len(tok), tok.eos_token_id
    cfg = DecoderConfig(vocab_size=vocab, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                        rope=RopeConfig(head_dim=32, theta=10000.0, max_position_embeddings=512),
                        max_position_embeddings=512, eos_token_id=(eos,),
                        pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = DecoderLM(cfg)
    for p in model.parameters():  # GPT-2 style init: small normal weights, unit norms
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02)
    ocellus.save(model, path)
    return path


def demo_questions(n_images: int, image_size: int, seed: int = DEMO_SEED) -> list[dict]:
    """n_images new scenes, and for each one question of every type the scene supports (a
    "spatial" question needs two objects, "colour" a shape that occurs once, ...), in the single-word
    QA format the model was tuned on. -> [{"image": k, "type", "question", "answer", "sample"}]"""
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    from ocellus.data.shapes import ShapesConfig, make_qa, make_scene, render
    from ocellus.data.messages import image_part, text_part
    from ocellus.errors import InputError

    cfg = ShapesConfig(image_size=image_size, seed=seed, min_size=max(0.18, 6.5 / image_size))
    rows = []
    for k in range(n_images):
        rng = np.random.default_rng([cfg.seed, k])
        scene = make_scene(rng, cfg)
        image = render(scene)
        for qa_type in QUESTION_TYPES:
            try:
                _, question, answer = make_qa(rng, scene, cfg, qa_type)
            except InputError:  # not askable unambiguously about this scene
                continue
            text = f"{question}\n{cfg.answer_prompt}"
            messages = [{"role": "user", "content": [image_part(), text_part(text)]}]
            rows.append({"image": k, "type": qa_type, "question": question, "answer": answer,
                         "sample": {"messages": messages, "images": [image]}})
    return rows


def _correct(pred: str, gold: str) -> bool:
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    from ocellus.eval.vqa import count_match, vqa_exact_match
    return bool(count_match(pred, gold) if gold.isdigit() else vqa_exact_match(pred, gold))


def _table(rows: list[dict]) -> str:
    head = ("img", "type", "question", "answer", "truth", "")
    body = [(str(r["image"]), r["type"], r["question"], r["pred"], r["answer"], "ok" if r["ok"] else "WRONG")
            for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    fmt = lambda line: " | ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), "-+-".join("-" * w for w in widths), *map(fmt, body)])


def _enlarged(image):
    from PIL import Image
    return image.resize((image.width * VIEW_SCALE, image.height * VIEW_SCALE), Image.Resampling.NEAREST)


def run_demo(out_dir: str | Path = "ocellus-demo", n_images: int = 4, seed: int = DEMO_SEED, model_dir=None,
             printer=print) -> dict:
    """Answer questions about n_images new scenes with the embedded model (or model_dir); print
    question / answer / ground truth and the accuracy; write image_K.png and attention.png into
    out_dir. Returns {"rows", "accuracy", "images", "heatmap"}."""
    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    import ocellus
    from ocellus.eval.harness import predict
    from ocellus.viz.attention_map import explain, overlay

    start = time.perf_counter()
    model_dir = Path(model_dir) if model_dir is not None else ocellus.default_model_dir()
    model, processor = ocellus.load(model_dir), ocellus.load_processor(model_dir)
    model.eval()
    size = model.vision_tower.config.image_size
    params = sum(p.numel() for p in model.parameters())
    printer(f"model: {model_dir} ({params / 1e6:.2f}M parameters, {size}x{size} images)")

    rows = demo_questions(n_images, size, seed)
    preds = predict(model, processor, [r["sample"] for r in rows], [], max_new_tokens=6)
    for row, pred in zip(rows, preds):
        row.update(pred=pred, ok=_correct(pred, row["answer"]))
    printer(_table(rows))
    right = sum(r["ok"] for r in rows)
    accuracy = right / len(rows)
    printer(f"accuracy: {right}/{len(rows)} = {100 * accuracy:.1f}% on {n_images} new images (seed {seed})")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for k in range(n_images):
        image = next(r["sample"]["images"][0] for r in rows if r["image"] == k)
        images.append(out / f"image_{k}.png")
        _enlarged(image).save(images[-1])
    # the heat map: the first image's colour question (it names one object, so the map has a target)
    pick = next((r for r in rows if r["type"] == "colour"), rows[0])
    image = pick["sample"]["images"][0]
    asked = pick["sample"]["messages"][0]["content"][1]["text"]  # with the short-answer instruction
    result = explain(model, processor, image, asked, max_new_tokens=4)
    heatmap = out / "attention.png"
    overlay(_enlarged(image), result.grid, alpha=0.5).save(heatmap, format="PNG")
    row, col = result.peak
    printer(f"wrote {len(images)} images and {heatmap}: image {pick['image']}, {pick['question']!r} -> "
            f"{result.answer!r}; attention peaks at patch (row {row}, col {col})")
    printer(f"done in {time.perf_counter() - start:.1f}s")
    return {"rows": rows, "accuracy": accuracy, "images": images, "heatmap": heatmap}
