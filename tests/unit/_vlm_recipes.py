"""Shared by the vision-language recipe smoke tests (a module, not conftest.py: tests/serve has a conftest
of its own, and `from conftest import` would find whichever was imported last)."""


def train_tiny_vlm_recipe(recipe, parts, out, steps: int = 8, n: int = 64, batch_size: int = 8, extra=()):
    """Run a vision-language recipe for a few steps on the `tiny_vlm_parts` parts -> its logged losses."""
    import json

    from ocellus.train.tasks import load_recipe, run_recipe
    run_recipe(load_recipe(recipe, [
        "train.progress=false", "train.log_every=2", "train.warmup_steps=2", f"train.out_dir={out}",
        f"train.max_steps={steps}", f"data.n={n}", f"train.batch_size={batch_size}",
        f"model.vision_from={parts}/vit/model", f"model.llm_from={parts}/text/model",
        f"tokenizer.from={parts}/text/model", "train.eval_every=0", *extra]))   # a shipped curve's eval: not here
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]
