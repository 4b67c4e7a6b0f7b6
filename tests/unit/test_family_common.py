"""models/families/common.feature_layer: the one check Flamingo's and xGen-MM's config readers share."""
import pytest

from ocellus.errors import ConfigError
from ocellus.models.families.common import feature_layer


def test_feature_layer_takes_one_int_and_a_known_strategy():
    assert feature_layer({}, "X", "full") == (-1, "full")
    assert feature_layer({"vision_feature_layer": -2, "vision_feature_select_strategy": "default"}, "X", "full") == \
        (-2, "default")
    for bad in ([-2, -1], True, "-1"):
        with pytest.raises(ConfigError, match="X vision_feature_layer must be one int"):
            feature_layer({"vision_feature_layer": bad}, "X", "full")
    with pytest.raises(ConfigError, match="'default' or 'full', got 'cls'"):
        feature_layer({"vision_feature_select_strategy": "cls"}, "X", "full")
