"""A loaded image generator's `spec` is the build spec it was made from, not its config.json: a recipe that builds
on it (train/generative.py: tokenizer_from / autoencoder_from) copies that spec into the new model's spec, so a
format key left in it (model_type) would travel into every config.json written on top of it."""
import torch

import ocellus
from ocellus.models.generative.checkpoint import build, save_generator
from tests.unit.test_family_registry import VQ_SPEC


def test_a_loaded_generator_keeps_the_spec_it_was_built_from(tmp_path):
    torch.manual_seed(0)
    save_generator(build(dict(VQ_SPEC)), tmp_path / "vq")
    assert ocellus.load(tmp_path / "vq").spec == VQ_SPEC
