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
                          "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[kind]
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
