"""PPO for vision-language models (Schulman et al. 2017, "Proximal Policy Optimization Algorithms";
the RLHF form of Ziegler et al. 2019 and Ouyang et al. 2022), matching TRL's PPOTrainer losses.

Four models: the actor (the policy, trained), the critic (a copy of the policy's backbone with a scalar
value head, trained), the reference (a frozen copy of the start) and the reward (a frozen RewardModel,
or a verifiable reward function in its place). Per rollout batch:

    score s          reward of each whole completion (reward functions or the reward model)
    r_t              -kl_coef * (log pi(o_t) - log pi_ref(o_t))  + s on the completion's last token
    GAE              delta_t = r_t + gamma V(s_{t+1}) - V(s_t);  A_t = delta_t + gamma lambda A_{t+1}
                     (Schulman et al. 2016), V = 0 after the last token; returns R_t = A_t + V(s_t);
                     advantages whitened over the batch's completion tokens
    ppo_epochs x     policy loss  -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)        (token mean)
                     value loss   0.5 max((V - R)^2, (clip(V, V_old +- value_eps) - R)^2)  (token mean)

Memory: actor + critic carry gradients and AdamW state (~4x their weights each: weights, grads, two
moments), the reference and reward model are inference-only (1x each); for the 1.3M-parameter tiny
LLaVA that is ~10 x 5.3 MB. GRPO drops the critic (and, with verifiable rewards, the reward model).

The loop runs under the Trainer (step_objective.StepObjective): one Trainer step = one rollout batch and its
ppo_epochs updates, then one scheduler step. Actor and critic are the objective's submodules, trained by one
AdamW and clipped together (as TRL's PPOTrainer wraps policy and value model in one module), so checkpoints
hold both, value head included; the critic's parts are the actor's prefixed `critic.` plus `critic.head`
(`critic_stage`: the recipe's stage for both, the head trained). The frozen reference is a copy of the start
made before the Trainer resumes (re-derived on resume, never saved); sampling seeds are (seed, step) as GRPO's.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from ocellus.errors import ConfigError, InputError
from ocellus.train.grpo import OnPolicyConfig, clipped_surrogate, rollout_seed
from ocellus.train.posttrain import export_vlm, load_start, report, reward_functions, rl_eval, rl_fit
from ocellus.train.reward_model import RewardModel
from ocellus.train.rewards import score_completions
from ocellus.train.rollout import masked_mean, sample_completions, token_logprobs
from ocellus.train.stages import parts_of
from ocellus.train.step_objective import StepObjective, StepOutput


@dataclass(frozen=True)
class PPOConfig(OnPolicyConfig):
    kl_coef: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    value_epsilon: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 4

    def __post_init__(self):
        super().__post_init__()
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"ppo gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.ppo_epochs < 1 or self.value_epsilon <= 0 or self.kl_coef < 0:
            raise ConfigError("ppo: ppo_epochs >= 1, value_epsilon > 0, kl_coef >= 0")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over completion tokens. rewards, values, mask [B, C] (mask 1 on a
    prefix of each row) -> (advantages [B, C], returns [B, C]), 0 on padding."""
    mask = mask.to(values.dtype)
    r, v = rewards * mask, values * mask
    B, C = r.shape
    adv = torch.zeros_like(r)
    running = torch.zeros(B, dtype=r.dtype, device=r.device)
    for t in reversed(range(C)):
        next_v = v[:, t + 1] if t + 1 < C else torch.zeros_like(running)
        delta = r[:, t] + gamma * next_v - v[:, t]
        running = delta + gamma * lam * running
        adv[:, t] = running
    adv = adv * mask
    return adv, (adv + v) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               value_epsilon: float) -> torch.Tensor:
    """0.5 * token mean of max((V - R)^2, (V_clipped - R)^2), V_clipped = old + clamp(V - old, +-eps)."""
    clipped = old_values + torch.clamp(values - old_values, -value_epsilon, value_epsilon)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def token_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (per-token rewards [B, C] = -kl_coef * KL_t, plus the score on each completion's last token;
    the per-token KL estimate log pi - log pi_ref [B, C])."""
    kl = (logp - ref_logp) * mask
    r = -kl_coef * kl
    last = (mask.sum(-1).long() - 1).clamp(min=0)                                     # [B]
    r[torch.arange(r.shape[0]), last] += scores
    return r, kl


def critic_stage(stage: dict) -> dict:
    """The recipe's stage (actor parts) -> the stage of the whole objective: the critic's copy of each part
    as the actor's, its value head trained. An empty stage stays empty (the Trainer then trains every part)."""
    if not stage:
        return {}
    return {**stage, **{f"critic.{part}": spec for part, spec in stage.items()}, "critic.head": "full"}


class PPO(StepObjective):
    """Actor-critic steps on rollouts. Under the Trainer (optimizers and schedulers empty), or one step alone
    with the ones given (`step(rows)`, e.g. one per model)."""

    def __init__(self, policy: nn.Module, critic: RewardModel, processor, reward_fns, cfg: PPOConfig, optimizers=(),
                 schedulers=(), reward_weights=None, clip_grad_norm: float | None = 1.0, reference=None,
                 seed: int = 0):
        super().__init__(optimizers, schedulers, clip_grad_norm)
        self.policy, self.critic, self.processor, self.cfg = policy, critic, processor, cfg
        self.reward_fns, self.reward_weights = reward_fns, reward_weights
        reference = reference if reference is not None else copy.deepcopy(policy)
        self._reference = (reference.requires_grad_(False).eval(),)   # not a submodule: not trained or saved
        self.seed = seed

    @property
    def reference(self):
        return self._reference[0]

    def parts(self) -> dict[str, nn.Module]:
        critic = {f"critic.{name}": module for name, module in parts_of(self.critic).items()}
        return {**parts_of(self.policy), **critic}

    def train_step(self, rows, step: int, update) -> StepOutput:
        cfg = self.cfg
        prompts, images = [r.prompt for r in rows], [r.images for r in rows]
        rollout = sample_completions(self.policy, self.processor, prompts, images, 1, cfg.max_new_tokens,
                                     cfg.temperature, seed=rollout_seed(self.seed, step))
        columns = {k: [r.columns[k] for r in rows] for k in rows[0].columns}
        columns["images"] = images
        scores, per_fn = score_completions(self.reward_fns, prompts, rollout.completions, columns,
                                           self.reward_weights)
        batch, mask = rollout.batch, rollout.batch["completion_mask"]
        self.policy.train()
        self.critic.train()
        with torch.no_grad():
            old_logp = token_logprobs(self.policy, batch, cfg.temperature)
            ref_logp = token_logprobs(self.reference, batch, cfg.temperature)
            old_values = self.critic.token_values(batch)
            rewards, kl = token_rewards(scores, old_logp, ref_logp, mask, cfg.kl_coef)
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            advantages = whiten(advantages, mask)
        for _ in range(cfg.ppo_epochs):
            logp = token_logprobs(self.policy, batch, cfg.temperature)
            pg, clipped = clipped_surrogate(logp, old_logp, advantages, cfg.epsilon)
            pg_loss = masked_mean(pg, mask)
            vf_loss = value_loss(self.critic.token_values(batch), old_values, returns, mask, cfg.value_epsilon)
            loss = pg_loss + cfg.vf_coef * vf_loss
            if not torch.isfinite(loss):
                raise InputError(f"PPO loss is {loss.item()} at step {step + 1}")
            loss.backward()
            grad_norm = update()
        return StepOutput(loss.item(), int(mask.sum()), {
            "reward": scores.mean().item(), **{f"rewards/{k}": v for k, v in per_fn.items()},
            "kl": (kl.sum(-1)).mean().item(), "pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(),
            "clip_ratio": masked_mean(clipped.float(), mask).item(), "grad_norm": grad_norm,
            "completion_length": mask.sum(-1).float().mean().item()})


def run(recipe: dict, cfg, out):
    """task: ppo — actor from model.from, critic = a copy with a value head, reference = a frozen copy,
    reward = method.rewards and/or method.reward_model; held-out score before and after."""
    method = dict(recipe.get("method") or {})
    policy, processor = load_start(recipe["model"])
    fns, weights = reward_functions(method, processor)
    pcfg = PPOConfig(**{k: v for k, v in method.items() if k not in ("rewards", "reward_weights", "reward_model")})
    before = rl_eval(policy, processor, recipe)
    # the critic starts as a copy of the start with a fresh head (its trained tensors come back from a checkpoint on
    # resume); the reference is copied from the start in PPO(), before rl_fit's Trainer resumes the policy
    critic = RewardModel(copy.deepcopy(policy))
    objective = PPO(policy, critic, processor, fns, pcfg, reward_weights=weights, seed=int(recipe.get("seed", 0)))
    prompts_per_step = int((recipe.get("train") or {}).get("batch_size", 32))
    rl_fit(objective, recipe, replace(cfg, stage=critic_stage(cfg.stage)), out, prompts_per_step,
           ["reward", "kl", "vf_loss"])
    after = rl_eval(policy, processor, recipe)
    path = export_vlm(policy, processor.tokenizer, int(policy.vision_tower.config.image_size), out / "model")
    report(out, recipe.get("name", "ppo"), before, after)
    return path
