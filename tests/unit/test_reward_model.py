"""Reward model: the Bradley-Terry loss by hand, pooling at the completion's last token, a few steps
ranking training pairs, save/load, and use as a reward function."""
import math

import pytest
import torch
import torch.nn.functional as F

import ocellus
from ocellus.data.shapes import ShapesConfig
from ocellus.errors import CheckpointError, InputError
from ocellus.train.preference import collate_pairs, preference_pair, shapes_preference
from ocellus.train.reward_model import RewardModel, bradley_terry_loss, last_token_states, pair_accuracy
from ocellus.train.rewards import score_completions
from _posttrain_tiny import one_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bradley_terry_by_hand():
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2)
    torch.manual_seed(0)
    a, b = torch.randn(8), torch.randn(8)
    # = binary cross-entropy of "chosen wins" on the logit r_w - r_l
    assert bradley_terry_loss(a, b).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(a - b, torch.ones(8)).item(), abs=1e-6)
    with pytest.raises(InputError, match="pair up"):
        bradley_terry_loss(a, b[:3])


def test_last_token_states_pick_each_completions_end():
    hidden = torch.arange(2 * 4, dtype=torch.float).view(2, 4, 1)     # [B, C + 1, 1]: value = index
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # index 0 is the last prompt token, index k the state after completion token k
    assert last_token_states(hidden, mask).flatten().tolist() == [3.0, 5.0]


@pytest.fixture(scope="module")
def parts():
    d = ocellus.default_model_dir()
    proc = ocellus.load_processor(d)
    cfg = ShapesConfig(image_size=48, seed=41)
    return d, proc, [preference_pair(shapes_preference(cfg, i), i) for i in range(4)]


@pytest.mark.slow
def test_training_ranks_pairs(parts):
    d, proc, pairs = parts
    torch.manual_seed(0)
    rm = RewardModel(ocellus.load(d))
    rm.backbone.vision_tower.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=1e-3)
    batch = collate_pairs(proc)(pairs)
    first = rm(**batch)
    for _ in range(8):
        out = rm(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    after = rm(**batch)
    assert after.loss.item() < first.loss.item() and after.metrics["accuracy"] == 1.0
    assert pair_accuracy(rm, proc, pairs)[0] == 1.0


def test_checkpoint_round_trip_and_use_as_a_reward_function(parts, tmp_path):
    d, proc, pairs = parts
    torch.manual_seed(0)
    rm = RewardModel(ocellus.load(d)).eval()
    with torch.no_grad():
        rm.score.bias.fill_(0.25)
    batch = collate_pairs(proc)(pairs)
    rewards = rm.rewards(batch)
    assert rewards.shape == (8,) and not torch.allclose(rewards[:4], rewards[4:])   # the completion matters
    rm.save(tmp_path / "rm", tokenizer=proc.tokenizer)
    again = RewardModel.from_dir(tmp_path / "rm").eval()
    assert torch.allclose(again.rewards(batch), rewards, atol=1e-5)
    fn = again.as_reward_fn(ocellus.load_processor(tmp_path / "rm"))
    prompts, completions = [p.prompt for p in pairs], [p.chosen for p in pairs]
    total, _ = score_completions([fn], prompts, completions, {"images": [p.images for p in pairs]})
    assert torch.allclose(total, rewards[:4], atol=1e-5)
    with pytest.raises(InputError, match="reward function 'reward_model' raised InputError"):
        score_completions([fn], prompts, completions, {})
    with pytest.raises(CheckpointError, match="reward_head.safetensors"):
        RewardModel.from_dir(d)
