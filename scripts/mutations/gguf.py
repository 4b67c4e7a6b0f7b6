"""GGUF export for llama.cpp (ocellus/hub/gguf_export.py), guarded by tests/unit/test_gguf_export.py (default run:
read back with gguf.GGUFReader; the llama.cpp greedy test joins when llama-cpp-python is installed)."""
from mutations import Mutation

GGUF = "tests/unit/test_gguf_export.py"
BENCH = "tests/unit/test_bench_llamacpp.py"
F = "ocellus/hub/gguf_export.py"
B = "ocellus/bench_llamacpp.py"

MUTATIONS = [
    Mutation(name="gguf: q/k rows left in rotate_half order (no rope permutation)", file=F,
             old="t = rope_interleave(t, hp[\"heads\"] if \"q_proj\" in hf else hp[\"kv_heads\"])",
             new="t = t", tests=[GGUF]),
    Mutation(name="gguf: k permuted with the query head count", file=F,
             old="hp[\"heads\"] if \"q_proj\" in hf else hp[\"kv_heads\"]", new="hp[\"heads\"]", tests=[GGUF]),
    Mutation(name="gguf: rope permutation interleaves halves across heads", file=F,
             old="return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)",
             new="return w.reshape(2, n_heads, d // 2, *w.shape[1:]).swapaxes(0, 2).reshape(w.shape)", tests=[GGUF]),
    Mutation(name="gguf: attention and ffn norms swapped", file=F,
             old='"post_attention_layernorm": "ffn_norm"', new='"post_attention_layernorm": "attn_norm_x"',
             tests=[GGUF]),
    Mutation(name="gguf: untied lm_head dropped", file=F,
             old="    if not tied:\n        names[\"lm_head.weight\"] = \"output.weight\"",
             new="    if False:\n        names[\"lm_head.weight\"] = \"output.weight\"", tests=[GGUF]),
    Mutation(name="gguf: kv head count written as the query head count", file=F,
             old='w.add_head_count_kv(hp["kv_heads"])', new='w.add_head_count_kv(hp["heads"])', tests=[GGUF]),
    Mutation(name="gguf: rope base not written (llama.cpp's default 10000)", file=F,
             old='w.add_rope_freq_base(hp["theta"])', new='w.add_rope_freq_base(10000.0)', tests=[GGUF]),
    Mutation(name="gguf: norms quantised with the weights", file=F,
             old="        if t.ndim == 1:\n", new="        if t.ndim == 0:\n", tests=[GGUF]),
    Mutation(name="gguf: byte pieces not placed (llama.cpp cannot find its newline token)", file=F,
             old="for byte, i in zip(range(256), free):", new="for byte, i in zip(range(0), free):", tests=[GGUF]),
    Mutation(name="gguf: a checkpoint with a tokenizer silently gets the id-only vocabulary", file=F,
             old="    if present:\n        raise ConfigError", new="    if present and False:\n        raise ConfigError",
             tests=[GGUF]),
    # the llama.cpp side of the bench (ocellus/bench_llamacpp.py, bench.py --vs llamacpp)
    Mutation(name="llamacpp: greedy feeds back the prompt's last token instead of the new one", file=B,
             old="llm.eval([nxt])", new="llm.eval([prompt[-1]])", tests=[BENCH]),
    Mutation(name="llamacpp: greedy feeds back the last token too (one forward pass more than ours)", file=B,
             old="        if step + 1 < new_tokens:", new="        if True:", tests=[BENCH]),
    Mutation(name="llamacpp: logits of the first output row read instead of the last", file=B,
             old="self._logits_ith(self.llm.ctx, -1)", new="self._logits_ith(self.llm.ctx, 0)", tests=[BENCH]),
    Mutation(name="llamacpp: int8 row meets the f32 file instead of q8_0", file=B,
             old='"int8": "q8_0"}', new='"int8": "f32"}', tests=[BENCH]),
    Mutation(name="llamacpp: --vs llamacpp accepts batch 8 silently", file="ocellus/bench.py",
             old="if set(batches) != {1}:", new="if not batches:", tests=[BENCH]),
    Mutation(name="llamacpp: the table header still says transformers", file="ocellus/bench.py",
             old='return "\\n".join([header(rows[0].get("vs", "transformers") if rows else "transformers"),',
             new='return "\\n".join([header(),', tests=[BENCH]),
]
