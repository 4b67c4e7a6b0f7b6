"""Hand computations for the post-training step tests, written from the papers' formulas with plain torch
(never through ocellus.train): token log-probs of a completion, and a stubbed rollout so a loop's step runs
on fixed completions of the tiny decoder."""
import torch
import torch.nn.functional as F

from ocellus.train.preference import PromptRow
from ocellus.train.rollout import Rollout
from _posttrain_tiny import text_batch


def hand_token_logps(model, batch, temperature: float = 1.0) -> torch.Tensor:
    """log pi(y_t | x, y_<t) = log softmax(logits at position t - 1 / T)[y_t] for each completion token,
    0 on completion padding -> [B, C]."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    logprobs = F.log_softmax(model(**inputs).logits.float() / temperature, -1)   # [B, P + C, V]
    mask = batch["completion_mask"]
    B, C = mask.shape
    P = batch["input_ids"].shape[1] - C
    rows = []
    for b in range(B):
        rows.append(torch.stack([logprobs[b, P + t - 1, batch["input_ids"][b, P + t]] if mask[b, t] else
                                 logprobs.new_zeros(()) for t in range(C)]))
    return torch.stack(rows)                                                     # [B, C]


def stub_rollout(prompts: list[list[int]], completions: list[list[int]], texts: list[str]):
    """-> (rows for loop.step, a sample_completions stand-in returning these completions in this order)."""
    rollout = Rollout(text_batch(prompts, completions), texts, torch.zeros(len(texts), dtype=torch.bool))

    def sample_completions(model, processor, prompts_, images, num_generations, *args, **kwargs):
        assert len(prompts_) * num_generations == len(texts)
        return rollout
    return sample_completions, rollout.batch


def prompt_rows(n: int) -> list:
    return [PromptRow([{"role": "user", "content": [{"type": "text", "text": f"q{i}"}]}], [], {}) for i in range(n)]
