"""ALBEF's split of one BERT (Li et al. 2021, sec. 3.1): the text encoder is exactly its first text_layers
layers (self-attention and feed-forward, no image), the fusion encoder exactly the rest, each cross-attending
to the image states after self-attention. Written out here layer by layer and compared with text_states,
fuse and grounded_states, for padded rows; the ITC features read the [CLS] vectors."""
import pytest
import torch

from ocellus.models.contrastive.albef import build_albef
from test_albef import random_batch, tiny_config


@pytest.mark.parametrize("text_layers", [1, 2, 3])
def test_text_and_fusion_encoders_are_the_first_and_remaining_layers(text_layers):
    cfg = tiny_config()
    cfg["align_config"]["text_layers"] = text_layers                          # of the tiny BERT's 4
    torch.manual_seed(0)
    model = build_albef(cfg).eval()
    px, ids, mask = random_batch()
    bert = model.text_encoder
    keys = mask.bool()[:, None, None, :]                                      # padding never a key
    with torch.no_grad():
        image = model.visual_encoder(px).last_hidden_state                     # [B, S, Dv]
        x = bert.embeddings(ids)
        for layer in bert.layers[:text_layers]:
            x = layer.ffn(layer.attention(x, keys))
        text = x
        for layer in bert.layers[text_layers:]:
            x = layer.ffn(layer.crossattention(layer.attention(x, keys), None, kv=image))
        real = mask.bool()
        torch.testing.assert_close(model.text_states(ids, mask)[real], text[real])
        torch.testing.assert_close(model.fuse(text, mask, image)[real], x[real])
        torch.testing.assert_close(model.grounded_states(ids, mask, image)[real], x[real])


def test_itc_features_are_the_projected_cls_vectors():
    """g_w(w_cls) and g_v(v_cls): the text encoder's [CLS] state and the ViT's pooled [CLS], projected."""
    torch.manual_seed(0)
    model = build_albef(tiny_config()).eval()
    px, ids, mask = random_batch()
    with torch.no_grad():
        text = model.text_states(ids, mask)
        torch.testing.assert_close(model.get_text_features(ids, mask), model.text_proj(text[:, 0]))
        pooled = model.visual_encoder(px).pooler_output
        torch.testing.assert_close(model.get_image_features(px), model.vision_proj(pooled))
