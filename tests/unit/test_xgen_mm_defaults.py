"""A config.json without vision_tokenizer_config builds xGen-MM's vision tokenizer as Salesforce's
PerceiverResampler defaults it (xgen-mm-phi3-mini: depth 6, 128 latents per view, 16 heads of 96, ff_mult 4);
fields given replace only themselves."""
from ocellus.models.families.xgen_mm import modeling as xgen_mm

SALESFORCE = {"depth": 6, "num_latents": 128, "heads": 16, "head_dim": 96, "ff_mult": 4}


def test_vision_tokenizer_defaults_are_salesforces():
    assert xgen_mm.sampler_config(None) == SALESFORCE
    assert xgen_mm.sampler_config({"depth": 2}) == {**SALESFORCE, "depth": 2}
    cfg = {"vision_config": {"model_type": "clip_vision_model", "image_size": 16, "patch_size": 8, "hidden_size": 16,
                             "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
           "text_config": {"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
                           "num_hidden_layers": 1, "num_attention_heads": 2},
           "image_token_index": 3, "image_grid_pinpoints": [[16, 32]]}
    perceiver = xgen_mm.build_xgen_mm(cfg).packer.perceiver.config
    assert {k: getattr(perceiver, k) for k in SALESFORCE} == SALESFORCE and perceiver.dim == 16
