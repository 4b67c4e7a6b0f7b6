"""A decoder's config (config.json, or a recipe's model.config) with a wrong-typed value is a ConfigError naming
the key, never a TypeError deep in the model (`model.config.hidden_size=x` was a traceback)."""
import subprocess
import sys
from pathlib import Path

import pytest

from ocellus.errors import ConfigError
from ocellus.models.text.bert import BertConfig
from ocellus.models.text.decoder import DecoderConfig

BASE = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key,value", [("hidden_size", "x"), ("num_hidden_layers", 2.5), ("num_attention_heads", True),
                                       ("num_key_value_heads", 0), ("vocab_size", -3), ("head_dim", "8"),
                                       ("max_position_embeddings", 1.0), ("rms_norm_eps", "1e-6"), ("rope_theta", -1.0)])
def test_bad_values_name_their_key(key, value):
    with pytest.raises(ConfigError, match=f"config {key} must be a positive"):
        DecoderConfig.from_hf({**BASE, key: value})
    DecoderConfig.from_hf(BASE)   # the good config builds


def test_recipe_override_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "ocellus.cli", "train", str(ROOT / "recipes/llava_tiny_shapes/text_pretrain.yaml"),
                          "model.config.hidden_size=x", f"train.out_dir={tmp_path}"], capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "config hidden_size must be a positive int, got 'x'" in run.stderr


@pytest.mark.parametrize("drop", [("hidden_size",), ("vocab_size", "num_attention_heads"), tuple(BASE)])
def test_missing_fields_are_named_in_order_by_every_config_reader(drop):
    """errors.required_fields behind DecoderConfig.from_hf and BertConfig.from_hf: every absent field, in the
    builder's order, in one ConfigError (BERT's message says it is BERT's config)."""
    cfg = {k: v for k, v in BASE.items() if k not in drop}
    for reader, order, what in ((DecoderConfig.from_hf, ("vocab_size", "hidden_size", "intermediate_size",
                                                         "num_hidden_layers", "num_attention_heads"), "config.json"),
                                (BertConfig.from_hf, ("vocab_size", "hidden_size", "num_hidden_layers",
                                                      "num_attention_heads", "intermediate_size"), "BERT config.json")):
        missing = [k for k in order if k in drop]
        with pytest.raises(ConfigError) as e:
            reader(cfg)
        assert str(e.value) == f"{what} lacks required fields {missing}"
