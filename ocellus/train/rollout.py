"""Prompt + completion batches with images: building them, sampling them, scoring their tokens.

Every post-training method works on the same layout, so one function computes log-probs for all:

    input_ids [B, P + C] = [pad .. pad  prompt | completion  eos  pad .. pad]
                            <- P, left-padded -> <- C, right-padded ->
    completion_mask [B, C]: 1 on completion tokens (the end token included), 0 on padding

The prompt block is what the model's processor makes for generation (chat template + generation
prompt, image tokens expanded, left padding), so a completion is scored in exactly the context it was
sampled in; positions follow the generation engine (cumsum(attention_mask) - 1). Because completions
sit at the right end, the model only computes logits for the last C + 1 positions (logits_to_keep).

A completion is its text's ids followed by the end-of-turn token (the tokenizer's eos, which is
<|im_end|> for chatml: what the assistant writes to end its reply and what generation stops on).
An empty completion is legal here (a model may answer eos at once): it is one scored token, eos.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ocellus.errors import ConfigError, InputError


@dataclass
class Rollout:
    batch: dict                       # input_ids, attention_mask, position_ids, image tensors, completion_mask
    completions: list[str]            # decoded completion texts (special tokens dropped)
    truncated: torch.Tensor           # [B] bool: no end token within max_new_tokens


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """The generation engine's positions: cumsum(mask) - 1, padding at 1."""
    return (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)   # [B, T]


def end_token_id(processor) -> int:
    eos = processor.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no eos token: completions need an end-of-turn token to be scored")
    return int(eos)


def join(prompt: dict, completion_ids: list[list[int]], pad_id: int) -> dict:
    """Left-padded prompt batch (processor output) + completion ids per row -> the layout above."""
    B = prompt["input_ids"].shape[0]
    if len(completion_ids) != B:
        raise InputError(f"{len(completion_ids)} completions for {B} prompts")
    C = max(1, max(len(c) for c in completion_ids))
    comp = torch.full((B, C), pad_id, dtype=torch.long)                              # [B, C]
    comp_mask = torch.zeros(B, C, dtype=torch.long)                                  # [B, C]
    for b, ids in enumerate(completion_ids):
        comp[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        comp_mask[b, :len(ids)] = 1
    attention_mask = torch.cat([prompt["attention_mask"], comp_mask], 1)             # [B, P + C]
    out = {k: v for k, v in prompt.items() if k not in ("input_ids", "attention_mask")}
    out.update(input_ids=torch.cat([prompt["input_ids"], comp], 1), attention_mask=attention_mask,
               position_ids=positions(attention_mask), completion_mask=comp_mask)
    return out


def encode_completions(processor, prompts: list[list[dict]], completions: list[str], images: list[list]) -> dict:
    """Prompts (messages ending on a user turn), their completion texts and images -> the layout above."""
    prompt = processor(messages=prompts, images=images, padding_side="left")
    eos = end_token_id(processor)
    ids = [processor.tokenizer.encode(text, add_special_tokens=False) + [eos] for text in completions]
    return join(prompt, ids, processor.pad_token_id if processor.pad_token_id is not None else eos)


def token_logprobs(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """log pi(token | context) of every completion token -> [B, C] (0 where completion_mask is 0).
    Logits are divided by `temperature` first, as the sampler did (TRL scores with the sampling temperature)."""
    mask = batch["completion_mask"]
    C = mask.shape[1]
    inputs = {k: v for k, v in batch.items() if k not in ("completion_mask", "labels")}
    logits = model(**inputs, logits_to_keep=C + 1).logits[:, :-1].float()           # [B, C, V]
    if temperature != 1.0:
        logits = logits / temperature
    targets = batch["input_ids"][:, -C:]                                             # [B, C]
    logp = torch.gather(F.log_softmax(logits, -1), 2, targets[..., None]).squeeze(-1)  # [B, C]
    return logp * mask


def completion_hidden(model, batch: dict) -> torch.Tensor:
    """The decoder's final hidden states over the last C + 1 positions [B, C + 1, D]: position 0 is the
    last prompt token, k the state after completion token k (for value heads and reward heads)."""
    C = batch["completion_mask"].shape[1]
    inputs = {k: v for k, v in batch.items() if k not in ("completion_mask", "labels")}
    return model(**inputs, logits_to_keep=1).hidden_states[:, -(C + 1):]              # [B, C + 1, D]


@torch.no_grad()
def sample_completions(model, processor, prompts: list[list[dict]], images: list[list], num_generations: int,
                       max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                       seed: int | None = None) -> Rollout:
    """G = num_generations sampled completions per prompt, through the shared generation engine.
    Rows b*G .. b*G+G-1 belong to prompt b. Returns the scoring layout (see the module docstring)."""
    if num_generations < 1:
        raise ConfigError(f"num_generations must be >= 1, got {num_generations}")
    if len(images) != len(prompts):
        raise InputError(f"{len(images)} image lists for {len(prompts)} prompts")
    G = num_generations   # each prompt (and its images, however many) repeated G times, consecutively
    prompt = processor(messages=[p for p in prompts for _ in range(G)], images=[im for im in images for _ in range(G)],
                       padding_side="left")
    was_training = model.training
    model.eval()
    out = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                         top_k=top_k, seed=seed)
    model.train(was_training)
    eos, P = end_token_id(processor), prompt["input_ids"].shape[1]
    ids, texts, truncated = [], [], []
    for row in out[:, P:].tolist():
        cut = row.index(eos) + 1 if eos in row else len(row)     # up to and including the end token
        ids.append(row[:cut])
        truncated.append(eos not in row)
        texts.append(processor.decode(row[:cut], skip_special_tokens=True).strip())
    pad = processor.pad_token_id if processor.pad_token_id is not None else eos
    return Rollout(join(prompt, ids, pad), texts, torch.tensor(truncated))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)
