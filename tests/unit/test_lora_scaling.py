"""LoRA (Hu et al. 2021, eq. 3): h = W x + b + (alpha / r) B A x, written out by hand on the same tensors;
dropout only on the adapter path and only in training; merged weights = the unmerged forward; B starts at
zero; only A and B get gradients; and one SFT Trainer step with a LoRA stage equals a hand AdamW step on the
loss of the base model with W replaced by W + (alpha / r) B A."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ocellus.nn.lora import LoRALinear, inject_lora, merge_lora, merged_state_dict
from _posttrain_tiny import VOCAB, text_batch, tiny_decoder

pytestmark = pytest.mark.usefixtures("one_thread")

RANK, ALPHA = 4, 12.0     # alpha / r = 3: neither 1, nor r / alpha, nor alpha, nor alpha * r


def _adapted(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(6, 5)
    lora = LoRALinear(base, rank=RANK, alpha=ALPHA, dropout=dropout)
    with torch.no_grad():
        lora.lora_B.normal_()               # B = 0 at init; give it values so the update shows
    return base, lora


def test_forward_is_w_x_plus_alpha_over_r_b_a_x():
    base, lora = _adapted()
    x = torch.randn(3, 2, 6)                                                  # [B, T, in]
    W, b, A, B = base.weight, base.bias, lora.lora_A, lora.lora_B             # [5, 6], [5], [r, 6], [5, r]
    expected = x @ W.T + b + (ALPHA / RANK) * (x @ A.T @ B.T)                 # eq. 3 with the scaling alpha / r
    torch.testing.assert_close(lora(x), expected, atol=1e-5, rtol=1e-5)
    assert lora.scaling == 3.0


def test_b_starts_at_zero_so_the_adapted_layer_is_the_base_layer():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    lora = LoRALinear(base, rank=RANK, alpha=ALPHA)
    assert torch.count_nonzero(lora.lora_B) == 0 and torch.count_nonzero(lora.lora_A) > 0   # A random, B zero
    x = torch.randn(4, 6)
    torch.testing.assert_close(lora(x), base(x))


def test_dropout_acts_on_the_adapter_input_in_training_and_is_off_in_eval():
    base, lora = _adapted(dropout=0.5)
    x = torch.randn(64, 6)
    W, b, A, B = base.weight, base.bias, lora.lora_A, lora.lora_B
    expected = x @ W.T + b + (ALPHA / RANK) * (x @ A.T @ B.T)
    lora.eval()
    torch.testing.assert_close(lora(x), expected, atol=1e-5, rtol=1e-5)     # eval: deterministic, no dropout
    lora.train()
    torch.manual_seed(1)
    out = lora(x)
    torch.manual_seed(1)
    keep = F.dropout(torch.ones_like(x), 0.5, training=True)                 # the same mask, scaled by 1 / (1 - p)
    torch.testing.assert_close(out, x @ W.T + b + (ALPHA / RANK) * ((x * keep) @ A.T @ B.T), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, expected)


def test_merged_weight_equals_the_unmerged_forward():
    base, lora = _adapted()
    W0 = base.weight.detach().clone()
    x = torch.randn(4, 6)
    unmerged = lora(x)
    torch.testing.assert_close(lora.merged_weight(), W0 + 3.0 * lora.lora_B @ lora.lora_A)
    model = nn.Sequential(lora)
    state = merged_state_dict(model)
    assert set(state) == {"0.weight", "0.bias"}
    torch.testing.assert_close(state["0.weight"], W0 + 3.0 * lora.lora_B.detach() @ lora.lora_A.detach())
    merge_lora(model)
    assert type(model[0]) is nn.Linear
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=1e-5)


def test_only_a_and_b_get_gradients():
    model = tiny_decoder()
    hits = inject_lora(model, [r"layers\.\d+\.self_attn\.(q|v)_proj"], rank=RANK, alpha=ALPHA)
    assert len(hits) == 4
    ids = torch.randint(2, VOCAB, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
        elif ".self_attn.q_proj." in name or ".self_attn.v_proj." in name:
            assert not p.requires_grad and p.grad is None, name          # the wrapped W and b stay frozen
    # B = 0: dL/dA = scaling * B^T (...) = 0 on the first step; dL/dB is not
    lora = model.layers[0].self_attn.q_proj
    assert lora.lora_A.grad.abs().max() == 0 and lora.lora_B.grad.abs().max() > 0


def test_one_sft_trainer_step_with_lora_is_a_hand_adamw_step(tmp_path):
    """Trainer + stage {llm: lora}: the adapters move by AdamW's first step on the gradient of the SFT loss
    of the BASE model whose q/v weights are W + (alpha / r) B A (computed here with functional_call)."""
    from ocellus.train.loader import BatchLoader
    from ocellus.train.trainer import TrainConfig, Trainer
    base = tiny_decoder()
    model = copy.deepcopy(base)
    batch = text_batch([[5, 6, 7], [8, 9]], [[20, 21, 1], [22, 1]])
    labels = batch["input_ids"].clone()
    labels[:, :-3] = -100
    labels[:, -3:][batch["completion_mask"] == 0] = -100                    # assistant tokens only
    rows = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "position_ids": batch["position_ids"], "labels": labels}
    loader = BatchLoader([rows], 1, lambda r: r[0], seed=0)
    lr, wd = 1e-2, 0.1
    cfg = TrainConfig(max_steps=1, lr=lr, weight_decay=wd, clip_grad_norm=None, out_dir=str(tmp_path), progress=False,
                      stage={"llm": {"mode": "lora", "rank": RANK, "alpha": ALPHA,
                                     "targets": [r"layers\.\d+\.self_attn\.(q|v)_proj"]}})
    trainer = Trainer(model, loader, cfg)
    adapters = {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}    # path -> adapter
    A0 = {k: m.lora_A.detach().clone().requires_grad_(True) for k, m in adapters.items()}
    B0 = {k: m.lora_B.detach().clone().requires_grad_(True) for k, m in adapters.items()}
    trainer.train_step()

    # by hand: the base model with W_eff = W + (alpha / r) B A, the same batch, the mean token CE
    weights = {f"{k}.weight": base.get_submodule(k).weight.detach() + (ALPHA / RANK) * B0[k] @ A0[k] for k in adapters}
    logits = functional_call(base, weights, (), rows | {"labels": None}).logits                   # [B, T, V]
    keep = labels[:, 1:] != -100
    loss = F.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])
    grads = torch.autograd.grad(loss, [*A0.values(), *B0.values()])
    eps = 1e-8
    for (k, a0), ga, gb in zip(A0.items(), grads[:len(A0)], grads[len(A0):]):
        for p0, g, p in ((a0, ga, adapters[k].lora_A), (B0[k], gb, adapters[k].lora_B)):
            # AdamW step 1: m_hat = g, v_hat = g^2 -> p - lr * g / (|g| + eps) - lr * wd * p (A, B are matrices: decayed)
            expected = p0.detach() * (1 - lr * wd) - lr * g / (g.abs() + eps)
            torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
