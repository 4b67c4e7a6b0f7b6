"""scripts/compare_bridges.py's own parts: where a chain's step lands in samples and load-free seconds, which evals
say whether a curve flattened, what is read off a curve at a budget, and the image tokens a decoder reads."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ocellus.compare import decoder_image_tokens
from ocellus.data.bpe import train_bpe
from ocellus.data.image import image_config
from ocellus.errors import InputError
from ocellus.hub.families import family_module
from ocellus.models.families.flamingo.modeling import build_flamingo
from ocellus.models.families.llava.modeling import build_llava

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_bridges.py"
spec = importlib.util.spec_from_file_location("compare_bridges", SCRIPT)
cb = importlib.util.module_from_spec(spec)
sys.modules["compare_bridges"] = cb
spec.loader.exec_module(cb)

pytestmark = pytest.mark.usefixtures("one_thread")


def chain():
    """LLaVA-like: 200 caption steps of 16 at 0.1 s, then 4000 QA steps of 32 at 0.5 s."""
    return [cb.Leg("x/align", 200, 16, False, True, 0.1), cb.Leg("x/sft", 4000, 32, True, True, 0.5)]


def test_a_step_lands_after_every_earlier_leg_in_samples_and_seconds():
    legs = chain()
    assert cb.position(legs, 0, 200) == (100.0, 20.0)               # 200 x 16 samples = 100 steps of 32
    assert cb.position(legs, 1, 0) == (100.0, 20.0)
    assert cb.position(legs, 1, 1000) == (1100.0, 20.0 + 500.0)
    assert cb.position(legs, 1, 4000) == (4100.0, 2020.0)
    legs[0].s_per_step = None                                        # a leg not timed: no seconds after it
    assert cb.position(legs, 1, 4000) == (4100.0, None)
    with pytest.raises(InputError, match="no step 4001"):
        cb.position(legs, 1, 4001)
    with pytest.raises(InputError, match="leg 2"):
        cb.position(legs, 2, 0)


def test_flattened_compares_the_last_two_evals_within_three_points():
    assert cb.flattened([0.5, 0.80, 0.82]) is True
    assert cb.flattened([0.80, 0.84]) is False                       # still rising 4 points
    assert cb.flattened([0.84, 0.80]) is False                       # or falling
    assert cb.flattened([0.80, 0.83]) is True
    assert cb.flattened([0.9]) is None


def test_the_last_two_evals_compared_are_scored_on_the_same_scenes():
    P = cb.Point
    # InternVL-like: n = 200 during training, one n = 500 at the end (another scene set: not comparable)
    run = [P(0, 3000, {"all": 0.84}, 200), P(0, 3500, {"all": 0.88}, 200), P(0, 4000, {"all": 0.88}, 200),
           P(0, 4000, {"all": 0.80}, 500)]
    assert [p.acc["all"] for p in cb.comparable_last_two(run)] == [0.88, 0.88]
    # Qwen2-VL-like: the later legs have only their n = 500 finals: those are the latest pair
    chained = run + [P(1, 1500, {"all": 0.86}, 500), P(2, 1500, {"all": 0.87}, 500)]
    assert [(p.leg, p.n) for p in cb.comparable_last_two(chained)] == [(1, 500), (2, 500)]
    assert len(cb.comparable_last_two([P(0, 4000, {"all": 0.9}, 500)])) == 1


def test_a_curve_is_read_only_where_it_was_evaluated():
    curve = [(100.0, "a"), (200.0, "b"), (400.0, "c")]
    assert cb.value_at(curve, 99.0) is None
    assert cb.value_at(curve, 200.0) == "b"
    assert cb.value_at(curve, 399.0) == "b"                          # no interpolation
    assert cb.value_at(curve, 1e6) == "c"


def test_the_first_eval_at_the_bar_needs_colour_and_shape():
    curve = [{"colour": 0.95, "shape": 0.80}, {"colour": 0.89, "shape": 0.99}, {"colour": 0.90, "shape": 0.90, "k": 1}]
    assert cb.first_reaching(curve) == curve[2]
    assert cb.first_reaching(curve[:2]) is None


def test_late_loss_change_and_the_median_step():
    falling = [(s, 1.0 if s <= 750 else 0.8) for s in range(25, 1001, 25)]
    assert cb.late_loss_change(falling) == pytest.approx(-0.2)
    assert cb.late_loss_change([(s, 0.5) for s in range(25, 1001, 25)]) == pytest.approx(0.0)
    assert cb.late_loss_change([(1000, 0.5)]) is None
    assert cb.median_step([9.0, 9.0, 1.0, 3.0, 2.0], warmup=2) == 2.0    # warm-up steps left out
    with pytest.raises(InputError, match="leave none"):
        cb.median_step([1.0, 2.0], warmup=2)


def test_image_tokens_are_counted_by_the_processor_and_cross_attention_reads_its_latents():
    tok = train_bpe(["what colour is the red circle", "a blue square left of a circle"] * 20, 300)
    image = tok.convert_tokens_to_ids("<image>")
    text = {"model_type": "llama", "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
    vit = {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
           "num_attention_heads": 2, "image_size": 24, "patch_size": 6}
    torch.manual_seed(0)
    llava = build_llava({"vision_config": vit, "text_config": text, "image_token_index": image,
                         "vision_feature_select_strategy": "full"})
    flamingo = build_flamingo({"vision_config": vit, "text_config": text, "image_token_index": image,
                               "perceiver_config": {"depth": 1, "num_latents": 3, "heads": 2, "head_dim": 8},
                               "cross_attn_config": {"heads": 2, "head_dim": 8, "ff_mult": 2},
                               "cross_attn_every_n_layers": 1})
    scene = Image.new("RGB", (24, 24), (90, 90, 90))
    proc = family_module("llava").training_processor(llava, tok, image_config(24))
    assert decoder_image_tokens(llava, proc, scene) == (17, 17)      # (24 / 6)^2 patches + CLS, all in the sequence
    proc = family_module("flamingo").training_processor(flamingo, tok, image_config(24))
    assert decoder_image_tokens(flamingo, proc, scene) == (1, 3)     # one <image> token; the decoder reads 3 latents


def test_rows_of_families_not_trained_here_are_kept_from_the_json():
    """A family retrained here replaces its old row; one whose runs are not on this machine keeps the JSON's; CHAINS'
    order."""
    fams = list(cb.CHAINS)
    old = {"rows": [{"family": fams[0], "v": "old"}, {"family": fams[2], "v": "old"}]}
    rows = cb.merge_rows([{"family": fams[2], "v": "new"}, {"family": fams[1], "v": "new"}], old)
    assert [(r["family"], r["v"]) for r in rows] == [(fams[0], "old"), (fams[1], "new"), (fams[2], "new")]
    assert cb.merge_rows([{"family": fams[1], "v": "new"}], None) == [{"family": fams[1], "v": "new"}]
