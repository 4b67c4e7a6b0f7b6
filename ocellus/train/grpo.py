"""Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", sec. 4.1, eq. 3), with the token
normalisations of Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training") and DAPO (Yu et al.
2025); the loss as TRL's GRPOTrainer computes it.

For each prompt q, G completions o_1..o_G are sampled from the current policy (with the prompt's image)
and scored by reward functions; no value model:
    A_i   = (r_i - mean(r)) / (std(r) + 1e-4)        group-normalised (scale_rewards=False: r_i - mean(r))
    ratio = pi(o_t | q, o_<t) / pi_old(o_t | q, o_<t)
    L_t   = -min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A) + beta KL_t
    KL_t  = pi_ref/pi - log(pi_ref/pi) - 1            the k3 estimator (Schulman 2020): >= 0, unbiased
The per-token losses are aggregated by loss_style:
    grpo     mean over each completion's tokens, then over completions (the paper's 1/|o_i| — biased
             towards short correct and long wrong completions, as Dr. GRPO shows)
    dr_grpo  sum over all tokens / (completions x max_new_tokens): a constant normaliser
    dapo     sum over all tokens / number of tokens in the batch (token-level mean)
Defaults: G = 8, epsilon = 0.2, beta = 0.04 (DeepSeekMath's value; TRL now defaults to 0), one policy
update per rollout batch (num_iterations = 1: pi_old = pi, ratio = 1, the gradient is the policy
gradient of the advantage-weighted log-likelihood).

Groups whose rewards are all equal have zero std: every advantage is exactly 0, so the group adds no
policy gradient (only the KL term); that is the defined behaviour, not an error, and the share of such
groups is logged as frac_reward_zero_std.

The loop runs under the Trainer (step_objective.StepObjective): one Trainer step = one rollout batch of
train.batch_size prompts and its num_iterations updates, then one scheduler step. The policy is the
objective's only submodule, so checkpoints hold the policy's trainable tensors and their AdamW state; the
frozen reference is a copy of the start made before the Trainer resumes (re-derived from model.from on
resume, never saved); a rollout's sampling seed is (seed, step), so a resumed run samples what an
uninterrupted one would have.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError
from ocellus.train.posttrain import export_vlm, load_start, report, reward_functions, rl_eval, rl_fit
from ocellus.train.rollout import masked_mean, sample_completions, token_logprobs
from ocellus.train.rewards import score_completions
from ocellus.train.stages import parts_of
from ocellus.train.step_objective import StepObjective, StepOutput

LOSS_STYLES = ("grpo", "dr_grpo", "dapo")


@dataclass(frozen=True)
class OnPolicyConfig:
    """What GRPO and PPO (train/ppo.py) share: completions of up to max_new_tokens sampled from the policy at
    `temperature` (and scored at it, token_logprobs), and the clip range of the policy ratio (clipped_surrogate)."""
    max_new_tokens: int = 8
    temperature: float = 1.0
    epsilon: float = 0.2

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.epsilon <= 0:
            raise ConfigError(f"{type(self).__name__}: max_new_tokens must be >= 1 and epsilon > 0, got "
                              f"{self.max_new_tokens} and {self.epsilon}")


@dataclass(frozen=True)
class GRPOConfig(OnPolicyConfig):
    num_generations: int = 8
    epsilon_high: float | None = None     # DAPO's clip-higher; None: epsilon
    beta: float = 0.04
    loss_style: str = "grpo"
    scale_rewards: bool = True            # Dr. GRPO: False (no division by the group std)
    num_iterations: int = 1               # policy updates per rollout batch (mu in the paper)

    def __post_init__(self):
        super().__post_init__()
        if self.loss_style not in LOSS_STYLES:
            raise ConfigError(f"grpo loss_style must be one of {LOSS_STYLES}, got {self.loss_style!r}")
        if self.num_generations < 2:
            raise ConfigError(f"grpo needs num_generations >= 2 to normalise within a group, "
                              f"got {self.num_generations}")
        if self.beta < 0 or self.num_iterations < 1:
            raise ConfigError("grpo: beta >= 0, num_iterations >= 1")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True,
                     eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards [N] (N = prompts x G, grouped consecutively) -> (advantages [N], zero-std groups [N / G] bool)."""
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise InputError(f"rewards must be [prompts x {group_size}], got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)                                           # [P, G]
    mean, std = grouped.mean(1, keepdim=True), grouped.std(1, keepdim=True)          # [P, 1] (unbiased, as TRL)
    adv = grouped - mean
    if scale:
        adv = adv / (std + eps)
    return adv.flatten(), (std.squeeze(1) < 1e-8)                                    # [N], [P]


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate exp(ref - logp) - (ref - logp) - 1, for tokens sampled from pi."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, epsilon: float,
                      epsilon_high: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, as a loss: -min(ratio A, clip(ratio) A).
    advantages: [B] (one per sequence, broadcast) or [B, C] (per token). -> (loss [B, C], clipped [B, C] bool)."""
    ratio = torch.exp(logp - old_logp)                                               # [B, C]
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    high = epsilon if epsilon_high is None else epsilon_high
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + high) * adv
    return -torch.min(unclipped, clipped), clipped < unclipped


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, style: str, max_completion_length: int) -> torch.Tensor:
    """Per-token losses [B, C] -> a scalar, by loss style (see the module docstring)."""
    mask = mask.to(per_token.dtype)
    if style == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if style == "dr_grpo":
        return (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)
    if style == "dapo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    raise ConfigError(f"loss style must be one of {LOSS_STYLES}, got {style!r}")


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, cfg: GRPOConfig) -> tuple[torch.Tensor, dict]:
    """Token log-probs [B, C] of the policy, the sampling policy and the reference (None when beta = 0)."""
    per_token, clipped = clipped_surrogate(logp, old_logp, advantages, cfg.epsilon, cfg.epsilon_high)
    metrics = {"clip_ratio": masked_mean(clipped.float(), mask).item()}
    if cfg.beta:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + cfg.beta * kl
        metrics["kl"] = masked_mean(kl, mask).item()
    return aggregate(per_token, mask, cfg.loss_style, cfg.max_new_tokens), metrics


def rollout_seed(seed: int, step: int) -> int:
    """The sampling seed of the rollout of step `step` (steps done before it) in a run seeded `seed`."""
    return seed * 1_000_003 + step


class GRPO(StepObjective):
    """The loop: sample G completions per prompt -> rewards -> group advantages -> num_iterations updates.
    Under the Trainer (optimizer and scheduler None), or one step alone with the ones given (`step(rows)`)."""

    def __init__(self, policy: nn.Module, processor, reward_fns, cfg: GRPOConfig, optimizer=None, scheduler=None,
                 reward_weights=None, clip_grad_norm: float | None = 1.0, reference=None, seed: int = 0):
        super().__init__([optimizer] if optimizer is not None else [], [scheduler] if scheduler is not None else [],
                         clip_grad_norm)
        self.policy, self.processor, self.cfg = policy, processor, cfg
        self.reward_fns, self.reward_weights = reward_fns, reward_weights
        if cfg.beta and reference is None:
            reference = copy.deepcopy(policy)
        # a tuple: not a submodule, so neither trained, counted nor saved
        self._reference = (reference.requires_grad_(False).eval() if reference is not None else None,)
        self.seed = seed

    @property
    def reference(self):
        return self._reference[0]

    def parts(self) -> dict[str, nn.Module]:
        return parts_of(self.policy)

    def train_step(self, rows, step: int, update) -> StepOutput:
        cfg, G = self.cfg, self.cfg.num_generations
        prompts, images = [r.prompt for r in rows], [r.images for r in rows]
        rollout = sample_completions(self.policy, self.processor, prompts, images, G, cfg.max_new_tokens,
                                     cfg.temperature, seed=rollout_seed(self.seed, step))
        columns = {k: [r.columns[k] for r in rows for _ in range(G)] for k in rows[0].columns}
        columns["images"] = [im for im in images for _ in range(G)]
        rewards, per_fn = score_completions(self.reward_fns, [p for p in prompts for _ in range(G)],
                                            rollout.completions, columns, self.reward_weights)
        advantages, zero_std = group_advantages(rewards, G, cfg.scale_rewards)
        batch, mask = rollout.batch, rollout.batch["completion_mask"]
        self.policy.train()
        with torch.no_grad():
            old = token_logprobs(self.policy, batch, cfg.temperature) if cfg.num_iterations > 1 else None
            ref = token_logprobs(self.reference, batch, cfg.temperature) if cfg.beta else None
        for _ in range(cfg.num_iterations):
            logp = token_logprobs(self.policy, batch, cfg.temperature)
            loss, metrics = grpo_loss(logp, logp.detach() if old is None else old, ref, advantages, mask, cfg)
            if not torch.isfinite(loss):
                raise InputError(f"GRPO loss is {loss.item()} at step {step + 1}")
            loss.backward()
            grad_norm = update()
        return StepOutput(loss.item(), int(mask.sum()), {
            "reward": rewards.mean().item(), "reward_std": rewards.view(-1, G).std(1).mean().item(),
            **{f"rewards/{k}": v for k, v in per_fn.items()},
            "frac_reward_zero_std": zero_std.float().mean().item(), "grad_norm": grad_norm,
            "completion_length": mask.sum(-1).float().mean().item(),
            "truncated": rollout.truncated.float().mean().item(), **metrics})


def run(recipe: dict, cfg, out):
    """task: grpo — the policy from model.from, prompts from data (e.g. count questions), rewards from
    method.rewards; held-out counting accuracy (or grounding IoU) before and after; reward/KL curves."""
    method = dict(recipe.get("method") or {})
    policy, processor = load_start(recipe["model"])
    fns, weights = reward_functions(method, processor)
    gcfg = GRPOConfig(**{k: v for k, v in method.items() if k not in ("rewards", "reward_weights", "reward_model")})
    before = rl_eval(policy, processor, recipe)
    # the reference (beta > 0) is copied from the start here, before rl_fit's Trainer resumes the policy
    objective = GRPO(policy, processor, fns, gcfg, reward_weights=weights, seed=int(recipe.get("seed", 0)))
    prompts_per_step = int((recipe.get("train") or {}).get("batch_size", 8))
    rl_fit(objective, recipe, cfg, out, prompts_per_step, ["reward", "kl", "completion_length"])
    after = rl_eval(policy, processor, recipe)
    path = export_vlm(policy, processor.tokenizer, int(policy.vision_tower.config.image_size), out / "model")
    report(out, recipe.get("name", "grpo"), before, after)
    return path
