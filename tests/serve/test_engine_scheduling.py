"""Continuous batching's scheduling (infer/batching.py): what only iteration-level scheduling does.

Orca (Yu et al. 2022): requests join the running decode batch at the next token boundary when a
slot is free, and leave it the moment they finish. So a short request that arrives while a long one
decodes finishes first, a request waiting for a slot gets the slot a finished one frees while the
long one still runs, and every request's greedy ids equal that prompt generated alone.

The arrivals are made deterministic by submitting from inside the model's forward on the engine
thread (a forward pre-hook): the short requests arrive exactly between two decode steps of the long one.
"""
from __future__ import annotations

import threading

import pytest
import torch

import ocellus
from ocellus.infer.batching import BatchEngine, Finish, Request, SamplingParams
from ocellus.infer.generate import generate
from _engine_run import run_with_hook


@pytest.fixture(scope="module")
def tokenizer():
    return ocellus.load_processor(ocellus.default_model_dir()).tokenizer


def tiny_decoder(vocab: int):
    from ocellus.hub.families import family_for_config
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 128, "eos_token_id": None, "pad_token_id": 0, "tie_word_embeddings": False}
    torch.manual_seed(0)
    return family_for_config(cfg).build(cfg).eval()


def test_short_requests_join_mid_decode_and_finish_first(tokenizer):
    """slots=2. Long request A (24 tokens) decodes alone; after its 4th decode step B and C (3 tokens
    each) arrive. B joins at once (a free slot) and finishes while A runs; C waits for a slot and
    takes the one B frees, also finishing before A. Finish order B, C, A; A's decode steps run
    B's and C's rows alongside; every id sequence equals generate() on that prompt alone."""
    model = tiny_decoder(tokenizer.vocab_size)
    g = torch.Generator().manual_seed(0)
    prompts = {name: torch.randint(4, tokenizer.vocab_size, (1, n), generator=g)
               for name, n in (("A", 6), ("B", 9), ("C", 3))}
    budget = {"A": 24, "B": 3, "C": 3}
    engine = BatchEngine(model, tokenizer, slots=2, max_len=64)
    order, finished, all_done = [], {}, threading.Event()
    batch_sizes = []                          # rows of every decode step ([B, 1] ids)

    def sink_for(name):
        def sink(event):
            if isinstance(event, Finish):
                order.append(name)
                finished[name] = event
                if len(finished) == 3:
                    all_done.set()
        return sink

    def request(name):
        return Request(prompts[name], SamplingParams(max_tokens=budget[name], temperature=0), sink_for(name))

    def arrive(module, args, kwargs):         # runs on the engine thread before every forward
        ids = kwargs["input_ids"]
        if ids.shape[1] == 1:
            batch_sizes.append(ids.shape[0])
            if len(batch_sizes) == 4:         # A is at its 5th token: B and C arrive now
                engine.submit(request("B"))
                engine.submit(request("C"))
    run_with_hook(engine, model, arrive, request("A"), all_done)
    assert order == ["B", "C", "A"], order
    # A alone for 4 steps; then B's 2 decode steps beside A (its 1st token comes from its prefill); then
    # C's 2 in the slot B freed; then A alone to its 24th token (23 decode steps in all)
    assert batch_sizes == [1] * 4 + [2] * 4 + [1] * (23 - 8), batch_sizes
    for name, ids in prompts.items():
        want = generate(model, ids, max_new_tokens=budget[name])[0, ids.shape[1]:].tolist()
        assert list(finished[name].token_ids) == want, name
        assert finished[name].reason == "length"
