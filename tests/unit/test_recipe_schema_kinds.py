"""The recipe schema's kinds on their own: a number is not a boolean (YAML's `lr: yes` is a mistake, not 1.0),
a list of numbers has each YAML 1.1 string ("1e-3") made a float like a single number, and `sources` lists only
paths (a tokenizer given as a {train_bpe: ...} mapping is no file to look for)."""
import pytest

from ocellus.errors import ConfigError
from ocellus.train import schema


def _lm(**sections) -> dict:
    return {"task": "lm", "name": "t", "model": {"config": {}}, "data": {"source": "shapes_text"},
            "train": {"max_steps": 2}, **sections}


@pytest.mark.parametrize("value", [True, False])
def test_a_number_key_refuses_booleans(value):
    recipe = _lm()
    recipe["train"]["lr"] = value
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        schema.check(recipe, "r")


def test_lists_of_numbers_turn_yaml_strings_into_floats():
    recipe = {"task": "grpo", "name": "t", "model": {"from": "m"}, "train": {"betas": ["0.9", "95e-2"]},
              "method": {"rewards": ["exact", "count"], "reward_weights": ["1e-3", 2]}}
    schema.check(recipe, "r")
    assert recipe["method"]["reward_weights"] == [0.001, 2]
    assert all(isinstance(v, (int, float)) for v in recipe["method"]["reward_weights"])
    assert recipe["train"]["betas"] == [0.9, 0.95] and all(isinstance(v, float) for v in recipe["train"]["betas"])


def test_sources_are_the_path_strings_only():
    recipe = _lm(tokenizer={"train_bpe": {"vocab_size": 300}})
    recipe["model"] = {"from": "ckpt/dir"}
    schema.check(recipe, "r")
    assert schema.sources(recipe) == [("model.from", "ckpt/dir")]
    recipe["tokenizer"] = "tok/dir"
    assert sorted(schema.sources(recipe)) == [("model.from", "ckpt/dir"), ("tokenizer", "tok/dir")]
