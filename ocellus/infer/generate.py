"""The generation engine: greedy / sampled decoding and beam search over a static KV cache.

`generate` returns ids like transformers' `generate` ([B, T + new], finished rows padded);
`stream` yields text deltas for one prompt (used by chat and serve). `decode_steps` is the one
KV-cached decode loop: its `choose_token(step, logits) -> ids` hook replaces the sampling step for
callers whose choice spans rows or depends on the step (the unified models' classifier-free guidance
over cond/uncond row pairs and image-layout constraints, ocellus/models/unified/__init__.py).

The model contract (DecoderLM, and later the VLMs) is small:
  model(input_ids, attention_mask, position_ids, cache, logits_to_keep=1, **prefill_kwargs).logits
  model.new_cache(batch, max_len), model.max_context, model.config.eos_token_id / pad_token_id
Prompts are left-padded; positions follow transformers' generate: cumsum(mask) - 1, pads at 1.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Iterator

import torch

from ocellus.errors import ConfigError, InputError
from ocellus.infer.sampling import choose, process_logits
from ocellus.infer.beam import beam_search
from ocellus.infer.generation_config import checkpoint_defaults
from ocellus.infer.prepack import prepare_decode
from ocellus.infer.stop_text import require_tokenizer, StopTokens


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 20
    max_length: int | None = None     # prompt + new tokens, as transformers reads it; max_new_tokens wins over it
    do_sample: bool = False
    temperature: float = 1.0          # <= 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None     # no n-gram of this size twice in a row's ids (prompt included)
    min_new_tokens: int = 0                     # eos is not chosen before this many tokens
    eos_token_id: tuple[int, ...] | None = None   # None: generation_config.json's, without one config.json's
    pad_token_id: int | None = None               # None: likewise, else the first eos
    stop_strings: tuple[str, ...] = ()            # needs a tokenizer
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False            # True, False (heuristic) or "never", as transformers
    seed: int | None = None
    prepack: bool = True              # CPU: decode with oneDNN-prepacked fused weights (infer/prepack.py)
    gemv: bool | None = None          # batch 1 on CPU: the compiled GEMV (infer/gemv_decode.py); None where it builds

    def __post_init__(self):
        # lazily, in order: a value of the wrong type (a generation_config.json string) fails its own check,
        # never a comparison in another one
        checks = [
            (lambda: _is_int(self.max_new_tokens) and self.max_new_tokens >= 0, "max_new_tokens must be an int >= 0"),
            (lambda: self.max_length is None or (_is_int(self.max_length) and self.max_length > 0),
             "max_length must be an int > 0 (prompt + new tokens)"),
            (lambda: isinstance(self.do_sample, bool), "do_sample must be true or false"),
            (lambda: _is_number(self.temperature), "temperature must be a number (<= 0: greedy)"),
            (lambda: self.top_k is None or (_is_int(self.top_k) and self.top_k >= 0), "top_k must be an int >= 0"),
            (lambda: self.top_p is None or (_is_number(self.top_p) and 0 < self.top_p <= 1), "top_p must be in (0, 1]"),
            (lambda: self.min_p is None or (_is_number(self.min_p) and 0 <= self.min_p <= 1), "min_p must be in [0, 1]"),
            (lambda: self.repetition_penalty is None or (_is_number(self.repetition_penalty)
                                                         and self.repetition_penalty > 0),
             "repetition_penalty must be > 0"),
            (lambda: self.no_repeat_ngram_size is None or (_is_int(self.no_repeat_ngram_size)
                                                           and self.no_repeat_ngram_size >= 0),
             "no_repeat_ngram_size must be an int >= 0"),
            (lambda: _is_int(self.min_new_tokens) and self.min_new_tokens >= 0, "min_new_tokens must be an int >= 0"),
            (lambda: self.eos_token_id is None or all(map(_is_int, self.eos_token_id)),
             "eos_token_id must be an int or a list of ints"),
            (lambda: self.pad_token_id is None or _is_int(self.pad_token_id), "pad_token_id must be an int"),
            (lambda: all(isinstance(t, str) and t for t in self.stop_strings), "stop_strings must be non-empty strings"),
            (lambda: _is_number(self.length_penalty), "length_penalty must be a number"),
            (lambda: self.seed is None or _is_int(self.seed), "seed must be an int"),
            (lambda: _is_int(self.num_beams) and self.num_beams >= 1, "num_beams must be an int >= 1"),
            (lambda: not (self.num_beams > 1 and self.do_sample),
             "beam sampling (num_beams > 1 with do_sample) is not implemented"),
            (lambda: self.early_stopping in (True, False, "never"), "early_stopping must be True, False or 'never'"),
        ]
        for ok, msg in checks:
            if not ok():
                raise ConfigError(f"generation: {msg}")

    @classmethod
    def from_kwargs(cls, **kw) -> "GenerationConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise ConfigError(f"unknown generation options {unknown}; known: {sorted(names)}")
        for k in ("eos_token_id", "stop_strings"):   # one id / string, or several
            value = kw.get(k)
            if value is not None:
                kw[k] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        return cls(**kw)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature <= 0

    @property
    def constrains(self) -> bool:
        """Whether greedy decoding and beam search process the scores too (repetition penalty, n-grams, min length)."""
        return self.repetition_penalty not in (None, 1.0) or bool(self.no_repeat_ngram_size) or self.min_new_tokens > 0

    def banned(self, eos: torch.Tensor, new_tokens: int) -> torch.Tensor | None:
        """The ids no row may choose after `new_tokens` generated ones: eos before min_new_tokens."""
        return eos if new_tokens < self.min_new_tokens else None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def resolve_config(model, kwargs: dict) -> GenerationConfig:
    """Pops kwargs' GenerationConfig fields -> the settings: those over the checkpoint's generation_config.json
    (infer/generation_config.py), then eos / pad from the model's config where still unset."""
    gen_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in GenerationConfig.__dataclass_fields__}
    defaults = checkpoint_defaults(model, GenerationConfig.__dataclass_fields__)
    if defaults.get("do_sample") and "do_sample" not in gen_kw and _is_int(gen_kw.get("num_beams")) \
            and gen_kw["num_beams"] > 1:   # say where the sampling comes from: the caller asked for beams only
        raise ConfigError(f"generation: the checkpoint's generation_config.json sets do_sample=true and beam sampling "
                          f"(num_beams={gen_kw['num_beams']} with do_sample) is not implemented; pass "
                          f"do_sample=False for beam search")
    settings = {**defaults, **gen_kw}
    if settings.get("max_new_tokens") is not None:   # given by the caller or the file, it wins over max_length
        settings.pop("max_length", None)
    return _resolve_special(model, GenerationConfig.from_kwargs(**settings))


def fit_max_length(cfg: GenerationConfig, input_ids) -> GenerationConfig:
    """cfg with max_length (a cap on prompt + new tokens) turned into this prompt's max_new_tokens, as transformers'
    generate reads it; InputError where the prompt alone reaches it. A malformed input_ids is left to prepare_prompt."""
    if cfg.max_length is None or not isinstance(input_ids, torch.Tensor) or input_ids.dim() == 0:
        return cfg
    T = input_ids.shape[-1]
    if T >= cfg.max_length:
        raise InputError(f"prompt of {T} tokens reaches generation max_length={cfg.max_length} (prompt + new tokens, "
                         f"from generation_config.json or the max_length argument): pass max_new_tokens instead")
    return replace(cfg, max_new_tokens=cfg.max_length - T, max_length=None)


def _resolve_special(model, cfg: GenerationConfig) -> GenerationConfig:
    # transformers' generate reads eos / pad from generation_config.json alone when the checkpoint has one
    # (config.json's are its defaults only when there is none): an eos the file leaves out stops nothing
    config = model.config if getattr(model, "generation_defaults", None) is None else None
    eos = cfg.eos_token_id
    if eos is None:
        eos = tuple(getattr(config, "eos_token_id", ()) or ())
    pad = cfg.pad_token_id
    if pad is None:
        pad = getattr(config, "pad_token_id", None)
    if pad is None and eos:
        pad = eos[0]
    return replace(cfg, eos_token_id=eos, pad_token_id=pad)


@dataclass
class Prompt:
    input_ids: torch.Tensor            # [B, T]
    attention_mask: torch.Tensor | None  # [B, T], None when nothing is padded
    position_ids: torch.Tensor         # [B, T]


def prepare_prompt(model, input_ids, attention_mask, max_new_tokens: int) -> Prompt:
    if not isinstance(input_ids, torch.Tensor):
        raise InputError(f"input_ids must be a tensor, got {type(input_ids).__name__}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise InputError(f"input_ids must be an integer [batch, seq] tensor, got {input_ids.dtype} {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise InputError("input_ids is empty: generation needs at least one prompt token")
    input_ids = input_ids.long()
    B, T = input_ids.shape
    if T + max_new_tokens > model.max_context:
        raise InputError(f"prompt of {T} tokens + max_new_tokens={max_new_tokens} exceeds the model's context "
                         f"of {model.max_context} tokens")
    if attention_mask is None or bool(attention_mask.all()):
        pos = torch.arange(T, device=input_ids.device).expand(B, T)
        return Prompt(input_ids, None, pos)
    if attention_mask.shape != input_ids.shape:
        raise InputError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}")
    mask = attention_mask.long()
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise InputError("attention_mask has padding after real tokens: generation needs left padding "
                         "(tokenizer padding_side='left')")
    if bool((mask.sum(-1) == 0).any()):
        raise InputError(f"rows {mask.sum(-1).eq(0).nonzero().flatten().tolist()} of attention_mask are all padding")
    return Prompt(input_ids, mask, left_padded_positions(mask))


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left padding [B, T] -> position ids as transformers' generate: cumsum(mask) - 1, pads at 1
    (a pad's position is never read: no real token attends a pad key)."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


@torch.inference_mode()
def decode_steps(model, prompt: Prompt, cfg: GenerationConfig, tokenizer=None,
                 choose_token: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                 **prefill_kwargs) -> Iterator[torch.Tensor]:
    """Greedy/sampled decoding. Yields the next ids [B] step by step (finished rows get pad).
    choose_token(step, logits [B, V] float) -> ids [B]: chooses each step's tokens instead of cfg's
    logits processing and sampling (eos, stop strings and padding of finished rows still apply).
    A row ends at the token whose text completes one of cfg.stop_strings, that token yielded (transformers'
    StopStringCriteria keeps it too); the text is matched as `stream` matches it (infer/stop_text.StopTokens)."""
    B, T = prompt.input_ids.shape
    if cfg.max_new_tokens == 0:
        return
    device = prompt.input_ids.device
    gen = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    eos = torch.tensor(cfg.eos_token_id or (), dtype=torch.long, device=device)
    require_tokenizer(cfg.stop_strings, tokenizer)
    stops = [StopTokens(tokenizer, cfg.stop_strings) for _ in range(B)] if cfg.stop_strings else None  # one a row
    sample = not cfg.greedy
    processing = sample or cfg.constrains
    cache = model.new_cache(B, T + cfg.max_new_tokens)
    mask = None
    if prompt.attention_mask is not None:  # grows by one real token per step
        mask = torch.ones(B, T + cfg.max_new_tokens, dtype=torch.long, device=device)
        mask[:, :T] = prompt.attention_mask
    seqs = torch.empty(B, T + cfg.max_new_tokens, dtype=torch.long, device=device)
    seqs[:, :T] = prompt.input_ids
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    can_finish = bool(eos.numel()) or stops is not None  # else skip the per-step pad fill and sync
    pos = prompt.position_ids[:, -1:]                                               # [B, 1]
    logits = model(input_ids=prompt.input_ids, attention_mask=prompt.attention_mask,
                   position_ids=prompt.position_ids, cache=cache, logits_to_keep=1, **prefill_kwargs).logits
    for step in range(cfg.max_new_tokens):
        scores = logits[:, -1].float()                                              # [B, V]
        if choose_token is not None:
            nxt = choose_token(step, scores)                                        # [B]
        else:
            if processing:
                scores = process_logits(scores, seqs[:, :T + step], do_sample=sample, temperature=cfg.temperature,
                                        top_k=cfg.top_k, top_p=cfg.top_p, min_p=cfg.min_p,
                                        repetition_penalty_=cfg.repetition_penalty,
                                        no_repeat_ngram_size=cfg.no_repeat_ngram_size, banned=cfg.banned(eos, step),
                                        padding=None if mask is None else mask[:, :T + step] == 0)
            nxt = choose(scores, sample, gen)                                       # [B]
        if can_finish and cfg.pad_token_id is not None:
            nxt = nxt.masked_fill(finished, cfg.pad_token_id)
        seqs[:, T + step] = nxt
        yield nxt
        if eos.numel():
            finished |= torch.isin(nxt, eos)
        if stops is not None:   # each running row reads its new token's text
            for row, token, running in zip(stops, nxt.tolist(), (~finished).tolist()):
                if running:
                    row.push(token)
            finished |= torch.tensor([row.stopped for row in stops], device=device)
        if step + 1 == cfg.max_new_tokens or (can_finish and bool(finished.all())):
            return
        pos = pos + 1
        logits = model(input_ids=nxt[:, None], attention_mask=None if mask is None else mask[:, :T + step + 1],
                       position_ids=pos, cache=cache, logits_to_keep=1).logits


def generate(model, input_ids, attention_mask=None, *, tokenizer=None, **kwargs) -> torch.Tensor:
    """-> [B, T + n] ids: the prompt followed by what was generated (transformers' layout).
    kwargs: the GenerationConfig fields, plus model inputs used at prefill (e.g. pixel_values).
    stop_strings (with tokenizer=...): greedy / sampled rows end at the token that completes one, kept in the ids
    as transformers keeps it (its text matched as `stream` matches it); beam search cuts its ids before one."""
    cfg = fit_max_length(resolve_config(model, kwargs), input_ids)
    prompt = prepare_prompt(model, input_ids, attention_mask, cfg.max_new_tokens)
    prepare_decode(model, prompt.input_ids.shape[0] * cfg.num_beams, cfg.prepack, cfg.gemv)
    if cfg.num_beams > 1:
        return beam_search(model, prompt, cfg, tokenizer=tokenizer, **kwargs)
    steps = list(decode_steps(model, prompt, cfg, tokenizer=tokenizer, **kwargs))
    if not steps:
        return prompt.input_ids
    return torch.cat([prompt.input_ids, torch.stack(steps, dim=1)], dim=1)


def models_generate(model):
    """The model's own generate where it has one (a VLM's refuses settings it cannot serve: beams over
    Qwen2-VL's packed patches, over a Flamingo row of several images), else this engine's, on the model."""
    own = getattr(model, "generate", None)
    return own if own is not None else (lambda input_ids, attention_mask=None, **kw:
                                        generate(model, input_ids, attention_mask, **kw))


def stream(model, tokenizer, input_ids, attention_mask=None, skip_special_tokens: bool = True,
           **kwargs) -> Iterator[str]:
    """Text deltas of one prompt's continuation, as they are generated. Stops at eos (not
    printed when skip_special_tokens) or a stop string, which is not printed either: the text ends before
    it, and a tail that could begin one waits until it is known not to (infer/stop_text.py)."""
    cfg = fit_max_length(resolve_config(model, kwargs), input_ids)
    if cfg.num_beams > 1:
        raise ConfigError("streaming is for greedy/sampled decoding; beam search picks its answer at the end")
    prompt = prepare_prompt(model, input_ids, attention_mask, cfg.max_new_tokens)
    if prompt.input_ids.shape[0] != 1:
        raise InputError(f"stream() takes one prompt, got a batch of {prompt.input_ids.shape[0]}")
    prepare_decode(model, 1, cfg.prepack, cfg.gemv)
    reply = StopTokens(tokenizer, cfg.stop_strings, skip_special_tokens)   # the text shown, cut where generate's stops
    for nxt in decode_steps(model, prompt, replace(cfg, stop_strings=()), tokenizer=tokenizer, **kwargs):
        delta = reply.push(int(nxt[0]))
        if delta:
            yield delta
        if reply.stopped:
            return
    tail = reply.flush()
    if tail:
        yield tail
