"""A reward model for vision-language completions: a scalar head on the decoder, trained with the
Bradley-Terry loss on preference pairs (Ouyang et al. 2022, "Training language models to follow
instructions with human feedback", eq. 1; Stiennon et al. 2020), as TRL's RewardTrainer:

    loss = -log sigma(r(x, y_w) - r(x, y_l))          accuracy = mean[r(x, y_w) > r(x, y_l)]

r(x, y) is a linear head on the final hidden state of the completion's last token (its end token),
the image seen by the backbone through its prompt — the same place transformers'
*ForSequenceClassification pools (the last non-padding token). The backbone is any model this
project builds (here the VLM), so the reward model reads images: the gap the issue names.

Saved as the backbone's HF checkpoint plus `reward_head.safetensors` ({"weight": [1, D], "bias": [1]}).
`as_reward_fn` makes it a reward function with the plain callable signature (rewards.py), so GRPO
and PPO take it in place of a verifiable reward.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ocellus.errors import CheckpointError, InputError
from ocellus.hub.checkpoint import load_model, save_model
from ocellus.train.dpo import ObjectiveOutput
from ocellus.train.rollout import completion_hidden, encode_completions
from ocellus.train.stages import parts_of
from ocellus.train.preference import collate_pairs
from ocellus.train.vlm_export import export_vlm

HEAD_FILE = "reward_head.safetensors"


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigma(r_w - r_l) over pairs."""
    if chosen_rewards.shape != rejected_rewards.shape:
        raise InputError(f"chosen rewards {tuple(chosen_rewards.shape)} and rejected rewards "
                         f"{tuple(rejected_rewards.shape)} must pair up")
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def last_token_states(hidden: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, C + 1, D] from rollout.completion_hidden -> the state at each completion's last token [B, D]."""
    last = completion_mask.sum(-1).long()                                            # [B]: index of the last token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]          # [B, D]


class RewardModel(nn.Module):
    """backbone (a VLM or decoder returning hidden_states) + score: Linear(D, 1)."""

    def __init__(self, backbone: nn.Module, hidden_size: int | None = None):
        super().__init__()
        self.backbone = backbone
        hidden_size = hidden_size or backbone.config.hidden_size
        self.score = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.score.weight, std=1 / (hidden_size + 1) ** 0.5)   # TRL/transformers' init scale
        nn.init.zeros_(self.score.bias)
        self.history: list[dict] = []

    def parts(self) -> dict[str, nn.Module]:
        return {**parts_of(self.backbone), "head": self.score}

    def rewards(self, batch: dict) -> torch.Tensor:
        """-> r(x, y) [B] for a prompt + completion batch (rollout layout)."""
        h = last_token_states(completion_hidden(self.backbone, batch), batch["completion_mask"])   # [B, D]
        return self.score(h.to(self.score.weight.dtype)).squeeze(-1)                               # [B]

    def token_values(self, batch: dict) -> torch.Tensor:
        """-> V(s_t) [B, C]: the head on the state before each completion token (PPO's critic)."""
        h = completion_hidden(self.backbone, batch)[:, :-1]                                         # [B, C, D]
        return self.score(h.to(self.score.weight.dtype)).squeeze(-1) * batch["completion_mask"]    # [B, C]

    def forward(self, **batch) -> ObjectiveOutput:
        """A pair batch (preference.collate_pairs: B chosen rows then B rejected rows) -> BT loss."""
        r = self.rewards(batch)
        B = r.shape[0] // 2
        chosen, rejected = r[:B], r[B:]
        loss = bradley_terry_loss(chosen, rejected)
        metrics = {"accuracy": (chosen > rejected).float().mean().item(),
                   "margin": (chosen - rejected).mean().item()}
        if self.training:
            self.history.append(metrics)
        return ObjectiveOutput(loss, metrics)

    # ---- use as a reward function ----------------------------------------------------------------
    def as_reward_fn(self, processor, batch_size: int = 32):
        """-> f(prompts, completions, images, **_) -> list[float], the model's rewards (no gradient)."""
        model = self

        @torch.no_grad()
        def reward_model(prompts, completions, images=None, **_):
            if images is None:
                raise InputError("a reward model reads the images: the prompt rows need an 'images' column")
            model.eval()
            out = []
            for s in range(0, len(prompts), batch_size):
                batch = encode_completions(processor, list(prompts[s:s + batch_size]),
                                           list(completions[s:s + batch_size]), list(images[s:s + batch_size]))
                out += model.rewards(batch).tolist()
            return out
        return reward_model

    # ---- checkpoints -----------------------------------------------------------------------------
    def save(self, directory, tokenizer=None) -> Path:
        from safetensors.torch import save_file
        directory = Path(directory)
        tower = getattr(self.backbone, "vision_tower", None)
        if tower is not None and tokenizer is not None:   # a VLM: its preprocessor_config.json too
            export_vlm(self.backbone, tokenizer, int(tower.config.image_size), directory)
        else:
            save_model(self.backbone, directory, tokenizer=tokenizer)
        save_file({"weight": self.score.weight.detach().contiguous(), "bias": self.score.bias.detach().contiguous()},
                  str(directory / HEAD_FILE))
        (directory / "reward_head.json").write_text(json.dumps({"pooling": "last_completion_token",
                                                               "loss": "bradley_terry"}))
        return directory

    @classmethod
    def from_dir(cls, directory) -> "RewardModel":
        from safetensors.torch import load_file
        directory = Path(directory)
        if not (directory / HEAD_FILE).exists():
            raise CheckpointError(f"{directory} has no {HEAD_FILE}: not a reward model saved by RewardModel.save")
        head = load_file(str(directory / HEAD_FILE))
        model = cls(load_model(directory), hidden_size=head["weight"].shape[1])
        if set(head) != {"weight", "bias"} or head["weight"].shape[0] != 1:
            raise CheckpointError(f"{directory / HEAD_FILE}: expected weight [1, D] and bias [1], got "
                                  f"{ {k: tuple(v.shape) for k, v in head.items()} }")
        model.score.load_state_dict(head)
        return model


@torch.no_grad()
def pair_accuracy(model: RewardModel, processor, pairs, batch_size: int = 32) -> tuple[float, float]:
    """-> (share of pairs ranked chosen > rejected, mean margin) over a sequence of PreferencePairs."""
    collate, model = collate_pairs(processor), model.eval()
    hits, margins = [], []
    for s in range(0, len(pairs), batch_size):
        r = model.rewards(collate([pairs[i] for i in range(s, min(s + batch_size, len(pairs)))]))
        B = r.shape[0] // 2
        hits += (r[:B] > r[B:]).tolist()
        margins += (r[:B] - r[B:]).tolist()
    return sum(hits) / len(hits), sum(margins) / len(margins)

