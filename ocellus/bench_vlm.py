"""Vision-language benchmarks, ours next to transformers in the same run on the same weights:

  encode  images/s of our ViT vs transformers' CLIPVisionModel (same weights, batch, dtype), and
          end-to-end time to first token for one image + question vs LlavaForConditionalGeneration
  train   training-step throughput (samples/s, tokens/s) and peak memory of the tiny LLaVA config
          vs LlavaForConditionalGeneration with the same config, batch and optimizer (AdamW);
          --recipe: a real step of a LLaVA recipe (its data, labels and frozen parts) instead;
          --precision bf16: both sides' forward + loss under the same torch.autocast(bf16) the Trainer's
          train.precision=bf16 uses (train/trainer.autocast), weights and AdamW fp32

transformers is imported here only, lazily: it is the reference being measured, not a dependency.
Peak memory on CPU is the process's resident-set high-water mark (VmHWM), reset before each side
through /proc/self/clear_refs, so each figure is that side's own peak.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import ocellus
from ocellus.errors import ConfigError
from ocellus.train.trainer import PRECISIONS, autocast


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN picks kernels on first use
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _llava_reference(vision: dict, text: dict, image_token: int):
    import transformers as tf
    cfg = tf.LlavaConfig(vision_config=tf.CLIPVisionConfig(**vision), text_config={"model_type": "llama", **text},
                         image_token_index=image_token)
    torch.manual_seed(0)
    return tf.LlavaForConditionalGeneration(cfg).eval()


def bench_encode(batch: int = 8, image_size: int = 224, patch: int = 16, hidden: int = 384, layers: int = 6,
                 repeats: int = 5, printer=print) -> dict:
    vision = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                  num_attention_heads=hidden // 64, image_size=image_size, patch_size=patch)
    text = dict(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024, eos_token_id=None)
    ref = _llava_reference(vision, text, image_token=4000)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = ocellus.load(d)
    ref_tower = ref.model.vision_tower   # a CLIPVisionModel holding the same weights as ours
    pixels = torch.randn(batch, 3, image_size, image_size)
    with torch.inference_mode():
        t_ours = _best(lambda: ours.vision_tower(pixels), repeats)
        t_ref = _best(lambda: ref_tower(pixel_values=pixels), repeats)
        tokens = (image_size // patch) ** 2
        ids = torch.cat([torch.full((1, tokens), 4000), torch.randint(0, 3999, (1, 24))], dim=1)
        one = pixels[:1]
        ttft_ours = _best(lambda: ours.generate(ids, pixel_values=one, max_new_tokens=1), repeats)
        ttft_ref = _best(lambda: ref.generate(input_ids=ids, pixel_values=one, max_new_tokens=1, do_sample=False),
                         repeats)
    row = {"images_per_s_ours": batch / t_ours, "images_per_s_ref": batch / t_ref, "encode_ratio": t_ref / t_ours,
           "ttft_ms_ours": 1000 * ttft_ours, "ttft_ms_ref": 1000 * ttft_ref, "ttft_ratio": ttft_ref / ttft_ours}
    printer(f"ViT encode (batch {batch}, {image_size}px, patch {patch}, {layers}x{hidden}): ours "
            f"{row['images_per_s_ours']:.1f} img/s, transformers {row['images_per_s_ref']:.1f} img/s, "
            f"ratio {row['encode_ratio']:.2f}x")
    printer(f"LLaVA time to first token (1 image + 24 text tokens): ours {row['ttft_ms_ours']:.1f} ms, "
            f"transformers {row['ttft_ms_ref']:.1f} ms, ratio {row['ttft_ratio']:.2f}x")
    return row


TINY_VISION = dict(hidden_size=96, intermediate_size=288, num_hidden_layers=4, num_attention_heads=4,
                   image_size=48, patch_size=6)
TINY_TEXT = dict(vocab_size=640, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, eos_token_id=None, tie_word_embeddings=True)


def bench_train(batch: int = 16, text_tokens: int = 40, steps: int = 3, repeats: int = 20, printer=print,
                precision: str = "fp32") -> dict:
    """Every parameter trains; random pixels; the image's placeholders then `text_tokens` random
    tokens, all of them labelled (caption-style pretraining on the TINY_* config)."""
    ref = _llava_reference(TINY_VISION, TINY_TEXT, image_token=639)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = ocellus.load(d)
    patches = (TINY_VISION["image_size"] // TINY_VISION["patch_size"]) ** 2
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.full((batch, patches), 639), torch.randint(0, 638, (batch, text_tokens), generator=g)], 1)
    pixels = torch.randn(batch, 3, TINY_VISION["image_size"], TINY_VISION["image_size"], generator=g)
    inputs = {"input_ids": ids, "pixel_values": pixels, "labels": ids.masked_fill(ids == 639, -100)}
    return _time_train_steps(ours, ref, inputs, steps, repeats, "every parameter trains, all text labelled", printer,
                             precision)


# our LLaVA parts (train/stages.parts_of) -> the modules holding them in LlavaForConditionalGeneration
_REF_PARTS = {"vision": ("model.vision_tower",), "connector": ("model.multi_modal_projector",),
              "llm": ("model.language_model", "lm_head")}


def bench_train_recipe(recipe_path, model_dir=None, batch: int | None = None, steps: int = 3, repeats: int = 20,
                       printer=print, precision: str = "fp32") -> dict:
    """One real training step of a LLaVA recipe: its model (default: the embedded one), a batch of
    its own data (labels only where the recipe trains) and its stage (frozen parts frozen on both
    sides). Full or frozen parts only: LoRA would put different modules on the two sides."""
    import transformers as tf

    # lazy: a command imports only the code it runs (ocellus --help stays fast)
    from ocellus.data.tokenizer import Tokenizer
    from ocellus.hub.checkpoint import read_config
    from ocellus.train.tasks import build_dataset, load_recipe
    from ocellus.train.stages import Stage, apply_stage
    recipe = load_recipe(recipe_path)
    stage = Stage.parse(recipe["train"].get("stage") or {part: "full" for part in _REF_PARTS})  # as the Trainer
    modes = {part: spec.mode for part, spec in stage.parts.items()}
    architecture = (recipe.get("model") or {}).get("architecture", "llava")
    if recipe["task"] != "vlm" or architecture != "llava" or "lora" in modes.values() or set(modes) - set(_REF_PARTS):
        raise ConfigError(f"{recipe_path}: bench train --recipe takes a LLaVA recipe (task vlm) whose stage only "
                          f"freezes or fully trains vision/connector/llm; got task {recipe['task']!r}, architecture "
                          f"{architecture!r}, stage {modes}")
    model_dir = Path(model_dir or ocellus.default_model_dir())
    model_type = read_config(model_dir).get("model_type")
    if model_type != "llava":
        raise ConfigError(f"{model_dir}: bench train --recipe compares against LlavaForConditionalGeneration and "
                          f"needs a llava checkpoint, got model_type {model_type!r}")
    ours, tok = ocellus.load(model_dir), Tokenizer.from_dir(model_dir)
    ref = tf.LlavaForConditionalGeneration.from_pretrained(model_dir)
    apply_stage(ours, stage)
    for part, paths in _REF_PARTS.items():
        for path in paths:
            ref.get_submodule(path).requires_grad_(modes.get(part, "frozen") != "frozen")
    dataset, collate = build_dataset(recipe, tok, ours)
    inputs = collate([dataset[i] for i in range(batch or int(recipe["train"].get("batch_size", 8)))])
    trained = int((inputs["labels"] != -100).sum())
    what = f"recipe {Path(recipe_path).name}, stage {modes}, {trained} labelled tokens"
    return _time_train_steps(ours, ref, inputs, steps, repeats, what, printer, precision)


def _time_train_steps(ours, ref, inputs: dict, steps: int, repeats: int, what: str, printer,
                      precision: str = "fp32") -> dict:
    """Median seconds per training step (forward, backward, AdamW) of each model on the same
    inputs, over `repeats` rounds of `steps` steps a side; the sides alternate which goes first
    each round, so drifting machine load (and cache state left by the other model) hits both
    alike, and the median ignores the odd step stalled by the OS. Peak RSS is each side's
    high-water mark over its first round. precision: both sides' forward + loss under the Trainer's
    autocast for it (fp32: none)."""
    device = next(ours.parameters()).device.type
    autocast(precision, device)    # fp16 / unknown: the Trainer's refusal, before anything is timed

    first_loss, first_dtype = {}, {}    # each side's first loss (same weights, same inputs) and its logits' dtype

    def stepper(name, model):
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            with autocast(precision, device):
                out = model(**inputs)
                loss = out.loss
                if name not in first_dtype:     # the logits' dtype: what the autocast ran the matmuls in (ours makes
                    with torch.no_grad():       # them on request, so here, inside the autocast; warm-up only)
                        first_dtype[name] = str(out.logits.dtype).removeprefix("torch.")
            if name not in first_loss:
                first_loss[name] = loss.item()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    runs = {name: stepper(name, model) for name, model in (("ours", ours), ("ref", ref))}
    for _ in range(3):                      # warm-up: optimizer state, oneDNN kernels, the heap's size
        for step in runs.values():
            step()
    times, peak = {name: [] for name in runs}, {}
    for r in range(repeats):
        for name in (("ours", "ref") if r % 2 == 0 else ("ref", "ours")):
            if r == 0:
                _reset_peak()
            for _ in range(steps):
                t = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t)
            if r == 0:
                peak[name] = _peak_rss_mb()
    (t_ours, t_ref), (mem_ours, mem_ref) = (statistics.median(times[n]) for n in runs), (peak[n] for n in runs)
    batch, tokens = inputs["input_ids"].shape[0], inputs["input_ids"].numel()
    row = {"precision": precision, "samples_per_s_ours": batch / t_ours, "samples_per_s_ref": batch / t_ref,
           "ratio": t_ref / t_ours,
           "tokens_per_s_ours": tokens / t_ours, "tokens_per_s_ref": tokens / t_ref,
           "peak_rss_mb_ours": mem_ours, "peak_rss_mb_ref": mem_ref,
           "first_loss_ours": first_loss["ours"], "first_loss_ref": first_loss["ref"],
           "logits_dtype_ours": first_dtype["ours"], "logits_dtype_ref": first_dtype["ref"]}
    printer(f"tiny LLaVA training step ({precision}, batch {batch}, {inputs['input_ids'].shape[1]} tokens, AdamW; "
            f"{what}): ours "
            f"{row['samples_per_s_ours']:.1f} samples/s ({row['tokens_per_s_ours']:.0f} tok/s), transformers "
            f"{row['samples_per_s_ref']:.1f} samples/s ({row['tokens_per_s_ref']:.0f} tok/s), ratio {row['ratio']:.2f}x; "
            f"peak RSS ours {_mb(mem_ours)}, transformers {_mb(mem_ref)} (process high-water marks)")
    return row


def main_encode(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ocellus bench encode")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--quick", action="store_true", help="a small tower, for smoke tests")
    a = ap.parse_args(argv)
    if a.quick:
        bench_encode(batch=2, image_size=32, patch=8, hidden=64, layers=2, repeats=1)
    else:
        bench_encode(batch=a.batch, image_size=a.image_size)
    return 0


def main_train(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ocellus bench train")
    ap.add_argument("--batch", type=int, default=None, help="default 16, or the recipe's batch_size")
    ap.add_argument("--steps", type=int, default=3, help="steps per side per round")
    ap.add_argument("--repeats", type=int, default=20, help="rounds (the side going first alternates); "
                                                           "each figure is the median step")
    ap.add_argument("--recipe", help="time a real step of this LLaVA recipe (its data and stage) instead")
    ap.add_argument("--model", help="with --recipe: the model dir (default: the embedded default model)")
    ap.add_argument("--precision", choices=[p for p in PRECISIONS if p != "fp16"], default="fp32",
                    help="bf16: both sides under the same torch.autocast(bf16) as train.precision=bf16")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    steps, repeats = (1, 1) if a.quick else (a.steps, a.repeats)
    if a.recipe:
        bench_train_recipe(a.recipe, a.model, batch=2 if a.quick else a.batch, steps=steps, repeats=repeats,
                           precision=a.precision)
    else:
        bench_train(batch=2 if a.quick else (a.batch or 16), steps=steps, repeats=repeats, precision=a.precision)
    return 0
