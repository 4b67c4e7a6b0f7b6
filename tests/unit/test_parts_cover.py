"""A training stage addresses a model by its parts (train/stages.parts_of): every parameter must belong to exactly
one part, or a stage would leave it out of every optimizer group (silently never trained) or train it twice
over. Checked on every vision-language family as its recipe composes it (tests/unit/_overfit.py) and on the dual
encoders; and a new SigLIP's towers of different widths meet in one space."""
import pytest
import torch

from _overfit import FAMILIES
from contrastive_tiny import TEXT, VISION, tiny_dual_encoder
from ocellus.models.contrastive.clip import build_dual_encoder
from ocellus.train.stages import parts_of


@pytest.fixture(scope="module")
def tok(tiny_vlm_parts):
    from _overfit import _tok
    return _tok(tiny_vlm_parts)


def assert_parts_cover(model) -> None:
    owner: dict[int, str] = {}
    for name, part in parts_of(model).items():
        for p in part.parameters():
            assert id(p) not in owner, f"a parameter is in parts {owner[id(p)]!r} and {name!r}"
            owner[id(p)] = name
    missing = [n for n, p in model.named_parameters() if id(p) not in owner]
    assert not missing, f"parameters in no part (never trained by a stage): {missing}"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_vlm_parts_cover_every_parameter(family, tiny_vlm_parts, tok):
    assert_parts_cover(FAMILIES[family](tiny_vlm_parts, tok).model)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dual_encoder_parts_cover_every_parameter(kind):
    assert_parts_cover(tiny_dual_encoder(kind))


def test_new_siglip_text_head_lands_in_the_image_space():
    """SigLIP has no projections: a new one's text head maps the text width onto the image width, so towers of
    different widths still compare (CLIP projects both sides to projection_dim)."""
    torch.manual_seed(0)
    model = build_dual_encoder("siglip", VISION, {**TEXT, "hidden_size": 24, "num_attention_heads": 2})
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    out = model(input_ids=ids, pixel_values=torch.randn(2, 3, 16, 16), attention_mask=(ids > 0).long())
    assert out.text_embeds.shape == out.image_embeds.shape == (2, VISION["hidden_size"])
    assert out.logits_per_image.shape == (2, 2)
