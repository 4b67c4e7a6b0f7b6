"""The parity suite's device switch: OCELLUS_DEVICE=cuda runs every parity test on the GPU.

Unset (the default) it does nothing: the tests run on CPU as they are written. With
OCELLUS_DEVICE=cuda each test runs with torch's default device set to that device, so the reference
model, ours (loaded onto the default device) and every input tensor the test makes live on the GPU,
and the code paths taken only on CUDA (e.g. nn/attention.attend's K/V-expanding GQA branch, CUDA SDPA
kernels) are compared with transformers. The tests seed `torch.Generator()`s, which must sit on the
same device as the tensors they fill, so a Generator made without a device is made on it too. TF32
is switched off so fp32 matmuls and convolutions stay fp32 and the tolerances mean what they say.
scripts/gpu_parity.sh runs the model parity files this way.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

# `from conftest import build_reference` in this folder finds this module (pytest keeps the conftest
# imported last under that name), so tests/conftest.py's reference builders are re-exported here.
_spec = importlib.util.spec_from_file_location("_ocellus_tests_conftest", Path(__file__).parents[1] / "conftest.py")
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
build_reference, save_reference = _root.build_reference, _root.save_reference

DEVICE = os.environ.get("OCELLUS_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def parity_device(monkeypatch):
    if DEVICE == "cpu":
        yield "cpu"
        return
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"OCELLUS_DEVICE={DEVICE} but CUDA is not available")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    generator = torch.Generator

    def on_device(device=None):
        return generator(device=device if device is not None else DEVICE)
    monkeypatch.setattr(torch, "Generator", on_device)
    previous = torch.get_default_device()
    torch.set_default_device(DEVICE)
    try:
        yield DEVICE
    finally:
        torch.set_default_device(previous)
