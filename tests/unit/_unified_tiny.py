"""Helpers for the unified-model tests (test_emu3 / test_janus / test_showo): a tiny random VQ tokenizer
directory and a tiny `task: unified` recipe around it."""
import torch

from ocellus.models.generative.checkpoint import build, save_generator

VQ_SPEC = {"kind": "vqvae", "vq": {"in_channels": 3, "channels": 8, "channel_mults": [1, 2], "embed_dim": 4,
                                   "num_codes": 16, "groups": 4}, "class_names": [], "image_size": 16}


def tiny_recipe(tmp_path, model: dict, steps: int = 40, tasks=("t2i", "i2t"), stages=None) -> dict:
    torch.manual_seed(0)
    vq = save_generator(build(dict(VQ_SPEC)), tmp_path / "vq")
    train = {"batch_size": 16, "lr": 3e-3, "log_every": 10, "out_dir": str(tmp_path / "run")}
    train.update({"stages": stages} if stages else {"max_steps": steps})
    return {"task": "unified", "name": "tiny", "seed": 0, "data": {"image_size": 16, "n": 32, "colours": ["red", "blue"]},
            "model": {"tokenizer_from": str(vq), "tasks": list(tasks), "dim": 32, "num_layers": 1, "num_heads": 2,
                      **model},
            "train": train, "eval": {"measure": False}}
