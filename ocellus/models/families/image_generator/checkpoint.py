"""Image-generator checkpoints (the registry's Family): config.json is the build spec with model_type
ocellus_image_generator and no architectures, model.safetensors the model's own names. The spec -> model
builder is models/generative/checkpoint.build (looked up when called: a test that patches it reaches loads
too); save_generator / load_generator there are thin wrappers over the same strict path."""
from __future__ import annotations

from torch import nn

from ocellus.hub.families import OWN_NAMES, Family
from ocellus.models.generative import checkpoint as generators
from ocellus.models.generative.ar_image import ARImage
from ocellus.models.generative.latent_diffusion import DiffusionModel
from ocellus.models.generative.maskgit import MaskGIT
from ocellus.models.generative.text_conditioning import TextDiffusionModel
from ocellus.models.generative.vq import VQVAE

MODEL_TYPE = generators.MODEL_TYPE


def build_from_config(cfg: dict) -> nn.Module:
    """config.json (a build spec + model_type) -> the generator."""
    return generators.build({k: v for k, v in cfg.items() if k != "model_type"})


def hf_config(model: nn.Module) -> dict:
    """The config.json of a built generator: its spec under the format's model_type."""
    return {"model_type": MODEL_TYPE, **model.spec}


def family(architecture: str | None = None) -> Family:
    """ocellus.load / ocellus.save of an image generator (any generator class; SEED's codec saves in this format
    through its family_name)."""
    return Family(name="image_generator", model_class=(VQVAE, DiffusionModel, TextDiffusionModel, MaskGIT, ARImage),
                  build=build_from_config, keymap=OWN_NAMES, hf_config=hf_config, config_dtype=False)
