"""LlamaForCausalLM / Qwen2ForCausalLM checkpoints: the key table, the builder (config.json -> DecoderLM) and
the config.json writer (the registry's Family). DECODER_KEYS is also DeepSeek's (families/deepseek/)."""
from __future__ import annotations

from ocellus.hub.families import Family
from ocellus.hub.keymap import KeyMap
from ocellus.models.text.decoder import DecoderConfig, DecoderLM

MODEL_TYPES = ("llama", "qwen2")

DECODER_KEYS = KeyMap(
    rules=(
        ("embed_tokens.weight", "model.embed_tokens.weight"),
        ("layers.{i}.{rest}", "model.layers.{i}.{rest}"),
        ("norm.weight", "model.norm.weight"),
        ("lm_head.weight", "lm_head.weight"),
    ),
    drop=(r"rotary_emb\.inv_freq$",),
)


def build(cfg: dict) -> DecoderLM:
    return DecoderLM(DecoderConfig.from_hf(cfg))


def hf_config(model) -> dict:
    """config.json of a decoder LM: its config's own mapping (DecoderConfig.to_hf, DeepseekConfig.to_hf)."""
    return model.config.to_hf()


def tied_lm_head(model) -> tuple[str, ...]:
    """A decoder that ties lm_head to the embeddings writes it once."""
    return ("lm_head.weight",) if model.config.tie_word_embeddings else ()


def family(architecture: str | None = None) -> Family:
    """The hub Family of LlamaForCausalLM / Qwen2ForCausalLM checkpoints; one for both architectures."""
    return Family(name="decoder", model_class=DecoderLM, build=build, keymap=DECODER_KEYS, hf_config=hf_config,
                  tied=tied_lm_head)
