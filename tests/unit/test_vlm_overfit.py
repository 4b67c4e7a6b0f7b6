"""Every vision-language family learns, and learns from the image.

Each family, composed as its recipe composes it (tests/unit/_overfit.py), trains through the project's
Trainer on ONE batch: the same question ("What colour is the shape?") over four pictures that differ only
in the shape's colour, each answered with its colour word. The text cannot tell the samples apart, so
getting all four right is only possible by reading the image. Then the images are rolled by one sample:
the answers must follow the images (and the loss against the old answers must rise a lot), which also
catches image features written into the wrong sample or position. Finally the parts that the stage trains
must have moved and the frozen ones must not.
"""
import pytest
import torch

from _overfit import COLOURS, FAMILIES, accuracy, encode, loss_of, train

STEPS, LR = 100, 3e-3
ROLLED = list(COLOURS)[1:] + list(COLOURS)[:1]     # sample b gets the picture of sample b+1

# module paths each family's stage must train / keep frozen (the bridge always trains)
TRAINS = {
    "llava": ["multi_modal_projector", "language_model"],
    "llava_next": ["multi_modal_projector", "packer", "language_model"],
    "blip2": ["qformer", "language_projection", "language_model"],
    "minigpt4": ["language_projection", "language_model"],
    "qwen_vl": ["multi_modal_projector", "language_model"],
    "internvl": ["multi_modal_projector", "language_model"],
    "qwen2_vl": ["visual", "merger", "language_model"],
    "qwen2_5_vl": ["visual", "merger", "language_model"],
    "flamingo": ["perceiver", "gated_cross_attn", "language_model"],
    "xgen_mm": ["packer", "language_model"],
}
FROZEN = {"minigpt4": ["vision_tower", "qformer"], "qwen2_vl": [], "qwen2_5_vl": []}


@pytest.fixture(scope="module")
def tok(tiny_vlm_parts):
    from _overfit import _tok
    return _tok(tiny_vlm_parts)


def _snapshot(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_overfits_answers_only_the_image_gives(family, tiny_vlm_parts, tok):
    torch.manual_seed(0)
    composed = FAMILIES[family](tiny_vlm_parts, tok)
    model = composed.model
    batch = encode(composed, tok, list(COLOURS))
    before = _snapshot(model)
    losses = train(composed, batch, STEPS, LR)
    print(f"\n{family}: loss {losses[0]:.3f} -> {losses[-1]:.4f} in {STEPS} steps")

    # learned: near-zero loss and every greedy answer (argmax at each answer position) right
    assert losses[0] > 3.0, "the untrained model already knows the answers: the test proves nothing"
    assert losses[-1] < 0.1, f"{family} did not overfit 4 samples: {losses[::10]}"
    assert accuracy(model, batch) == 1.0

    # from the image: with the pictures rolled, the answers follow the pictures, not the sample
    rolled = encode(composed, tok, ROLLED)                 # labels = the rolled pictures' colours
    against_old = encode(composed, tok, ROLLED, list(COLOURS))
    assert accuracy(model, rolled) == 1.0
    assert accuracy(model, rolled, expected=against_old) == 0.0
    assert loss_of(model, against_old) > 0.5 > 5 * loss_of(model, batch)   # mean over answer + end tokens

    # the stage trained what the recipe trains, and nothing frozen moved
    after = dict(model.named_parameters())
    frozen = FROZEN.get(family, ["vision_tower"])
    for name, p in after.items():
        top = name.split(".")[0]
        moved = not torch.equal(before[name], p.detach())
        if top in frozen:
            assert not moved and not p.requires_grad, f"{name} is frozen in {family}'s stage but trained"
        elif top in TRAINS[family]:
            assert p.requires_grad, f"{name} should train in {family}'s stage"
    for module in TRAINS[family]:
        moved = [n for n in after if n.split(".")[0] == module and not torch.equal(before[n], after[n].detach())]
        assert moved, f"{family}: nothing in {module} trained"
