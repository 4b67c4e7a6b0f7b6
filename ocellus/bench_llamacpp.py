"""llama.cpp as the decode benchmark's reference: `ocellus bench decode --vs llamacpp`.

The bench's Llama checkpoint is converted to GGUF (hub/gguf_export.py) once per file type and cached next
to it; llama.cpp runs it through `llama-cpp-python` ([llamacpp] extra: a source build, see
docs/BENCHMARKS.md) with the same thread count as torch. Each Ocellus row meets the GGUF of its precision:

    Ocellus fp32  <->  f32      Ocellus bf16  <->  bf16      Ocellus quantize="int8"  <->  q8_0

(int8: per-output-channel scales, bf16 activations; q8_0: one fp16 scale per 32 weights, activations
quantised to 8 bits too.) Decoding is greedy on the logits llama.cpp returns (argmax in Python, the same
rule as Ocellus' greedy `generate`), one token per llama_decode call, batch 1, ids in and ids out: the GGUF
has an id-only vocabulary, so nothing is tokenised.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ocellus.errors import ConfigError, InputError
from ocellus.hub.gguf_export import export_gguf

# Ocellus bench row -> GGUF file type of the same weights
GGUF_FOR = {"fp32": "f32", "bf16": "bf16", "int8": "q8_0"}
INSTALL = ("llama.cpp is the reference of --vs llamacpp and llama-cpp-python is not installed: "
           "pip install 'ocellus[llamacpp]' (a source build of llama.cpp: cmake and a C++ compiler; "
           "docs/BENCHMARKS.md)")


def gguf_for(checkpoint: Path, dname: str) -> Path:
    """The checkpoint as a GGUF of the file type matching Ocellus row `dname`, converted on first use."""
    if dname not in GGUF_FOR:
        raise ConfigError(f"no GGUF file type matches {dname!r}; llama.cpp rows exist for {list(GGUF_FOR)}")
    path = Path(checkpoint).with_name(f"{Path(checkpoint).name}-{GGUF_FOR[dname]}.gguf")
    return path if path.exists() else export_gguf(checkpoint, path, GGUF_FOR[dname])


class LlamaCpp:
    """What the bench drives of a llama_cpp.Llama (reset, eval, n_ctx) plus the last evaluated position's
    logits, read from the context: llama-cpp-python 0.3.x fills `Llama.scores` only with logits_all=True,
    which would also compute logits for every prompt position."""

    def __init__(self, llm, get_logits_ith):
        self.llm, self._logits_ith, self.n_vocab = llm, get_logits_ith, llm.n_vocab()

    def n_ctx(self) -> int:
        return self.llm.n_ctx()

    def reset(self) -> None:
        self.llm.reset()

    def eval(self, tokens) -> None:
        self.llm.eval(tokens)

    def last_logits(self) -> np.ndarray:
        """[V] float32, a view of llama.cpp's buffer (valid until the next eval)."""
        return np.ctypeslib.as_array(self._logits_ith(self.llm.ctx, -1), shape=(self.n_vocab,))


def load_llamacpp(gguf_path: Path, threads: int, n_ctx: int) -> LlamaCpp:
    """llama.cpp on gguf_path: `threads` for prefill and decode, context n_ctx, prompt in one batch."""
    try:
        import llama_cpp  # optional: the [llamacpp] extra, a source build
    except ImportError as e:
        raise ConfigError(INSTALL) from e
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    return LlamaCpp(llm, llama_cpp.llama_get_logits_ith)


def greedy(llm, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """ids [1, T] -> [1, T + new_tokens]: llama.cpp's greedy continuation (prefill in one call, then one
    token per call), every token generated (no end-of-sequence stop)."""
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise InputError(f"llama.cpp runs batch 1 here: ids must be [1, T], got {list(ids.shape)}")
    prompt = ids[0].tolist()
    if len(prompt) + new_tokens > llm.n_ctx():
        raise InputError(f"prompt {len(prompt)} + {new_tokens} new tokens exceed llama.cpp's context {llm.n_ctx()}")
    llm.reset()
    llm.eval(prompt)
    out = []
    for step in range(new_tokens):
        nxt = int(np.argmax(llm.last_logits()))
        out.append(nxt)
        if step + 1 < new_tokens:                            # the last token needs no forward pass
            llm.eval([nxt])
    return torch.tensor([prompt + out], dtype=ids.dtype)


def reference_runner(checkpoint: Path, dname: str, ids: torch.Tensor, threads: int, n_ctx: int):
    """fn(new_tokens) -> ids [1, T + new_tokens] on llama.cpp, for the bench's interleaved rounds."""
    llm = load_llamacpp(gguf_for(checkpoint, dname), threads, n_ctx)
    return lambda n: greedy(llm, ids, n)
