"""Run by tests/distributed/test_contrastive_gather.py, alone or under torchrun: one training step of a
tiny CLIP or SigLIP dual encoder (DDP when several processes) on a fixed global batch of 8 pairs with
duplicate ids, each process taking its contiguous slice; rank 0 writes the loss and every gradient."""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from contrastive_tiny import tiny_dual_encoder  # noqa: E402

from ocellus.train.distributed import setup, teardown, wrap  # noqa: E402


def main(kind: str, strategy: str, out: str) -> None:
    info = setup(strategy)
    model = tiny_dual_encoder(kind, seed=0)
    model.train()
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(8, 3, 16, 16, generator=g)
    ids = torch.randint(3, 40, (8, 6), generator=g)
    ids[:, -1] = 1                                           # EOS
    pair_ids = torch.tensor([0, 1, 2, 0, 3, 4, 2, 5])        # pairs (0, 3) and (2, 6) share captions
    n = 8 // info.world_size
    rows = slice(info.rank * n, (info.rank + 1) * n)
    wrapped = wrap(model, info)
    loss = wrapped(input_ids=ids[rows], pixel_values=pixels[rows], ids=pair_ids[rows], return_loss=True).loss
    loss.backward()                                          # DDP averages the gradients over processes
    if info.is_main:
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
        save_file({"loss": loss.detach().reshape(1), **grads}, str(Path(out)))
    teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
