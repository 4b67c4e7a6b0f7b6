"""A request to the batching engine (infer/batching.py) and each of its choices while it decodes.

`SamplingParams` are one request's sampling settings, checked like `GenerationConfig`'s; the engine reports
to the request's `sink` with `Delta` / `Finish` / `Failure` events. A `Sequence` is one choice of a request
in the running batch: its ids, its own `torch.Generator` (seeded like `generate(seed=)`, so its draws do not
depend on its neighbours), its incremental detokenizer, and its stop strings (infer/stop_text.py: OpenAI leaves
a stop string out of the answer, so text that could still grow into one is held back).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ocellus.errors import ConfigError, OcellusError
from ocellus.infer.generate import GenerationConfig
from ocellus.infer.sampling import choose, process_logits
from ocellus.infer.stop_text import StopText
from ocellus.infer.streaming import TextStreamDecoder

SAMPLING_EPS = 1e-5   # temperatures below this are greedy (vLLM's _SAMPLING_EPS)
NON_FINITE_LOGITS = "the model produced non-finite logits (NaN/inf) for this request"


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0       # <= 0: greedy
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False       # run to max_tokens (benchmarks; vLLM's extension of the same name)

    def __post_init__(self):
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        # the generation config's own checks (top_p range, top_k >= 0, ...) with its messages
        GenerationConfig(max_new_tokens=self.max_tokens, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                         repetition_penalty=self.repetition_penalty)

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    @property
    def plain_argmax(self) -> bool:
        return self.greedy and self.repetition_penalty in (None, 1.0)


# -- events sent to a request's sink --------------------------------------------------------------
@dataclass(frozen=True)
class Delta:
    choice: int
    text: str


@dataclass(frozen=True)
class Finish:
    choice: int
    reason: str              # "stop" (eos or a stop string), "length", "timeout"
    completion_tokens: int
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Failure:
    status: int              # the HTTP status a server should answer with
    message: str


class RowError(OcellusError):
    """One row could not pick its next token; its request fails with `status`, the batch goes on."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def failure_of(e: Exception) -> Failure:
    if isinstance(e, RowError):
        return Failure(e.status, str(e))
    return Failure(500, f"{type(e).__name__}: {e}")


@dataclass(eq=False)
class Request:
    """One prompt with n choices. input_ids [1, T]; prefill: extra model inputs (pixel_values, ...)."""
    input_ids: torch.Tensor
    params: SamplingParams
    sink: Callable[[object], None]
    prefill: dict = field(default_factory=dict)
    n: int = 1
    deadline: float | None = None   # time.monotonic() after which the request times out
    cancelled: bool = False
    done: int = 0                   # choices finished

    def cancel(self) -> None:
        """Thread-safe: the engine drops the request at its next token boundary."""
        self.cancelled = True

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])


class Sequence:
    """One choice of one request while it decodes: its tokens, sampler state and text."""

    def __init__(self, req: Request, choice: int, tokenizer, eos: tuple[int, ...]):
        self.req, self.choice = req, choice
        self.p = req.params
        self.ids: list[int] = req.input_ids[0].tolist()
        self.prompt_len = len(self.ids)
        self.eos = () if req.params.ignore_eos else eos
        self.gen = None
        if not self.p.greedy and self.p.seed is not None:  # n > 1: choice c draws from seed + c
            self.gen = torch.Generator().manual_seed(self.p.seed + choice)
        self.decoder = TextStreamDecoder(tokenizer, skip_special_tokens=True, prompt_ids=self.ids)
        self.cut = StopText(self.p.stop)   # the request's own stop strings (and the processor's: serve/app.py)

    @property
    def generated(self) -> int:
        return len(self.ids) - self.prompt_len

    def choose(self, scores: torch.Tensor) -> int:
        """scores [1, V] fp32 -> the next id, by this request's parameters. RowError when the logits are not
        finite (500) or this request's parameters turn them into NaN probabilities (400)."""
        p = self.p
        if not torch.isfinite(scores).all():
            raise RowError(500, NON_FINITE_LOGITS)
        scores = process_logits(scores, torch.tensor([self.ids]), do_sample=not p.greedy, temperature=p.temperature,
                                top_k=p.top_k, top_p=p.top_p, min_p=p.min_p, repetition_penalty_=p.repetition_penalty)
        if torch.isnan(scores).any() or (not p.greedy and not torch.isfinite(scores.softmax(-1)).all()):
            raise RowError(400, f"sampling overflowed float32 with this request's parameters (temperature="
                                f"{p.temperature:g}, repetition_penalty={p.repetition_penalty}): NaN probabilities")
        return int(choose(scores, not p.greedy, self.gen)[0])

    def push(self, token: int, max_len: int) -> str | None:
        """Append a token; emit its text. -> the finish reason, or None while it goes on."""
        self.ids.append(token)
        if token in self.eos:
            self._emit(self.decoder.flush(), final=True)
            return "stop"
        if self._emit(self.decoder.push([token])):
            return "stop"
        if self.generated >= self.p.max_tokens or len(self.ids) >= max_len:
            self._emit(self.decoder.flush(), final=True)
            return "length"
        return None

    def _emit(self, piece: str, final: bool = False) -> bool:
        """Send new text, never past a stop string (OpenAI leaves the stop string out). -> hit a stop."""
        text = self.cut.push(piece) + (self.cut.flush() if final else "")
        if text:
            self.req.sink(Delta(self.choice, text))
        return self.cut.stopped
