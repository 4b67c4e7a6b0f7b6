"""The compiled batch-1 GEMV (gemv.cpp): y = cat(W_i x) over row-major weights read where they are.

`gemv(x, weights, scales)` runs the C++ kernel on x [..., in] and weights [out_i, in] (float32, bfloat16, or
int8 codes with float32 per-row scales), all the matrices in one call (the q|k|v or gate|up of a layer with no
stacked copy of them), float32 sums, the output in x's dtype. Built on first use with
torch.utils.cpp_extension (-O3 -mavx2 -mfma, OpenMP through ATen's parallel_for) into torch's extension cache
(`$TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions), one directory per source text and flags, so a
build is reused by every later process (~40 s the first time on 2 cores). `kernel()` gives the built module or
None: no C++ compiler, a CPU without AVX2/FMA, or a failed build (logged once per process, then never retried
in it); `kernel(required=True)` raises ConfigError naming why instead (a user who asked for the kernel).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch

from ocellus.errors import ConfigError

HERE = Path(__file__).parent
SOURCES = ("gemv.cpp", "decode_step.cpp")    # one extension: the GEMV and the whole decode step (decode_step.cpp)
FILES = SOURCES + ("gemv_rows.h",)           # and the row kernels both include
CFLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
LOG = logging.getLogger(__name__)

_state: dict = {}        # "module": the built extension; "problem": why there is none (set once per process)


def unavailable_reason() -> str | None:
    """Why the kernel cannot be built here (no compiler, no AVX2), None when it can be tried."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"the GEMV kernel needs AVX2 and FMA; this CPU's capability is {torch.backends.cpu.get_cpu_capability()}"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} not on PATH) to build the GEMV kernel"
    return None


def build_directory() -> Path:
    """Where this source text and these flags build: torch's extension cache, one folder per hash of both."""
    from torch.utils.cpp_extension import get_default_build_root   # torch's own cache root
    text = b"".join((HERE / f).read_bytes() for f in FILES)
    digest = hashlib.sha256(text + " ".join(CFLAGS + LDFLAGS).encode()).hexdigest()[:16]
    return Path(get_default_build_root()) / f"ocellus_gemv_{digest}"


def _build():
    from torch.utils.cpp_extension import load       # imports setuptools: only when a build is wanted
    where = build_directory()
    if not (where / f"{where.name}.so").exists():
        LOG.info("building the GEMV kernel into %s (once per source version, ~40 s on 2 cores)", where)
    where.mkdir(parents=True, exist_ok=True)
    for f in FILES:                 # copies at a fixed path: a checkout elsewhere with the same text reuses the build
        text = (HERE / f).read_bytes()
        if not (where / f).exists() or (where / f).read_bytes() != text:
            (where / f).write_bytes(text)
    # copies: torch appends to the flag lists it is given (the hash above must see ours unchanged)
    return load(name=where.name, sources=[str(where / f) for f in SOURCES], extra_cflags=list(CFLAGS),
                extra_ldflags=list(LDFLAGS), build_directory=str(where), verbose=False)


def kernel(required: bool = False):
    """The built extension module (building it on first use), or None when it cannot be had here (see the module
    docstring); required=True raises ConfigError with the reason instead of None."""
    if "module" not in _state and "problem" not in _state:
        problem = unavailable_reason()
        if problem is None:
            try:
                _state["module"] = _build()
            except Exception as e:          # compiler, linker or ninja errors come as several types
                problem = f"the GEMV kernel failed to build ({type(e).__name__}: {str(e).strip()[-500:]})"
        if problem is not None:
            _state["problem"] = problem
            LOG.warning("%s; decoding keeps the ATen linears", problem)
    if _state.get("module") is None and required:
        raise ConfigError(_state["problem"])
    return _state.get("module")


def gemv(x: torch.Tensor, weights: list[torch.Tensor], scales: list[torch.Tensor] | None = None) -> torch.Tensor:
    """x [..., in] (float32 / bfloat16, CPU) -> [..., sum out_i] = cat(x @ W_i.T) (times scale_i for int8 codes),
    float32 sums, in x's dtype. weights: contiguous [out_i, in], one dtype; scales: float32 [out_i] per int8 matrix.
    Raises ConfigError when the kernel cannot be built here."""
    y = kernel(required=True).gemv(x.reshape(-1, x.shape[-1]), weights, scales or [])
    return y.view(*x.shape[:-1], y.shape[-1])
