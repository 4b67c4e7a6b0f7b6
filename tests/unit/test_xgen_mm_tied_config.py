"""xGen-MM's config.json says the head is tied to the embeddings (its top-level tie_word_embeddings, which
transformers reads to tie the head on load) exactly when the checkpoint has no head of its own, as the text config
says: an untied head written out and a config claiming it tied would have transformers overwrite the head with
the embeddings."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import ocellus
from tests.unit.test_xgen_mm import _compose

HEAD = "vlm.lang_model.lm_head.weight"


@pytest.mark.parametrize("tied", [True, False])
def test_top_level_tie_word_embeddings_matches_the_checkpoint(tiny_vlm_parts, tmp_path, tied):
    model, tok = _compose(tiny_vlm_parts)
    lm = model.language_model
    assert lm.config.tie_word_embeddings                     # the tiny text model is tied: untie a copy
    if not tied:
        lm.lm_head.weight = torch.nn.Parameter(lm.embed_tokens.weight.detach() * 2)
        lm.config = dataclasses.replace(lm.config, tie_word_embeddings=False)
    ocellus.save(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert (HEAD in load_file(tmp_path / "model.safetensors")) is not tied
    assert cfg["tie_word_embeddings"] is tied
    assert cfg["text_config"].get("tie_word_embeddings", False) is tied
    again = ocellus.load(tmp_path)
    assert torch.equal(again.language_model.lm_head.weight, lm.lm_head.weight)
