"""`ocellus demo`: the whole text pipeline on a tiny checkpoint made on the spot.

It trains a byte-level BPE tokenizer (the `tokenizers` library) on a few sentences, builds a
small Llama-config decoder with seeded random weights, saves both in Hugging Face format, loads
them back through `ocellus.load` / `ocellus.load_processor` like any checkpoint, renders a
ChatML prompt and streams a reply. The weights are untrained, so the reply is noise: the point
is the path (tokenizer -> template -> KV-cached decoding -> streamed text), which a trained
default model will take unchanged once the training recipes land.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

CORPUS = [
    "Ocellus reads images and text with one transformer.",
    "A red circle sits left of a blue square.",
    "Vision encoders turn patches into tokens; a connector maps them into the language model.",
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need, and a KV cache makes decoding fast.",
] * 20


def make_tiny_checkpoint(path: str | Path, seed: int = 0) -> Path:
    import ocellus
    from ocellus.data.bpe import train_bpe
    from ocellus.models.text.decoder import DecoderConfig, DecoderLM
    from ocellus.nn.rope import RopeConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Byte-level BPE with the ChatML specials (+ image/grounding tokens) and a ChatML template.
    tok = train_bpe(CORPUS, vocab_size=384, model_max_length=512)
    tok.save(path)

    vocab, eos = len(tok), tok.eos_token_id
    cfg = DecoderConfig(vocab_size=vocab, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                        rope=RopeConfig(head_dim=32, theta=10000.0, max_position_embeddings=512),
                        max_position_embeddings=512, eos_token_id=(eos,),
                        pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = DecoderLM(cfg)
    for p in model.parameters():  # GPT-2 style init: small normal weights, unit norms
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02)
    ocellus.save(model, path)
    return path


def run_demo(workdir: str | Path, prompt: str, max_new_tokens: int = 32, seed: int = 0, out=print) -> str:
    import ocellus
    from ocellus.infer.generate import stream

    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
        make_tiny_checkpoint(workdir, seed=seed)
    model, tok = ocellus.load(workdir), ocellus.load_processor(workdir)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    out(f"model: {workdir} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, random weights)")
    out(f"prompt ({ids.shape[1]} tokens): {text!r}")
    start, pieces = time.perf_counter(), []
    for delta in stream(model, tok, ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.8,
                        top_p=0.95, seed=seed):
        pieces.append(delta)
    seconds = time.perf_counter() - start
    reply = "".join(pieces)
    out(f"reply: {reply!r}")
    out(f"at most {max_new_tokens} new tokens, {len(reply)} characters in {seconds:.2f}s")
    return reply
