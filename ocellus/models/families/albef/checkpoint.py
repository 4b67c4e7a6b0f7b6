"""ALBEF checkpoints, Ocellus' own format (the registry's "albef"; no transformers class exists): config.json =
{vision_config, text_config (every BertConfig field), align_config}, the pretraining model's own tensor names
(momentum copies and queues included, as LAVIS saves them). align_hf_config and shared_keys serve BLIP's
format too (families/blip/)."""
from __future__ import annotations

from dataclasses import asdict, fields

from torch import nn

from ocellus.hub.families import OWN_NAMES, Family
from ocellus.hub.safetensors_io import tied_aliases
from ocellus.models.contrastive.albef import ALBEF, build_albef
from ocellus.models.text.bert import Bert, BertConfig

MODEL_TYPE = "ocellus_albef"


def bert_config_dict(c: BertConfig) -> dict:
    return {f.name: list(v) if isinstance(v := getattr(c, f.name), tuple) else v for f in fields(BertConfig)
            if f.name != "hf"}


def align_hf_config(model, architecture: str, model_type: str, bert: Bert) -> dict:
    return {"architectures": [architecture], "model_type": model_type,
            "vision_config": model.visual_encoder.config.to_hf(), "text_config": bert_config_dict(bert.config),
            "align_config": asdict(model.config)}


def shared_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict keys whose tensor is another, earlier key's (the MLM/LM head tied to the word
    embeddings, BLIP's decoder modules shared with the encoder): written once, filled by the first."""
    return tuple(tied_aliases(model.state_dict(keep_vars=True)))


def family(architecture: str | None = None) -> Family:
    """The Family of OcellusALBEF checkpoints."""
    return Family(name="albef", model_class=ALBEF, build=build_albef, keymap=OWN_NAMES,
                  hf_config=lambda m: align_hf_config(m, "OcellusALBEF", "ocellus_albef", m.text_encoder),
                  tied=shared_keys)
