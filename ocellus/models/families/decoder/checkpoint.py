"""LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM / Qwen3ForCausalLM checkpoints (one layout: Qwen3 adds
each layer's self_attn.q_norm / k_norm, which the layer rule carries): the key table, the builder (config.json -> DecoderLM) and
the config.json writer (the registry's Family). DECODER_KEYS is also DeepSeek's (families/deepseek/);
decoder_rules, its rules under any prefixes, every composite checkpoint's (a VLM's language_model)."""
from __future__ import annotations

from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.text.decoder import DecoderConfig, DecoderLM

MODEL_TYPES = ("llama", "qwen2", "mistral", "qwen3")


def decoder_rules(ours: str, model: str, head: str) -> tuple[tuple[str, str], ...]:
    """(ours, theirs) rules for a Llama-family decoder under prefix `ours`, its body under `model` and its
    lm_head named `head` in the checkpoint."""
    return ((f"{ours}embed_tokens.weight", f"{model}embed_tokens.weight"),
            (f"{ours}layers.{{i}}.{{rest}}", f"{model}layers.{{i}}.{{rest}}"),
            (f"{ours}norm.weight", f"{model}norm.weight"),
            (f"{ours}lm_head.weight", head))


# a bare decoder: no outer prefix, the body under model., lm_head at the top
DECODER_KEYS = KeyMap(rules=decoder_rules("", "model.", "lm_head.weight"), drop=(r"rotary_emb\.inv_freq$",))


def build(cfg: dict) -> DecoderLM:
    return DecoderLM(DecoderConfig.from_hf(cfg))


def hf_config(model) -> dict:
    """config.json of a decoder LM: its config's own mapping (DecoderConfig.to_hf, DeepseekConfig.to_hf)."""
    return model.config.to_hf()


def tied_lm_head(model) -> tuple[str, ...]:
    """A decoder that ties lm_head to the embeddings writes it once."""
    return ("lm_head.weight",) if model.config.tie_word_embeddings else ()


def family(architecture: str | None = None) -> Family:
    """The hub Family of Llama / Qwen2 / Mistral / Qwen3 ForCausalLM checkpoints; one for every architecture."""
    return Family(name="decoder", model_class=DecoderLM, build=build, keymap=DECODER_KEYS, hf_config=hf_config,
                  tied=tied_lm_head)
