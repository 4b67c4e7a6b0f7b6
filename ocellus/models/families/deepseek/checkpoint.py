"""DeepseekV2ForCausalLM / DeepseekV3ForCausalLM checkpoints (the registry's Family): names equal transformers'
under Llama's outer prefixes (families/decoder's DECODER_KEYS); V3's multi-token-prediction layers are skipped by
index (models/text/deepseek.mtp_keys)."""
from __future__ import annotations

from ocellus.hub.families import Family
from ocellus.models.families.decoder.checkpoint import DECODER_KEYS, hf_config, tied_lm_head
from ocellus.models.text.deepseek import MODEL_TYPES, DeepseekConfig, DeepseekLM, mtp_keys

__all__ = ["MODEL_TYPES", "build", "family"]


def build(cfg: dict) -> DeepseekLM:
    return DeepseekLM(DeepseekConfig.from_hf(cfg))


def family(architecture: str | None = None) -> Family:
    """The hub Family of DeepseekV2ForCausalLM / DeepseekV3ForCausalLM checkpoints (one for both: the config's
    model_type picks the router)."""
    return Family(name="deepseek", model_class=DeepseekLM, build=build, keymap=DECODER_KEYS, hf_config=hf_config,
                  tied=tied_lm_head, checkpoint_only=mtp_keys)
