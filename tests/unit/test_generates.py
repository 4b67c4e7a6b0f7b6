"""A composite model generates through its decoder (models/generates.py): the engine reads eos / pad from the
model's config, which attach_decoder makes the decoder's unless the model is given one."""
from dataclasses import replace

import torch
from torch import nn

from ocellus.models.text.decoder import DecoderConfig, DecoderLM
from ocellus.models.vlm import VLM

CFG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32, "hidden_size": 16,
       "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}


def _vlm(decoder: DecoderLM, config=None) -> VLM:
    return VLM(nn.Identity(), nn.Identity(), decoder, image_token_id=31, config=config).eval()


def test_a_composite_stops_at_its_decoders_eos():
    torch.manual_seed(0)
    decoder = DecoderLM(DecoderConfig.from_hf(CFG)).eval()
    ids = torch.tensor([[1, 2, 3]])
    free = _vlm(decoder).generate(ids, max_new_tokens=4)                   # no eos: all 4 tokens
    assert free.shape == (1, 7)
    first = int(free[0, 3])
    decoder.config = replace(decoder.config, eos_token_id=(first,))
    model = _vlm(decoder)
    assert model.config is decoder.config
    assert model.generate(ids, max_new_tokens=4).tolist() == [[1, 2, 3, first]]  # stopped at the decoder's eos
    given = replace(decoder.config, eos_token_id=())
    assert _vlm(decoder, given).config is given                             # VLM(config=...) wins
