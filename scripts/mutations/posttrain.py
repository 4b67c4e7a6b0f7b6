"""Post-training loops (SFT + LoRA, reward model, DPO, GRPO, PPO, distillation): one-line bugs a reviewer
would try, each caught by a default-run test that recomputes one real step from the paper's formula."""
from mutations import Mutation

LORA, STAGES = "ocellus/nn/lora.py", "ocellus/train/stages.py"
RM, DPO, DISTILL = "ocellus/train/reward_model.py", "ocellus/train/dpo.py", "ocellus/train/distill.py"
GRPO, PPO, ROLLOUT = "ocellus/train/grpo.py", "ocellus/train/ppo.py", "ocellus/train/rollout.py"

T_LORA = "tests/unit/test_lora_scaling.py"
T_RM = "tests/unit/test_reward_model_step.py"
T_DPO = "tests/unit/test_dpo_step.py"
T_DISTILL = "tests/unit/test_distill_step.py"
T_GRPO = "tests/unit/test_grpo_step.py"
T_PPO = "tests/unit/test_ppo_step.py"

MUTATIONS = [
    # ---- SFT + LoRA ----------------------------------------------------------------------------
    Mutation(name="posttrain: lora scaling r / alpha instead of alpha / r", file=LORA,
             old="self.scaling = alpha / rank", new="self.scaling = rank / alpha", tests=[T_LORA]),
    Mutation(name="posttrain: lora merged weight drops the scaling", file=LORA,
             old="return self.weight + (self.lora_B @ self.lora_A) * self.scaling",
             new="return self.weight + (self.lora_B @ self.lora_A)", tests=[T_LORA]),
    Mutation(name="posttrain: lora B initialised random, not zero", file=LORA,
             old="self.lora_B = nn.Parameter(torch.zeros(", new="self.lora_B = nn.Parameter(torch.randn(",
             tests=[T_LORA]),
    Mutation(name="posttrain: lora base weight left trainable", file=LORA,
             old="self.weight.requires_grad_(False)", new="self.weight.requires_grad_(True)", tests=[T_LORA]),
    Mutation(name="posttrain: lora dropout on the adapter output, not its input", file=LORA,
             old="(self.dropout(x) @ self.lora_A.T @ self.lora_B.T)",
             new="self.dropout(x @ self.lora_A.T @ self.lora_B.T)", tests=[T_LORA]),
    Mutation(name="posttrain: stage lora mode trains the whole part", file=STAGES,
             old='module.requires_grad_(spec.mode == "full")', new='module.requires_grad_(spec.mode != "frozen")',
             tests=[T_LORA]),
    Mutation(name="posttrain: stage drops the recipe's lora alpha", file=STAGES,
             old="inject_lora(module, list(spec.targets), spec.rank, spec.alpha, spec.dropout)",
             new="inject_lora(module, list(spec.targets), spec.rank, dropout=spec.dropout)", tests=[T_LORA]),
    # ---- reward model --------------------------------------------------------------------------
    Mutation(name="posttrain: reward pooled one token before the end token", file=RM,
             old="last = completion_mask.sum(-1).long()", new="last = completion_mask.sum(-1).long() - 1",
             tests=[T_RM]),
    Mutation(name="posttrain: reward model chosen/rejected halves swapped", file=RM,
             old="chosen, rejected = r[:B], r[B:]", new="chosen, rejected = r[B:], r[:B]", tests=[T_RM]),
    Mutation(name="posttrain: bradley-terry margin sign", file=RM,
             old="-F.logsigmoid(chosen_rewards - rejected_rewards)",
             new="-F.logsigmoid(rejected_rewards - chosen_rewards)", tests=[T_RM, "tests/unit/test_reward_model.py"]),
    # ---- DPO ------------------------------------------------------------------------------------
    Mutation(name="posttrain: dpo reference log-probs from the policy", file=DPO,
             old="ref_logps = self.sequence_logps(self.reference, batch)",
             new="ref_logps = self.sequence_logps(self.policy, batch).detach()", tests=[T_DPO]),
    Mutation(name="posttrain: dpo beta dropped inside the sigmoid", file=DPO,
             old="-(1 - label_smoothing) * F.logsigmoid(beta * h)", new="-(1 - label_smoothing) * F.logsigmoid(h)",
             tests=[T_DPO]),
    Mutation(name="posttrain: token log-probs read the logits one position late", file=ROLLOUT,
             old="logits_to_keep=C + 1).logits[:, :-1]", new="logits_to_keep=C + 1).logits[:, 1:]",
             tests=[T_DPO]),
    Mutation(name="posttrain: token log-probs ignore the sampling temperature", file=ROLLOUT,
             old="logits = logits / temperature", new="logits = logits", tests=[T_GRPO]),
    # ---- GRPO -----------------------------------------------------------------------------------
    Mutation(name="posttrain: grpo baseline is the batch mean, not the group mean", file=GRPO,
             old="mean, std = grouped.mean(1, keepdim=True), grouped.std(1, keepdim=True)",
             new="mean, std = grouped.mean(), grouped.std(1, keepdim=True)", tests=[T_GRPO]),
    Mutation(name="posttrain: grpo std over the batch, not the group", file=GRPO,
             old="mean, std = grouped.mean(1, keepdim=True), grouped.std(1, keepdim=True)",
             new="mean, std = grouped.mean(1, keepdim=True), grouped.std()", tests=[T_GRPO]),
    Mutation(name="posttrain: grpo k3 kl with the log-ratio reversed", file=GRPO,
             old="d = ref_logp - logp", new="d = logp - ref_logp", tests=[T_GRPO]),
    Mutation(name="posttrain: grpo kl against the policy, not the reference", file=GRPO,
             old="ref = token_logprobs(self.reference, batch, cfg.temperature)",
             new="ref = token_logprobs(self.policy, batch, cfg.temperature)", tests=[T_GRPO]),
    Mutation(name="posttrain: grpo later iterations use the current policy as pi_old", file=GRPO,
             old="grpo_loss(logp, logp.detach() if old is None else old,", new="grpo_loss(logp, logp.detach(),",
             tests=[T_GRPO]),
    Mutation(name="posttrain: clipped surrogate takes the optimistic max", file=GRPO,
             old="return -torch.min(unclipped, clipped)", new="return -torch.max(unclipped, clipped)",
             tests=[T_GRPO, T_PPO]),
    Mutation(name="posttrain: grpo per-sequence mean divides by the padded length", file=GRPO,
             old="return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()",
             new="return ((per_token * mask).sum(-1) / mask.shape[-1]).mean()", tests=[T_GRPO]),
    # ---- PPO ------------------------------------------------------------------------------------
    Mutation(name="posttrain: ppo ratio clipped with the value clip range", file=PPO,
             old="clipped_surrogate(logp, old_logp, advantages, cfg.epsilon)",
             new="clipped_surrogate(logp, old_logp, advantages, cfg.value_epsilon)", tests=[T_PPO]),
    Mutation(name="posttrain: ppo clip range hard-coded at 0.2", file=PPO,
             old="clipped_surrogate(logp, old_logp, advantages, cfg.epsilon)",
             new="clipped_surrogate(logp, old_logp, advantages, 0.2)", tests=[T_PPO]),
    Mutation(name="posttrain: ppo kl penalty against the policy, not the reference", file=PPO,
             old="ref_logp = token_logprobs(self.reference, batch, cfg.temperature)",
             new="ref_logp = token_logprobs(self.policy, batch, cfg.temperature)", tests=[T_PPO]),
    Mutation(name="posttrain: ppo advantages not whitened", file=PPO,
             old="advantages = whiten(advantages, mask)", new="advantages = advantages * mask", tests=[T_PPO]),
    Mutation(name="posttrain: ppo whitening mean over padding too", file=PPO,
             old="mean = masked_mean(x, mask)", new="mean = x.mean()", tests=[T_PPO]),
    Mutation(name="posttrain: ppo score added on the last padded column", file=PPO,
             old="r[torch.arange(r.shape[0]), last] += scores", new="r[:, -1] += scores", tests=[T_PPO]),
    Mutation(name="posttrain: ppo gae without lambda", file=PPO,
             old="running = delta + gamma * lam * running", new="running = delta + gamma * running", tests=[T_PPO]),
    Mutation(name="posttrain: ppo value clip around the new value", file=PPO,
             old="clipped = old_values + torch.clamp(values - old_values",
             new="clipped = values + torch.clamp(values - old_values", tests=[T_PPO]),
    Mutation(name="posttrain: ppo value loss takes the optimistic min", file=PPO,
             old="masked_mean(torch.max((values - returns) ** 2", new="masked_mean(torch.min((values - returns) ** 2",
             tests=[T_PPO]),
    Mutation(name="posttrain: ppo critic reads the state after each token", file=RM,
             old="h = completion_hidden(self.backbone, batch)[:, :-1]",
             new="h = completion_hidden(self.backbone, batch)[:, 1:]", tests=[T_PPO]),
    # ---- distillation --------------------------------------------------------------------------
    Mutation(name="posttrain: distill kl direction reversed", file=DISTILL,
             old="F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)",
             new="F.kl_div(F.log_softmax(t / temperature, -1), F.log_softmax(s / temperature, -1)",
             tests=[T_DISTILL]),
    Mutation(name="posttrain: distill drops the T^2 factor", file=DISTILL,
             old='reduction="batchmean") * temperature ** 2', new='reduction="batchmean")', tests=[T_DISTILL]),
    Mutation(name="posttrain: distill alpha weights the hard term", file=DISTILL,
             old="return alpha * soft + (1 - alpha) * hard", new="return (1 - alpha) * soft + alpha * hard",
             tests=[T_DISTILL]),
    Mutation(name="posttrain: distill soft targets at temperature 1", file=DISTILL,
             old="F.log_softmax(t / temperature, -1), log_target=True", new="F.log_softmax(t, -1), log_target=True",
             tests=[T_DISTILL]),
]
