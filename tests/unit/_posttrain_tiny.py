"""Helpers for the post-training tests: a tiny random text decoder and prompt + completion batches for it
(the loss math does not need images; the image path is tested on the embedded tiny LLaVA)."""
import torch

from ocellus.train.rollout import join

VOCAB = 40


def tiny_decoder(seed: int = 0, layers: int = 2):
    from ocellus.hub.families import family_for_config
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 64, "eos_token_id": 1, "pad_token_id": 0, "tie_word_embeddings": False}
    torch.manual_seed(seed)
    return family_for_config(cfg).build(cfg)


def text_batch(prompts: list[list[int]], completions: list[list[int]]) -> dict:
    """Left-padded prompts + right-padded completions (rollout's layout), pad id 0."""
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    return join({"input_ids": ids, "attention_mask": mask}, completions, 0)
