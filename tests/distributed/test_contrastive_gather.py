"""Negatives span every process: with features all-gathered (gradient flowing back to each local
slice), 2 gloo processes under DDP give the same contrastive loss AND the same gradients as one
process holding the whole batch, for CLIP's InfoNCE and SigLIP's sigmoid loss, with duplicate ids."""
import sys
from pathlib import Path

import pytest
import torch
from _launch import launch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("contrastive_gather_run.py")


def _run(kind: str, nproc: int, out: Path) -> dict:
    proc, log = launch(SCRIPT, [kind, "none" if nproc == 1 else "ddp", str(out)], nproc)
    assert proc.returncode == 0, log
    return load_file(str(out))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_two_processes_match_one_loss_and_gradients(kind, tmp_path):
    one, two = _run(kind, 1, tmp_path / "one.safetensors"), _run(kind, 2, tmp_path / "two.safetensors")
    assert one.keys() == two.keys()
    torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-5, atol=1e-6)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert one["logit_scale"].abs().sum() > 0          # the scale is trained through the gathered logits


def test_local_negatives_only_would_differ():
    """What the gather buys: the mean of the two halves' losses (each half its own negatives, what
    DDP without the gather computes) is a different number from the global batch's loss."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from contrastive_tiny import tiny_dual_encoder
    model = tiny_dual_encoder("clip")
    g = torch.Generator().manual_seed(1)
    pixels, ids = torch.randn(8, 3, 16, 16, generator=g), torch.randint(3, 40, (8, 6), generator=g)
    ids[:, -1] = 1
    whole = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
    halves = [model(input_ids=ids[r], pixel_values=pixels[r], return_loss=True).loss for r in (slice(0, 4), slice(4, 8))]
    assert abs(whole.item() - (halves[0] + halves[1]).item() / 2) > 1e-3
