"""The image-generation runner's checks before anything trains, and its splits: the digits' held-out split is
other digits than the training split (the judge and FD are measured on images the generator never saw); a
recipe naming a data source the runner cannot read, or a token generator whose image size the tokenizer's
downsampling does not divide, is a ConfigError up front."""
import pytest

from ocellus.errors import ConfigError
from ocellus.models.generative.checkpoint import build
from ocellus.train.generative import check_generative_recipe, image_data

VQ = {"kind": "vqvae", "vq": {"channels": 8, "channel_mults": [1, 2], "embed_dim": 4, "num_codes": 8, "groups": 4}}


def test_digits_test_split_holds_other_digits_than_the_training_split():
    train, train_y, _ = image_data("digits", "train", 8)
    test, test_y, _ = image_data("digits", "test", 8)
    assert len(train) + len(test) == 1797 and abs(len(test) - 0.2 * 1797) < 1     # scikit-learn's 1,797 digits
    seen = {row.numpy().tobytes() for row in train}
    shared = sum(row.numpy().tobytes() in seen for row in test)
    assert shared < 0.02 * len(test), shared


def test_unknown_data_source_is_refused_before_training():
    recipe = {"task": "image_generation", "name": "g", "model": {"kind": "diffusion"}, "data": {"source": "mnist"},
              "train": {"max_steps": 1}}
    with pytest.raises(ConfigError, match="data.source must be one of"):
        check_generative_recipe(recipe, "r")
    recipe["data"]["source"] = "shapes"
    check_generative_recipe(recipe, "r")


@pytest.mark.parametrize("kind", ["maskgit", "ar"])
def test_token_generator_image_size_must_divide_into_tokens(kind):
    transformer = {"dim": 16, "num_layers": 1, "num_heads": 2}
    assert build(VQ).cfg.downsample_factor == 4
    with pytest.raises(ConfigError, match="image_size 18 is not divisible by the tokenizer's downsampling factor 4"):
        build({"kind": kind, "tokenizer": VQ, "image_size": 18, "class_names": ["a", "b"], "transformer": transformer})
    build({"kind": kind, "tokenizer": VQ, "image_size": 16, "class_names": ["a", "b"], "transformer": transformer})
