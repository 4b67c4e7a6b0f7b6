"""models/families/common: feature_layer, the one check Flamingo's and xGen-MM's config readers share;
two_layouts, the key rules LLaVA, InternVL and Qwen2-VL write and read transformers 5's two layouts with."""
import pytest

from ocellus.errors import ConfigError
from ocellus.hub.keymap import KeyMap
from ocellus.models.families.common import feature_layer, two_layouts


def test_feature_layer_takes_one_int_and_a_known_strategy():
    assert feature_layer({}, "X", "full") == (-1, "full")
    assert feature_layer({"vision_feature_layer": -2, "vision_feature_select_strategy": "default"}, "X", "full") == \
        (-2, "default")
    for bad in ([-2, -1], True, "-1"):
        with pytest.raises(ConfigError, match="X vision_feature_layer must be one int"):
            feature_layer({"vision_feature_layer": bad}, "X", "full")
    with pytest.raises(ConfigError, match="'default' or 'full', got 'cls'"):
        feature_layer({"vision_feature_select_strategy": "cls"}, "X", "full")


def test_two_layouts_write_the_hub_names_and_also_read_the_in_memory_ones():
    keys = KeyMap(rules=two_layouts((("proj.{rest}", "multi_modal_projector.{rest}"),), "language_model.model.",
                                    "language_model.lm_head.weight"))
    hub = {"proj.w": "multi_modal_projector.w",
           "language_model.layers.0.q.weight": "language_model.model.layers.0.q.weight",
           "language_model.norm.weight": "language_model.model.norm.weight",
           "language_model.lm_head.weight": "language_model.lm_head.weight"}
    in_memory = {"proj.w": "model.multi_modal_projector.w",
                 "language_model.layers.0.q.weight": "model.language_model.layers.0.q.weight",
                 "language_model.norm.weight": "model.language_model.norm.weight",
                 "language_model.lm_head.weight": "lm_head.weight"}
    for ours, theirs in hub.items():
        assert keys.to_theirs(ours) == theirs and keys.to_ours(theirs) == ours    # written and read
    for ours, theirs in in_memory.items():
        assert keys.to_ours(theirs) == ours                                        # read only
