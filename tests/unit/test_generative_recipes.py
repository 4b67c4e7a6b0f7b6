"""Every recipe in recipes/generation/ trains a few steps on CPU (loss falls where it is a loss that
can fall in a few steps), exports a directory that loads back with equal weights, and
`ocellus generate-image` samples it into a PNG; bad prompts, scales and steps raise clear errors."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ocellus.cli import main
from ocellus.errors import CheckpointError, ConfigError, InputError
from ocellus.models.generative.checkpoint import load_generator, save_generator
from ocellus.train.generative import TASK, run_generative_recipe
from ocellus.train.recipe import recipe_task

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "generation"
SMALL = ["data.n=64", "train.batch_size=16", "train.log_every=1", "eval.measure=false", "train.warmup_steps=0"]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vq")
    # through the CLI: `ocellus train` hands task: image_generation recipes to train/generative.py
    assert main(["train", str(RECIPES / "vqvae_digits.yaml"), *SMALL, "train.max_steps=25", f"train.out_dir={out}",
                 "model.vq.channels=16"]) == 0
    return out


def test_every_recipe_is_a_generative_recipe():
    names = sorted(p.name for p in RECIPES.glob("*.yaml"))
    assert names == ["ar_digits.yaml", "ar_shapes.yaml", "ddpm_digits.yaml", "ddpm_shapes.yaml", "ldm_digits.yaml",
                     "ldm_shapes.yaml", "ldm_text_shapes.yaml", "maskgit_digits.yaml", "maskgit_shapes.yaml",
                     "vqgan_digits.yaml", "vqvae_digits.yaml"]
    assert all(recipe_task(RECIPES / n) == TASK for n in names)


def test_vqvae_recipe_learns_and_roundtrips(tokenizer_dir):
    losses = _losses(tokenizer_dir)
    assert sum(losses[-5:]) < 0.6 * sum(losses[:5])
    model = load_generator(tokenizer_dir / "model")
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert model.spec["kind"] == "vqvae" and model(x).recon.shape == x.shape


@pytest.mark.parametrize("recipe,extra", [
    ("ddpm_digits.yaml", ["model.unet.channels=16", "model.unet.context_dim=16"]),
    ("ddpm_shapes.yaml", ["model.unet.channels=16", "model.unet.context_dim=16"]),
    ("maskgit_digits.yaml", ["model.transformer.dim=32", "model.transformer.num_layers=1"]),
    ("ar_digits.yaml", ["model.transformer.dim=32", "model.transformer.num_layers=1"]),
    ("ldm_digits.yaml", ["model.unet.channels=16", "model.unet.context_dim=16"]),
])
def test_generator_recipe_trains_exports_and_samples(recipe, extra, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "run"
    over = SMALL + extra + ["train.max_steps=20", "train.lr=3e-3", f"train.out_dir={out}", "train.sample_every=10"]
    if "diffusion" in (RECIPES / recipe).read_text():
        over.append("eval.generate.steps=3")      # the sample grids: 3 DDIM steps keep the smoke test short
    if "tokenizer_from" in (RECIPES / recipe).read_text():
        over.append(f"model.tokenizer_from={tokenizer_dir / 'model'}")
    if "autoencoder_from" in (RECIPES / recipe).read_text():
        over.append(f"model.autoencoder_from={tokenizer_dir / 'model'}")
    export = run_generative_recipe(RECIPES / recipe, over)
    losses = _losses(out)
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    assert (out / "samples" / "step000010.png").exists() and (out / "samples" / "final.png").exists()
    model = load_generator(export)
    torch.testing.assert_close(dict(model.state_dict()), dict(load_generator(export).state_dict()))
    classes = model.spec["class_names"]
    png = tmp_path / "grid.png"
    args = ["generate-image", "--model", str(export), "--prompt", f"{classes[3]},{classes[1]}", "--n", "3",
            "--out", str(png)]
    args += ["--steps", "4"] if model.spec["kind"] != "ar" else ["--top-k", "4"]
    assert main(args) == 0
    grid = Image.open(png)
    assert grid.size == (((16 + 1) * 3 + 1) * 4, ((16 + 1) * 2 + 1) * 4)
    assert main(["generate-image", "--model", str(export), "--prompt", "dragon", "--out", str(png)]) != 0
    assert "unknown class 'dragon'" in capsys.readouterr().err


def test_bad_generation_inputs(tokenizer_dir, tmp_path):
    from ocellus.models.generative.checkpoint import build
    model = build({"kind": "diffusion", "class_names": list("0123456789"), "image_size": 16,
                   "unet": {"channels": 16, "channel_mults": [1, 2], "attention_levels": [1], "context_dim": 16}})
    labels = torch.tensor([1])
    with pytest.raises(ConfigError, match="guidance scale"):
        model.generate(labels, steps=2, guidance_scale=-1.0)
    with pytest.raises(InputError, match="steps"):
        model.generate(labels, steps=0)
    with pytest.raises(InputError, match="class label 12"):
        model.generate(torch.tensor([12]), steps=2)
    with pytest.raises(InputError, match="not divisible by the downsampling factor 2"):
        model.generate(labels, steps=2, image_size=15)
    with pytest.raises(ConfigError, match="model.kind"):
        build({"kind": "gan"})
    with pytest.raises(ConfigError, match="unknown fields"):
        build({"kind": "vqvae", "vq": {"codes": 3}})
    save_generator(model, tmp_path / "m")
    bad = load_generator(tmp_path / "m").state_dict()
    from safetensors.torch import save_file
    save_file({k: v for k, v in bad.items() if "conv_in" not in k}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing.*conv_in"):
        load_generator(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not an image-generator checkpoint"):
        load_generator(tmp_path)


def test_image_data_spans_minus_one_to_one():
    """Every image source is scaled to [-1, 1] (the range the UNet, the VQ models and the judge are trained on):
    digits' dark background at -1, the brightest ink near +1."""
    from ocellus.train.generative import image_data
    x, labels, names = image_data("digits", "train", 16, n=40)
    assert x.min() == -1 and 0.9 < x.max() <= 1
    assert len(x) == len(labels) == 40 and int(labels.max()) < len(names)
    x, _, _ = image_data("shapes", "train", 16, n=40)              # white background +1, colours below it
    assert x.max() == 1 and -1 <= x.min() < -0.5


def test_shapes_test_split_draws_other_scenes():
    """The held-out shapes split is drawn from other seeds than the training split."""
    from ocellus.train.generative import image_data
    train, test = image_data("shapes", "train", 16, n=20)[0], image_data("shapes", "test", 16, n=20)[0]
    assert sum(torch.equal(a, b) for a, b in zip(train, test)) < 5
