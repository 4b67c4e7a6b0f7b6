"""Shared fixtures: tiny random reference checkpoints built with transformers (the oracle).

Nothing is downloaded: each checkpoint is a random init saved to a temp dir once per session.
eos ids are set inside the tiny vocabulary (or None) so generation comparisons stop alike.
"""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=None,
            pad_token_id=0, tie_word_embeddings=False)


def build_reference(kind: str, **overrides):
    """A random transformers causal LM in fp32 with eval() set."""
    import transformers as tf
    cfg_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
                          "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
                          "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
                          "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM)}[kind]
    kw = {**TINY, **overrides}
    torch.manual_seed(0)
    cfg = cfg_cls(**kw)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # biases start at zero: randomise them so bias handling is tested
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_reference(model, path):
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return save_reference(build_reference("llama"), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    return save_reference(build_reference("qwen2", tie_word_embeddings=True), tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="session")
def tiny_vlm_parts(tmp_path_factory):
    """Pretrained parts for vision-language recipes, made by the LLaVA recipes' first two steps at toy
    scale: `<dir>/text/model` (a 2-layer 64-wide decoder, context 512, + the shapes BPE tokenizer with <image>) and
    `<dir>/vit/model` (a 2-layer 48 px patch-6 CLIP ViT). Recipes point vision_from / llm_from /
    tokenizer.from at them, as the real ones do at runs/llava_tiny_shapes."""
    from pathlib import Path

    from ocellus.train.tasks import load_recipe, run_recipe
    root = Path(__file__).resolve().parents[1] / "recipes" / "llava_tiny_shapes"
    out = tmp_path_factory.mktemp("vlm_parts")
    small = ["train.progress=false", "train.log_every=2", "train.warmup_steps=2", "train.batch_size=16"]
    run_recipe(load_recipe(root / "text_pretrain.yaml", small + [
        f"train.out_dir={out / 'text'}", "train.max_steps=10", "data.n=256", "tokenizer.train_bpe.corpus_n=300",
        "model.config.num_hidden_layers=2", "model.config.hidden_size=64", "model.config.intermediate_size=128",
        "model.config.max_position_embeddings=512"]))   # room for 8-shot prompts (tests/unit/test_flamingo_recipe.py)
    run_recipe(load_recipe(root / "vit_pretrain.yaml", small + [
        f"train.out_dir={out / 'vit'}", "train.max_steps=10", "data.n=256", "model.config.num_hidden_layers=2",
        "model.config.patch_size=6"]))   # 8x8 patches: the token counts the family tests are written for
    return out


@pytest.fixture(scope="session")
def qwen2_towers(tmp_path_factory):
    """The shipped Qwen2-VL / Qwen2.5-VL ViT recipes (recipes/qwen2*_vl_tiny_shapes/vit.yaml) for 2 steps:
    `<dir>/<variant>/model`, the tower each family's train.yaml names as vision_from (its vision_config)."""
    from pathlib import Path

    from ocellus.train.tasks import load_recipe, run_recipe
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    out = tmp_path_factory.mktemp("qwen2_towers")
    for variant in ("qwen2_vl", "qwen2_5_vl"):
        run_recipe(load_recipe(recipes / f"{variant}_tiny_shapes" / "vit.yaml", [
            "train.progress=false", "train.log_every=1", "train.warmup_steps=1", "train.max_steps=2",
            "train.batch_size=4", "data.n=8", f"train.out_dir={out / variant}"]))
    return out


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny models (use: pytestmark = pytest.mark.usefixtures("one_thread")):
    their many small matmuls gain nothing from more, and on a shared 2-core machine extra threads only spin
    against other processes (a GRPO step measured 1.5 s on one thread, 40 s on two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
