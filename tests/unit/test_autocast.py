"""train.precision=bf16 (train/trainer.py `autocast`): one Trainer step equals the same step written by hand
under torch.autocast (forward + loss in bf16 autocast, backward, clipping, fused AdamW on fp32 weights); the
weights, gradients and optimizer state stay fp32; a checkpoint saved under autocast resumes to the same run;
fp16 and unknown precisions are refused before anything trains."""
import copy
import shutil

import pytest
import torch

from ocellus.errors import ConfigError
from ocellus.hub.families import family_for_config
from ocellus.train.loader import BatchLoader
from ocellus.train.state import latest_checkpoint, read_checkpoint
from ocellus.train.trainer import TrainConfig, Trainer

VOCAB, T, BATCH = 96, 12, 4


def tiny_llama():
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB, "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 64}
    torch.manual_seed(0)
    return family_for_config(cfg).build(cfg)


def rows(n=16):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, VOCAB, (T,), generator=g)} for _ in range(n)]


def collate(batch):
    ids = torch.stack([r["input_ids"] for r in batch])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def trainer(model, out, **cfg):
    cfg = {**dict(max_steps=4, lr=3e-3, betas=(0.9, 0.95), clip_grad_norm=1.0, precision="bf16", progress=False,
                  out_dir=str(out)), **cfg}
    return Trainer(model, BatchLoader(rows(), BATCH, collate, shuffle=False), TrainConfig(**cfg))


def hand_step(model, batch, lr=3e-3, autocast=True):
    """The step as written in torch's AMP recipe, less the GradScaler bf16 does not need."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
    opt.step()
    return loss.item()


def test_a_bf16_step_equals_the_step_written_under_autocast(tmp_path):
    model = tiny_llama()
    by_hand, in_fp32 = copy.deepcopy(model), copy.deepcopy(model)
    batch = collate(rows()[:BATCH])
    tr = trainer(model, tmp_path)
    loss, _ = tr.train_step()
    hand_loss = hand_step(by_hand, batch)
    fp32_loss = hand_step(in_fp32, batch, autocast=False)
    assert loss == hand_loss
    assert abs(loss - fp32_loss) > 1e-6          # autocast really ran: bf16 matmuls move the loss
    ours, hand, fp32 = dict(model.named_parameters()), dict(by_hand.named_parameters()), dict(in_fp32.named_parameters())
    moved_by_bf16 = 0
    for name, p in ours.items():
        torch.testing.assert_close(p, hand[name], rtol=0, atol=1e-6, msg=name)
        moved_by_bf16 += not torch.equal(p, fp32[name])
    assert moved_by_bf16 > 0                     # ... and its gradients (so the update) differ from fp32's


def test_weights_gradients_and_optimizer_state_stay_fp32(tmp_path):
    model = tiny_llama()
    tr = trainer(model, tmp_path, grad_accum=2)
    seen = []
    hooks = [p.register_hook(lambda g: seen.append(g.dtype)) for p in model.parameters()]
    tr.train_step()
    for h in hooks:
        h.remove()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert set(seen) == {torch.float32}
    states = [v for s in tr.optimizer.state.values() for v in s.values() if v.dim() > 0]
    assert states and {v.dtype for v in states} == {torch.float32}


def test_a_checkpoint_saved_under_autocast_resumes_the_same_run(tmp_path):
    """Run A: 2 steps, a checkpoint after each. Run B: resumes from A's step 1 and takes step 2: B's weights
    equal A's (fp32 tensors saved, AdamW moments and data position restored)."""
    a = trainer(tiny_llama(), tmp_path / "a", max_steps=2, save_every=1)
    a.fit()
    tensors, optim, state = read_checkpoint(latest_checkpoint(tmp_path / "a" / "checkpoints"))
    assert state["step"] == 2 and {t.dtype for t in tensors.values()} == {torch.float32}
    shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step-000001")
    b = trainer(tiny_llama(), tmp_path / "b", max_steps=2, resume=True)
    assert b.maybe_resume() and b.step == 1
    b.train_step()
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("precision, message", [
    ("fp16", "train.precision fp16 \\(model on cpu\\) is not supported: fp16 autocast needs loss scaling"),
    ("fp8", "train.precision must be one of fp32, bf16, fp16, got 'fp8'"),
])
def test_fp16_and_unknown_precisions_are_refused_up_front(precision, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        trainer(tiny_llama(), tmp_path, precision=precision)
