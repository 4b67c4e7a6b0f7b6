"""What every post-training run starts from (train/posttrain.py): the weakened start (noise of each matrix's own
std on the named parts, seeded; vectors and the other parts untouched) and the held-out scenes it is scored on
(the eval seed's, one QA type when asked)."""
import pytest
import torch

import ocellus
from ocellus.errors import ConfigError
from ocellus.eval.harness import EVAL_SEED
from ocellus.train.posttrain import eval_config, rl_eval, weaken
from ocellus.train.stages import parts_of


@pytest.fixture
def model():
    return ocellus.load(ocellus.default_model_dir())


def test_weaken_adds_noise_of_each_matrix_std_to_the_named_parts(model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    weaken(model, noise=0.5, seed=3, parts=("llm",))
    llm = {id(p) for p in parts_of(model)["llm"].parameters()}
    moved = 0
    for name, p in model.named_parameters():
        if id(p) in llm and p.dim() >= 2:
            ratio = float((p.detach() - before[name]).std() / before[name].std())
            assert 0.45 < ratio < 0.55, (name, ratio)      # noise 0.5 x the matrix's own std
            moved += 1
        else:   # norms and biases, and every other part, untouched
            assert torch.equal(p, before[name]), name
    assert moved >= 4
    again = ocellus.load(ocellus.default_model_dir())
    weaken(again, noise=0.5, seed=3, parts=("llm",))
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), model.parameters()))   # seeded
    other = ocellus.load(ocellus.default_model_dir())
    weaken(other, noise=0.5, seed=4, parts=("llm",))
    assert not torch.equal(other.language_model.embed_tokens.weight, model.language_model.embed_tokens.weight)
    with pytest.raises(ConfigError, match="are not parts of this model"):
        weaken(model, noise=0.5, parts=("decoder",))


def test_held_out_scenes_are_the_eval_seeds():
    cfg = eval_config(48, "count")
    assert cfg.seed == EVAL_SEED and cfg.qa_weights == (("count", 1.0),) and cfg.image_size == 48
    assert eval_config(48).qa_weights != (("count", 1.0),)


def test_rl_eval_scores_the_type_the_run_trains(model):
    proc = ocellus.load_processor(ocellus.default_model_dir())
    recipe = {"data": {"kind": "qa", "qa_weights": {"count": 1, "colour": 0}}, "eval": {"n": 6}}
    assert set(rl_eval(model, proc, recipe)) == {"count", "all"}
    recipe["data"]["qa_weights"] = {"count": 1, "colour": 1}
    assert {"count", "colour", "all"} <= set(rl_eval(model, proc, {**recipe, "eval": {"n": 30}}))
