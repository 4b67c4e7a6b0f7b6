"""hub/keymap.py's KeyMap on its own: what a pattern matches (whole names, literal dots, `{rest}` across several
dotted components), which rule wins when two match (the first, both ways), and which checkpoint keys a `drop`
pattern consumes. Every family's table (models/families/*/checkpoint.py) is made of these rules, so each case
here is written out by hand rather than through a family."""
from ocellus.hub.keymap import KeyMap

# a LLaVA-like table in miniature: a specific rule before a general one, and a second (read-only) layout after
KEYS = KeyMap(
    rules=(("tower.layers.{i}.attn.o_proj.{rest}", "vision.encoder.layers.{i}.attn.out_proj.{rest}"),
           ("tower.layers.{i}.{rest}", "vision.encoder.layers.{i}.{rest}"),
           ("lm.norm.weight", "lm.model.norm.weight"),
           ("tower.layers.{i}.{rest}", "model.vision.layers.{i}.{rest}")),       # read only: the first one writes
    drop=(r"rotary_emb\.inv_freq$", r"(^|\.)position_ids$"),
)


def test_rest_spans_several_components_and_i_only_a_number():
    # {rest} is the whole remainder (bias, or a nested module's path), {i} one layer number of any width
    assert KEYS.to_theirs("tower.layers.12.mlp.fc1.bias") == "vision.encoder.layers.12.mlp.fc1.bias"
    assert KEYS.to_ours("vision.encoder.layers.3.attn.q_proj.weight") == "tower.layers.3.attn.q_proj.weight"
    assert KEYS.to_theirs("tower.layers.x.mlp.weight") is None


def test_a_pattern_matches_the_whole_name_with_literal_dots():
    # a longer name (an int8 scale beside its weight) and a name whose dot is another character are not the rule's
    assert KEYS.to_theirs("lm.norm.weight") == "lm.model.norm.weight"
    assert KEYS.to_theirs("lm.norm.weight_scale") is None
    assert KEYS.to_theirs("lm_norm.weight") is None
    assert KEYS.to_ours("lm.model.norm.weight.extra") is None
    assert KEYS.to_ours("lm.modelXnorm.weight") is None
    assert KEYS.to_theirs("tower_layers.1.mlp.weight") is None                   # before a placeholder too
    assert KEYS.to_ours("vision.encoder_layers.3.mlp.weight") is None


def test_the_first_matching_rule_wins_both_ways():
    # the specific o_proj rule is listed before the general one: out_proj on the checkpoint side, o_proj on ours
    assert KEYS.to_theirs("tower.layers.0.attn.o_proj.weight") == "vision.encoder.layers.0.attn.out_proj.weight"
    assert KEYS.to_ours("vision.encoder.layers.0.attn.out_proj.weight") == "tower.layers.0.attn.o_proj.weight"
    # two rules share our side: saving writes the first layout, loading reads both
    assert KEYS.to_theirs("tower.layers.1.mlp.weight") == "vision.encoder.layers.1.mlp.weight"
    assert KEYS.to_ours("model.vision.layers.1.mlp.weight") == "tower.layers.1.mlp.weight"


def test_to_ours_reads_checkpoint_names_and_to_theirs_ours():
    # each direction matches its own side's patterns: a checkpoint name is not one of ours and vice versa
    assert KEYS.to_ours("lm.norm.weight") is None
    assert KEYS.to_theirs("lm.model.norm.weight") is None


def test_drop_patterns_search_anywhere_and_any_one_suffices():
    assert KEYS.dropped("lm.model.layers.0.self_attn.rotary_emb.inv_freq")       # matches at the end only
    assert KEYS.dropped("vision.embeddings.position_ids") and KEYS.dropped("position_ids")
    assert not KEYS.dropped("vision.embeddings.my_position_ids")
    assert not KEYS.dropped("lm.model.norm.weight")
    assert not KeyMap(rules=()).dropped("anything")
