"""Beam search with length penalty, following transformers' vectorised beam search so that the
same checkpoint gives the same ids.

Per step, for each prompt: add the next-token log-probs to each beam's running score, take the
best 2K of the K*V continuations (2K so that K survive even if K of them end). Continuations
that end (eos or the length limit) and rank among the first K enter the finished pool with
score / generated_len ** length_penalty; the best K unended ones keep running. With
early_stopping=False a prompt is done once its best running beam, scored at the current length,
cannot beat its worst finished one (transformers' heuristic); True stops once K have finished.

Stop strings (cfg.stop_strings, which need the tokenizer) end a continuation too: one whose text holds a stop
string finishes there, its ids cut before it (infer/stop_text.tokens_before_stop: the other paths' cut, whole
tokens only). It is scored as if it had ended on eos after the n tokens it kept: the running score, the stop
string's tokens included (the probability of ending there, as an eos's log-prob is), over n + 1 tokens (the
kept ones and the ending, as an eos-ended reply counts its eos), score / (n + 1) ** length_penalty. So a reply
scores the same whichever way it ends, and however many tokens its stop string takes.
"""
from __future__ import annotations

import torch

from ocellus.errors import ConfigError
from ocellus.infer.sampling import process_logits
from ocellus.infer.stop_text import require_tokenizer, tokens_before_stop

NEG = -1.0e9


@torch.inference_mode()
def beam_search(model, prompt, cfg, tokenizer=None, **prefill_kwargs) -> torch.Tensor:
    require_tokenizer(cfg.stop_strings, tokenizer)
    K = cfg.num_beams
    B, T = prompt.input_ids.shape
    device = prompt.input_ids.device
    max_len = T + cfg.max_new_tokens
    eos = torch.tensor(cfg.eos_token_id or (), dtype=torch.long, device=device)
    keep = max(2, 1 + eos.numel()) * K                                  # candidates kept per prompt
    in_top_k = torch.arange(keep, device=device) < K                     # [keep]
    # what pads hypotheses shorter than the output: transformers uses `pad or eos[0]`, so a pad
    # id of 0 gives way to eos; kept so ids compare equal
    fill = cfg.pad_token_id or (int(eos[0]) if eos.numel() else cfg.pad_token_id)
    if fill is None:   # only hypotheses that end early need it: without eos, those cut at a stop string
        if cfg.stop_strings and B > 1:
            raise ConfigError("beam search pads the hypotheses that end early at a stop string, and this model has "
                              "neither pad_token_id nor eos_token_id: pass pad_token_id=...")
        fill = -1

    run_seqs = torch.full((B, K, max_len), fill, dtype=torch.long, device=device)
    run_seqs[:, :, :T] = prompt.input_ids[:, None]
    run_scores = torch.zeros(B, K, device=device)
    run_scores[:, 1:] = NEG                                              # all beams start identical: use one
    fin_seqs = run_seqs.clone()
    fin_scores = torch.full((B, K), NEG, device=device)
    fin_lens = torch.zeros(B, K, dtype=torch.long, device=device)       # generated tokens of finished hyps
    fin_done = torch.zeros(B, K, dtype=torch.bool, device=device)
    can_improve = torch.ones(B, 1, dtype=torch.bool, device=device)
    batch_offset = (torch.arange(B, device=device) * K)[:, None]         # [B, 1]

    flat = lambda t: t.reshape(B * K, *t.shape[2:])                      # noqa: E731  [B, K, ...] -> [B*K, ...]
    mask = None
    if prompt.attention_mask is not None:
        mask = torch.ones(B * K, max_len, dtype=torch.long, device=device)
        mask[:, :T] = prompt.attention_mask.repeat_interleave(K, 0)
    pos = prompt.position_ids.repeat_interleave(K, 0)                    # [B*K, T]
    cache = model.new_cache(B * K, max_len)
    expanded = {k: v.repeat_interleave(K, 0) if isinstance(v, torch.Tensor) else v for k, v in prefill_kwargs.items()}
    logits = model(input_ids=flat(run_seqs[:, :, :T]), attention_mask=None if mask is None else mask[:, :T],
                   position_ids=pos, cache=cache, logits_to_keep=1, **expanded).logits
    pos = pos[:, -1:]
    cur = T
    while True:
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)                        # [B*K, V]
        if cfg.constrains:   # on the log-probs, as transformers' beam search applies its processors
            logp = process_logits(logp, flat(run_seqs[:, :, :cur]), do_sample=False,
                                  repetition_penalty_=cfg.repetition_penalty,
                                  no_repeat_ngram_size=cfg.no_repeat_ngram_size, banned=cfg.banned(eos, cur - T),
                                  padding=None if mask is None else mask[:, :cur] == 0)
        V = logp.shape[-1]
        total = (logp.view(B, K, V) + run_scores[:, :, None]).view(B, K * V)         # [B, K*V]
        cand_scores, cand_idx = torch.topk(total, keep, dim=-1)                      # [B, keep]
        src_beam, tok = cand_idx // V, cand_idx % V
        cand_seqs = run_seqs.gather(1, src_beam[:, :, None].expand(B, keep, max_len)).clone()
        cand_seqs[:, :, cur] = tok
        ends = torch.isin(tok, eos) if eos.numel() else torch.zeros_like(tok, dtype=torch.bool)
        if cur + 1 >= max_len:
            ends = torch.ones_like(ends)
        done_seqs = cand_seqs
        gen_len = cur + 1 - T
        lengths = torch.full_like(tok, gen_len)                                      # [B, keep] tokens kept
        norm = gen_len ** cfg.length_penalty
        if cfg.stop_strings:   # a stop string in its text ends a candidate, cut before it
            kept = _kept_before_stop(tokenizer, cand_seqs[:, :, T:cur + 1], torch.isin(tok, eos), cfg.stop_strings)
            stopped = kept >= 0
            ends = ends | stopped
            lengths = torch.where(stopped, kept, lengths)
            norm = torch.where(stopped, (kept + 1).double() ** cfg.length_penalty, norm).float()
            cut = stopped[:, :, None] & (torch.arange(max_len, device=device) >= T + kept[:, :, None])
            done_seqs = cand_seqs.masked_fill(cut, fill)   # what the pool keeps; the running beams read cand_seqs

        # the K best candidates that did not end keep running
        alive_scores = cand_scores + ends.float() * NEG
        nxt = torch.topk(alive_scores, K, dim=-1).indices                            # [B, K]
        run_seqs = cand_seqs.gather(1, nxt[:, :, None].expand(B, K, max_len))
        run_scores = alive_scores.gather(1, nxt)
        reorder = (src_beam.gather(1, nxt) + batch_offset).flatten()                 # [B*K] cache rows

        # ended candidates among the top K join the finished pool, length-normalised
        new_scores = cand_scores / norm
        just_done = ends & in_top_k[None]
        full = fin_done.all(-1, keepdim=True) & (cfg.early_stopping is True)
        new_scores = new_scores + (full | ~can_improve).float() * NEG + (~just_done).float() * NEG
        pool_scores = torch.cat([fin_scores, new_scores], 1)
        best = torch.topk(pool_scores, K, dim=-1).indices
        fin_seqs = torch.cat([fin_seqs, done_seqs], 1).gather(1, best[:, :, None].expand(B, K, max_len))
        fin_scores = pool_scores.gather(1, best)
        fin_lens = torch.cat([fin_lens, lengths], 1).gather(1, best)
        fin_done = torch.cat([fin_done, just_done], 1).gather(1, best)

        cur += 1
        # can a running beam still beat the worst finished one?
        hyp_len = (max_len - T) if (cfg.early_stopping == "never" and cfg.length_penalty > 0) else (cur - T)
        best_running = run_scores[:, :1] / (hyp_len ** cfg.length_penalty)
        worst_done = torch.where(fin_done, fin_scores.min(-1, keepdim=True).values, torch.full_like(fin_scores, NEG))
        can_improve = can_improve & (best_running > worst_done).any(-1, keepdim=True)
        all_full = bool(fin_done.all()) and cfg.early_stopping is True
        if not bool(can_improve.any()) or all_full or bool(ends.all()):
            break
        cache.reorder(reorder)
        pos = pos + 1
        logits = model(input_ids=flat(run_seqs[:, :, cur - 1:cur]),
                       attention_mask=None if mask is None else mask[:, :cur],
                       position_ids=pos, cache=cache, logits_to_keep=1).logits
    # best finished hypothesis per prompt; output as long as the longest of them
    out_len = T + int(fin_lens[:, 0].max())
    return fin_seqs[:, 0, :out_len]


def _kept_before_stop(tokenizer, gen: torch.Tensor, skip: torch.Tensor, stops) -> torch.Tensor:
    """gen [B, keep, n] the candidates' generated ids -> [B, keep]: how many tokens each keeps before a stop string
    in its text, -1 where there is none (or `skip`: it ends on eos, its text that of a beam that had none)."""
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)        # noqa: E731  the text shown
    kept = [[-1 if done else tokens_before_stop(decode, ids, stops) for ids, done in zip(row, row_skip)]
            for row, row_skip in zip(gen.tolist(), skip.tolist())]
    return torch.tensor([[-1 if k is None else k for k in row] for row in kept], device=gen.device)
