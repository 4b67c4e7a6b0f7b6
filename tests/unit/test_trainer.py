"""The training loop: stages freeze what they say, the loss falls, resume is bitwise exact,
a NaN stops the run and keeps the last good checkpoint, LoRA trains and merges."""
import json

import pytest
import torch

import ocellus
from ocellus.models.families.llava.modeling import build_llava
from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.nn.lora import LoRALinear, merge_lora
from ocellus.nn.rope import RopeConfig
from ocellus.train.loader import BatchLoader
from ocellus.train.stages import apply_stage
from ocellus.train.trainer import TrainConfig, Trainer, TrainingError, make_adamw

V = 40


def tiny_decoder(seed=0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                        rope=RopeConfig(head_dim=8, max_position_embeddings=64), max_position_embeddings=64)
    return DecoderLM(cfg)


def tiny_llava(seed=0):
    torch.manual_seed(seed)
    return build_llava({
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                          "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
        "text_config": {"model_type": "llama", "vocab_size": V, "hidden_size": 32, "intermediate_size": 64,
                        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                        "max_position_embeddings": 64},
        "image_token_index": V - 1})


def counting_data(n=64, T=12, seed=0):
    """Sequences that count upwards mod V: learnable, so the loss must fall."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, V - 1, (n,), generator=g)
    return [{"input_ids": (s + torch.arange(T)) % (V - 1)} for s in starts]


def collate(rows):
    ids = torch.stack([r["input_ids"] for r in rows])
    out = {"input_ids": ids, "labels": ids.masked_fill(ids == V - 1, -100)}
    if "pixel_values" in rows[0]:
        out["pixel_values"] = torch.stack([r["pixel_values"] for r in rows])
    return out


def image_data(n=16):
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        ids = torch.cat([torch.full((4,), V - 1), torch.randint(0, V - 1, (6,), generator=g)])  # 4 patches of 8x8
        rows.append({"input_ids": ids, "pixel_values": torch.randn(3, 16, 16, generator=g)})
    return rows


def test_loss_falls(tmp_path):
    model = tiny_decoder()
    hist = Trainer(model, BatchLoader(counting_data(), 8, collate), TrainConfig(
        max_steps=40, lr=3e-3, out_dir=str(tmp_path), progress=False, log_every=5)).fit()
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10, 15, 20, 25, 30, 35, 40] and "tokens_per_s" in lines[0]


def test_stage_freezes_parts_no_grad_and_not_in_optimizer(tmp_path):
    model = tiny_llava()
    data = image_data()
    stage = {"vision": "frozen", "connector": "full", "llm": "frozen"}
    trainer = Trainer(model, BatchLoader(data, 4, collate), TrainConfig(
        max_steps=1, out_dir=str(tmp_path), progress=False, stage=stage))
    counts = trainer.report.counts
    assert counts["vision"][0] == 0 and counts["llm"][0] == 0
    assert counts["connector"][0] == counts["connector"][1] > 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.fit()
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        is_connector = name.startswith("multi_modal_projector.")
        assert (id(p) in in_opt) == is_connector, name
        if not is_connector:
            assert p.grad is None and torch.equal(p, before[name]), name
    assert not torch.equal(model.multi_modal_projector.linear_1.weight, before["multi_modal_projector.linear_1.weight"])


def test_no_weight_decay_on_norms_and_biases(tmp_path):
    trainer = Trainer(tiny_llava(), BatchLoader(image_data(), 4, collate), TrainConfig(
        max_steps=1, weight_decay=0.1, out_dir=str(tmp_path), progress=False,
        stage={"vision": "full", "connector": {"mode": "full", "lr": 1e-2}, "llm": "full"}))
    for g in trainer.optimizer.param_groups:
        assert all(p.dim() >= 2 for p in g["params"]) == (g["weight_decay"] == 0.1), g["name"]
        assert g["lr"] == (1e-2 if g["name"].startswith("connector") else 1e-3)


def test_resume_is_bitwise_identical(tmp_path):
    def trainer(out, resume=False, seed=0):
        return Trainer(tiny_decoder(seed), BatchLoader(counting_data(), 8, collate, seed=3), TrainConfig(
            max_steps=12, lr=3e-3, warmup_steps=3, out_dir=str(out), progress=False, resume=resume,
            save_every=4, save_trainable_only=False, log_every=1))

    full = trainer(tmp_path / "a").fit()
    crashing = trainer(tmp_path / "b")
    step = crashing.train_step

    def crash_in_step_10():
        if crashing.step == 9:
            raise KeyboardInterrupt("power cut")
        return step()
    crashing.train_step = crash_in_step_10
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()                              # checkpoint at 8, step 9 logged, crash in 10
    resumed = trainer(tmp_path / "b", resume=True, seed=99).fit()   # another init: all must come from the checkpoint
    assert [h["loss"] for h in resumed] == [h["loss"] for h in full]
    logged = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 13))             # step 9's stale line was replaced, not duplicated


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = tiny_decoder()
    trainer = Trainer(model, BatchLoader(counting_data(), 8, collate), TrainConfig(
        max_steps=10, out_dir=str(tmp_path), progress=False, save_every=2))
    calls = {"n": 0}
    original = model.forward

    def poisoned(*a, **k):
        calls["n"] += 1
        out = original(*a, **k)
        if calls["n"] == 5:
            out.loss = out.loss * float("nan")
        return out
    model.forward = poisoned
    with pytest.raises(TrainingError, match="at step 5"):
        trainer.fit()
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-000004"


def test_lora_trains_only_adapters_inside_its_part_and_merges(tmp_path):
    model = tiny_llava()
    report = apply_stage(model, {"llm": {"mode": "lora", "rank": 4, "targets": [r"layers\.\d+\.self_attn\.(q|v)_proj"]}})
    assert report.lora_paths["llm"] == [f"layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qv"]
    assert not any(isinstance(m, LoRALinear) for m in model.vision_tower.modules())   # never the vision tower
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.randint(0, V - 1, (2, 8))
    with torch.no_grad():
        before = model(input_ids=ids).logits                   # B = 0: identical to the base model
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B, std=0.1)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        assert not torch.allclose(adapted, before)
        ocellus.save(model, tmp_path / "merged")                # save folds the adapters in
        merge_lora(model)
        torch.testing.assert_close(model(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ocellus.load(tmp_path / "merged")(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_adamw_is_fused_on_plain_cpu_parameters_and_matches_the_loop():
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    fused = make_adamw([{"params": weights[:1]}, {"params": weights[1:], "weight_decay": 0.0}], cfg)
    loop = torch.optim.AdamW([{"params": copies[:1]}, {"params": copies[1:], "weight_decay": 0.0}], lr=1e-2,
                             betas=cfg.betas, weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(3):
        for params, opt in ((weights, fused), (copies, loop)):
            sum((p ** 2).sum() for p in params).backward()
            opt.step()
            opt.zero_grad()
    for w, c in zip(weights, copies):
        torch.testing.assert_close(w, c, rtol=1e-6, atol=1e-6)
