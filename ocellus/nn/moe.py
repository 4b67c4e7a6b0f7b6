"""Mixture of experts with shared experts (DeepSeekMoE: Dai et al. 2024, arXiv 2401.06066; used by
DeepSeek-V2, arXiv 2405.04434, and DeepSeek-V3, arXiv 2412.19437).

Each token goes through the always-on shared experts and through the top-k of E small routed experts:
    y = shared(x) + sum_{e in topk(x)} w_e(x) * expert_e(x)
The router scores every routed expert from x and picks k of them. Its variants, as transformers'
DeepseekV2TopkRouter / DeepseekV3TopkRouter compute them:
  greedy               (V2)  s = softmax(x W_g^T); the k largest s; w = s
  group_limited_greedy (V2)  the same, but only inside the topk_group of n_group expert groups whose
                             best score is largest (the rest scored 0): limits the devices a token visits
  noaux_tc             (V3)  s = sigmoid(x W_g^T); the choice reads s + b, b = e_score_correction_bias (a
                             per-expert bias trained outside the loss to balance load, "auxiliary-loss-free");
                             groups ranked by the sum of their top-2 biased scores; w = s (unbiased) of the
                             chosen experts
then, optionally (norm_topk_prob), w /= sum(w), and w *= routed_scaling_factor.
The router runs in fp32 whatever the model dtype (as transformers does): a near tie decided in bf16
would pick different experts.

Compute is a plain loop over experts: each expert runs on the tokens routed to it and its output,
times that token's weight, is added at their rows. No grouped GEMM or dispatch kernels: readable, and
only the chosen experts' work is done.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError, positive_ints
from ocellus.nn.mlp import SwiGLU

SCORING = ("softmax", "sigmoid")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")


class TopKRouter(nn.Module):
    """x [N, dim] -> (weights [N, k] fp32, experts [N, k] long). Parameter names as transformers':
    `weight` [E, dim], and for noaux_tc the buffer `e_score_correction_bias` [E] (kept fp32)."""

    def __init__(self, dim: int, num_experts: int, top_k: int, scoring: str = "softmax",
                 topk_method: str = "greedy", n_group: int | None = None, topk_group: int | None = None,
                 norm_topk_prob: bool = False, routed_scaling_factor: float = 1.0):
        super().__init__()
        positive_ints({"dim": dim, "n_routed_experts": num_experts, "num_experts_per_tok": top_k},
                      ("dim", "n_routed_experts", "num_experts_per_tok"), "MoE router {}")
        if scoring not in SCORING:
            raise ConfigError(f"MoE scoring function {scoring!r} unknown; supported: {', '.join(SCORING)}")
        if topk_method not in TOPK_METHODS:
            raise ConfigError(f"MoE topk_method {topk_method!r} unknown; supported: {', '.join(TOPK_METHODS)}")
        eligible = num_experts
        if topk_method != "greedy":
            positive_ints({"n_group": n_group, "topk_group": topk_group}, ("n_group", "topk_group"),
                          f"MoE {topk_method} {{}}")
            if num_experts % n_group:
                raise ConfigError(f"n_routed_experts={num_experts} must split into n_group={n_group} equal groups")
            if topk_group > n_group:
                raise ConfigError(f"topk_group={topk_group} exceeds n_group={n_group}")
            if topk_method == "noaux_tc" and num_experts // n_group < 2:
                raise ConfigError(f"noaux_tc ranks a group by its top-2 experts: {num_experts} experts in "
                                  f"{n_group} groups leaves {num_experts // n_group} per group")
            eligible = topk_group * (num_experts // n_group)
        if top_k > eligible:
            raise ConfigError(f"num_experts_per_tok={top_k} exceeds the {eligible} experts a token may reach")
        self.num_experts, self.top_k, self.scoring, self.topk_method = num_experts, top_k, scoring, topk_method
        self.n_group, self.topk_group = n_group, topk_group
        self.norm_topk_prob, self.routed_scaling_factor = norm_topk_prob, float(routed_scaling_factor)
        self.weight = nn.Parameter(torch.empty(num_experts, dim))
        nn.init.normal_(self.weight, std=0.02)
        if topk_method == "noaux_tc":
            self.register_buffer("e_score_correction_bias", torch.zeros(num_experts, dtype=torch.float32))

    def _group_mask(self, scores: torch.Tensor, group_score) -> torch.Tensor:
        """scores [N, E] -> bool [N, E]: True for the experts of each token's topk_group best groups."""
        N = scores.shape[0]
        grouped = scores.view(N, self.n_group, self.num_experts // self.n_group)    # [N, G, E/G]
        best_groups = group_score(grouped).topk(self.topk_group, dim=-1).indices    # [N, topk_group]
        keep = torch.zeros(N, self.n_group, dtype=torch.bool, device=scores.device)
        keep.scatter_(1, best_groups, True)                                         # [N, G]
        return keep[:, :, None].expand_as(grouped).reshape(N, self.num_experts)     # [N, E]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(x.float(), self.weight.float())                           # [N, E]
        scores = logits.softmax(dim=-1) if self.scoring == "softmax" else logits.sigmoid()
        if self.topk_method == "greedy":
            weights, experts = scores.topk(self.top_k, dim=-1)                      # [N, k], [N, k]
        elif self.topk_method == "group_limited_greedy":
            keep = self._group_mask(scores, lambda g: g.max(dim=-1).values)
            weights, experts = scores.masked_fill(~keep, 0.0).topk(self.top_k, dim=-1)
        else:  # noaux_tc: the bias steers which experts are chosen, never how much they weigh
            choice = scores + self.e_score_correction_bias.float()                  # [N, E]
            keep = self._group_mask(choice, lambda g: g.topk(2, dim=-1).values.sum(dim=-1))
            experts = choice.masked_fill(~keep, float("-inf")).topk(self.top_k, dim=-1).indices
            weights = scores.gather(1, experts)                                     # [N, k]
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.routed_scaling_factor, experts


class MoE(nn.Module):
    """x [B, T, dim] -> [B, T, dim]: shared experts (one SwiGLU of n_shared * hidden, as transformers fuses
    them) plus the router's top-k routed SwiGLU experts of width `hidden`, weighted."""

    def __init__(self, dim: int, hidden: int, num_experts: int, n_shared_experts: int, router: TopKRouter,
                 act: str = "silu", shared_bias: bool = False):
        super().__init__()
        positive_ints({"moe_intermediate_size": hidden, "n_shared_experts": n_shared_experts},
                      ("moe_intermediate_size", "n_shared_experts"), "MoE {}")
        if router.num_experts != num_experts:
            raise ConfigError(f"router scores {router.num_experts} experts but the layer has {num_experts}")
        self.gate = router
        self.experts = nn.ModuleList(SwiGLU(dim, hidden, act=act) for _ in range(num_experts))
        self.shared_experts = SwiGLU(dim, hidden * n_shared_experts, bias=shared_bias, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise InputError(f"MoE input must be [..., dim], got shape {tuple(x.shape)}")
        flat = x.reshape(-1, x.shape[-1])                                           # [N, D]
        weights, experts = self.gate(flat)                                          # [N, k], [N, k]
        routed = torch.zeros_like(flat)                                             # [N, D]
        for e, expert in enumerate(self.experts):
            token, slot = (experts == e).nonzero(as_tuple=True)                     # [n_e], [n_e]
            if token.numel() == 0:
                continue
            y = expert(flat[token]) * weights[token, slot, None]                    # [n_e, D] (fp32 weight)
            routed.index_add_(0, token, y.to(routed.dtype))
        return routed.view_as(x) + self.shared_experts(x)
