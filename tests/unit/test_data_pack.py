"""data.pack: a training batch's samples share rows (document mask, per-document positions) and the run
trains exactly as unpacked (same losses: the same mean over the same trained tokens) on fewer padded
positions, for task lm and for every early-fusion VLM family (Qwen2.5-VL with its per-document M-RoPE ids);
a family or task it does not fit is a ConfigError naming it."""
import json
from pathlib import Path

import pytest

from ocellus.errors import ConfigError
from ocellus.train.run import build_tokenizer
from ocellus.train.tasks import build_dataset, build_model, load_recipe, run_recipe

ROOT = Path(__file__).resolve().parents[2] / "recipes"
TEXT = ROOT / "llava_tiny_shapes" / "text_pretrain.yaml"
VLM = {"llava": ROOT / "llava_tiny_shapes" / "align.yaml", "llava_next": ROOT / "llava_next_tiny_shapes" / "train.yaml",
       "qwen2_5_vl": ROOT / "qwen2_5_vl_tiny_shapes" / "train.yaml"}
RUN = ["train.progress=false", "train.log_every=1", "train.warmup_steps=0", "train.max_steps=3", "train.batch_size=8",
       "data.n=48", "train.lr=1e-2"]


def _losses(recipe: dict, out: Path, pack: bool) -> list[float]:
    recipe = {**recipe, "data": {**recipe["data"], "pack": pack}, "train": {**recipe["train"], "out_dir": str(out)}}
    run_recipe(recipe)
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _check_batch(recipe: dict, tmp_path: Path):
    """A packed batch holds every token and target of the unpacked one, in fewer rows."""
    tok = build_tokenizer(recipe, tmp_path)
    model = build_model(recipe, tok)
    dataset, plain = build_dataset(recipe, tok, model)
    _, packed = build_dataset({**recipe, "data": {**recipe["data"], "pack": True}}, tok, model)
    rows = [dataset[i] for i in range(8)]
    a, b = plain(rows), packed(rows)
    assert int(b["attention_mask"].sum()) == int(a["attention_mask"].sum())
    assert b["input_ids"].shape[0] < a["input_ids"].shape[0]
    targets = [sorted(x["labels"][:, 1:][x["labels"][:, 1:] != -100].tolist()) for x in (a, b)]   # what is predicted
    assert targets[0] == targets[1]


@pytest.fixture(scope="module")
def text_recipe(tmp_path_factory):
    tok = tmp_path_factory.mktemp("tok")
    build_tokenizer(load_recipe(TEXT, ["tokenizer.train_bpe.corpus_n=200"]), tok)
    return load_recipe(TEXT, RUN + [f"tokenizer={tok / 'tokenizer'}", "model.config.num_hidden_layers=2",
                                    "model.config.hidden_size=32", "model.config.intermediate_size=64",
                                    "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2"])


def test_lm_packed_run_has_the_unpacked_losses(text_recipe, tmp_path):
    _check_batch(text_recipe, tmp_path)
    assert _losses(text_recipe, tmp_path / "packed", True) == pytest.approx(
        _losses(text_recipe, tmp_path / "plain", False), rel=1e-5)


def _vlm_recipe(arch: str, parts: Path, towers: Path) -> dict:
    text = parts / "text" / "model"
    extra = ["model.config.mrope_section=[2, 1, 1]", f"model.vision_from={towers / 'qwen2_5_vl' / 'model'}"] \
        if arch == "qwen2_5_vl" else [f"model.vision_from={parts / 'vit' / 'model'}"]
    return load_recipe(VLM[arch], RUN + [f"model.llm_from={text}", f"tokenizer.from={text}", *extra,
                                         "data.max_length=512"])   # room for two samples a row


@pytest.mark.parametrize("arch", list(VLM))
def test_vlm_packed_run_has_the_unpacked_losses(arch, tiny_vlm_parts, qwen2_towers, tmp_path):
    recipe = _vlm_recipe(arch, tiny_vlm_parts, qwen2_towers)
    _check_batch(recipe, tmp_path)
    assert _losses(recipe, tmp_path / "packed", True) == pytest.approx(
        _losses(recipe, tmp_path / "plain", False), rel=1e-5)


def test_pack_where_it_does_not_fit_is_a_config_error(tiny_vlm_parts, tmp_path):
    parts = tiny_vlm_parts
    recipe = load_recipe(ROOT / "flamingo_tiny_shapes" / "train.yaml", RUN + [
        f"model.vision_from={parts}/vit/model", f"model.llm_from={parts}/text/model", "data.pack=true",
        f"tokenizer.from={parts}/text/model", "model.perceiver.num_latents=8", f"train.out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="data.pack: packing is not supported for task vlm with the flamingo family"):
        run_recipe(recipe)
    vit = load_recipe(ROOT / "llava_tiny_shapes" / "vit_pretrain.yaml", RUN + ["data.pack=true"])
    with pytest.raises(ConfigError, match="data.pack: packing is not supported for task 'vit_classify'"):
        run_recipe(vit)
