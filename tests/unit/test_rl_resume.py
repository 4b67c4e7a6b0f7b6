"""GRPO and PPO run under the Trainer (train/step_objective.py), so they checkpoint and resume as SFT does.

Each method's recipe entry point (`grpo.run` / `ppo.run`) on the embedded tiny LLaVA, weakened as the shipped
recipes start (so a group's answers differ and GRPO has an advantage to follow), N = 2 steps (on the
cosine, so their learning rates differ), a checkpoint every step: run A goes straight through; run B
is killed in the middle of writing its last checkpoint (after the model file, before the optimizer's), which
must leave `latest` naming step N/2, complete and readable; run C resumes B from another torch seed (so nothing
may come from a fresh init) and runs the last N/2 steps. C must end bitwise where A ends: the same trained
tensors (the policy, PPO's critic and value head), the same optimizer state, the same logged losses and rewards
for every step (B's stale last line dropped). What has to survive for that: policy + optimizer + schedule, the
step (a rollout's sampling seed derives from it), torch's RNG (GRPO trains a LoRA with dropout here), the prompt
loader's position, the critic, and a reference re-derived from the start checkpoint, not from the resumed policy."""
import json

import pytest
import torch
from safetensors.torch import load_file

from ocellus.train import grpo, ppo, state
from ocellus.train.state import latest_checkpoint, read_checkpoint
from ocellus.train.trainer import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

N = 2
METHODS = {
    "grpo": (grpo, {"num_generations": 4, "beta": 0.04},
             {"vision": "frozen", "connector": "full", "llm": {"mode": "lora", "rank": 4, "dropout": 0.2}}),
    "ppo": (ppo, {"ppo_epochs": 1, "kl_coef": 0.1},
            {"vision": "frozen", "connector": "full", "llm": "full"}),
}


def _run(method: str, out, resume: bool = False, seed: int = 0):
    module, options, stage = METHODS[method]
    recipe = {"name": method, "task": method, "seed": 0, "model": {"from": "default", "weaken": {"noise": 0.5}},
              "data": {"source": "shapes", "kind": "qa", "n": 16, "seed": 23, "image_size": 48,
                       "qa_weights": {"count": 1}},
              "method": {"rewards": ["count"], "max_new_tokens": 2, **options},
              "train": {"batch_size": 2 if method == "ppo" else 1}, "eval": {"n": 1}}
    cfg = TrainConfig(max_steps=N, lr=3e-3, warmup_steps=0, save_every=1, log_every=1, progress=False,
                      out_dir=str(out), resume=resume, stage=stage)
    torch.manual_seed(seed)                  # what run_posttrain does before a method's run
    out.mkdir(parents=True, exist_ok=True)
    return module.run(recipe, cfg, out)


def _logged(out) -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in lines]   # the one timing


def _final(out) -> tuple[dict, dict]:
    path = latest_checkpoint(out / "checkpoints")
    return load_file(str(path / "model.safetensors")), load_file(str(path / "optimizer.safetensors"))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_run_killed_mid_save_resumes_to_the_uninterrupted_result(method, tmp_path, monkeypatch):
    _run(method, tmp_path / "a")

    real_save_file = state.save_file

    def dying_save_file(tensors, path):
        if f"step-{N:06d}" in path and path.endswith("optimizer.safetensors"):
            raise KeyboardInterrupt("killed while writing the last checkpoint")
        return real_save_file(tensors, path)
    monkeypatch.setattr(state, "save_file", dying_save_file)
    with pytest.raises(KeyboardInterrupt):
        _run(method, tmp_path / "b")
    monkeypatch.setattr(state, "save_file", real_save_file)
    latest = latest_checkpoint(tmp_path / "b" / "checkpoints")
    assert latest.name == f"step-{N // 2:06d}" and read_checkpoint(latest)[2]["step"] == N // 2   # the previous one
    assert [r["step"] for r in _logged(tmp_path / "b")] == list(range(1, N + 1))       # step N ran, unsaved

    _run(method, tmp_path / "b", resume=True, seed=99)
    a, b = _logged(tmp_path / "a"), _logged(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, N + 1))       # the stale last line replaced, not repeated
    assert b == a                                                # losses, rewards, kl, lr, grad norms: bitwise
    assert all({"reward", "kl", "grad_norm"} <= set(r) for r in a) and a[0]["lr"] > a[-1]["lr"]
    assert all(r["grad_norm"] > 0 for r in a)                    # every step moved the policy: nothing vacuous
    assert [json.loads(x) for x in (tmp_path / "b" / "posttrain.jsonl").read_text().splitlines()] == \
        [json.loads(x) for x in (tmp_path / "a" / "posttrain.jsonl").read_text().splitlines()]
    (model_a, optim_a), (model_b, optim_b) = _final(tmp_path / "a"), _final(tmp_path / "b")
    if method == "ppo":                                          # the value head is trained and checkpointed
        assert {"critic.score.weight", "critic.score.bias"} <= set(model_a)
        groups = read_checkpoint(latest_checkpoint(tmp_path / "a" / "checkpoints"))[2]["optimizer"]["param_groups"]
        assert {"critic.head.decay", "critic.head.no_decay", "critic.llm.decay", "llm.decay"} <= \
            {g["name"] for g in groups}
    else:
        assert any("lora_A" in k for k in model_a)
    assert set(model_b) == set(model_a) and set(optim_b) == set(optim_a)
    for k in model_a:
        assert torch.equal(model_a[k], model_b[k]), k
    for k in optim_a:
        assert torch.equal(optim_a[k], optim_b[k]), k
