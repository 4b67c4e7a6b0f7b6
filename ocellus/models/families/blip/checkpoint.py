"""BLIP checkpoints, Ocellus' own format (the registry's "blip"): ALBEF's (families/albef/) layout, the pretraining
model with its momentum state, as LAVIS saves it; the decoder's modules shared with the encoder written once."""
from __future__ import annotations

from ocellus.hub.families import OWN_NAMES, Family
from ocellus.models.contrastive.blip import BLIP, build_blip
from ocellus.models.families.albef.checkpoint import align_hf_config, shared_keys

MODEL_TYPE = "ocellus_blip"


def family(architecture: str | None = None) -> Family:
    """The Family of OcellusBLIP checkpoints."""
    return Family(name="blip", model_class=BLIP, build=build_blip, keymap=OWN_NAMES,
                  hf_config=lambda m: align_hf_config(m, "OcellusBLIP", "ocellus_blip", m.text_encoder),
                  tied=shared_keys)
