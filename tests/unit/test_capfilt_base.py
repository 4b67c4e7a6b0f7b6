"""CapFilt starts from BLIP pretraining only: its captioner is BLIP's image-grounded decoder, which an ALBEF
recipe (same image-text pairs, same runner module) does not have, so such a base is refused up front."""
import pytest

from ocellus.errors import ConfigError
from ocellus.train.capfilt import check_config


def test_capfilt_starts_from_blip_pretraining_only():
    with pytest.raises(ConfigError, match="must be a BLIP pretraining recipe"):
        check_config({"base": "recipes/albef_tiny_shapes/pretrain.yaml"})
    assert check_config({"base": "recipes/blip_tiny_shapes/pretrain.yaml"})["task"] == "blip"
