"""The reward model's bookkeeping around its head: PPO's critic values are zero where the completion mask is
(padding carries no value), pair accuracy counts a pair only when chosen scores strictly above rejected (a tie is
not a win, as TRL's RewardTrainer's accuracy), and the reward function hands each batch its own images."""
import pytest
import torch

import ocellus.train.reward_model as rmod
from ocellus.train.reward_model import RewardModel, pair_accuracy
from _posttrain_tiny import text_batch, tiny_decoder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_critic_values_are_the_head_on_each_state_before_a_token_and_zero_on_padding():
    torch.manual_seed(0)
    rm = RewardModel(tiny_decoder()).eval()
    batch = text_batch([[5, 6, 7], [8, 9]], [[20, 21, 22, 1], [23, 1]])   # row 1 is padded after 2 tokens
    mask = batch["completion_mask"]
    assert mask[1].tolist() == [1, 1, 0, 0]
    with torch.no_grad():
        v = rm.token_values(batch)
        h = rmod.completion_hidden(rm.backbone, batch)[:, :-1]                # state before token t
        hand = (h @ rm.score.weight.T).squeeze(-1) + rm.score.bias
    assert (v[1, 2:] == 0).all()
    torch.testing.assert_close(v, hand * mask, atol=1e-5, rtol=1e-5)


class _Scored:
    """A stand-in reward model: rewards(batch) = the batch's own numbers."""

    def __init__(self):
        self.batches = []

    def eval(self):
        return self

    def rewards(self, batch):
        self.batches.append(batch)
        return torch.tensor(batch, dtype=torch.float32)


def test_pair_accuracy_counts_ties_as_losses(monkeypatch):
    # collate_pairs lays B chosen rows, then B rejected rows: here each pair is (chosen, rejected) rewards
    monkeypatch.setattr(rmod, "collate_pairs", lambda processor: lambda pairs: [c for c, _ in pairs] +
                        [r for _, r in pairs])
    pairs = [(1.0, 0.0), (0.5, 0.5), (0.0, 2.0), (3.0, 3.0)]
    acc, margin = pair_accuracy(_Scored(), None, pairs, batch_size=3)
    assert acc == pytest.approx(sum(c > r for c, r in pairs) / len(pairs)) == 0.25
    assert margin == pytest.approx(sum(c - r for c, r in pairs) / len(pairs))


def test_reward_function_batches_read_their_own_images(monkeypatch):
    seen = []

    def encode(processor, prompts, completions, images):
        seen.append((prompts, completions, images))
        return [float(im) for im in images]             # the "reward" of a row is its image's number
    monkeypatch.setattr(rmod, "encode_completions", encode)
    fake = _Scored()
    fn = RewardModel.as_reward_fn(fake, processor=None, batch_size=2)
    out = fn(["p0", "p1", "p2", "p3", "p4"], ["c0", "c1", "c2", "c3", "c4"], images=[10, 11, 12, 13, 14])
    assert out == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert [s[2] for s in seen] == [[10, 11], [12, 13], [14]]
    assert [s[0] for s in seen] == [["p0", "p1"], ["p2", "p3"], ["p4"]]
