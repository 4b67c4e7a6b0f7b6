"""Export a Hugging Face Llama checkpoint to GGUF (llama.cpp's file format): f32, bf16 or q8_0.

Why it lives in hub/: GGUF is one more checkpoint format, read from the same untrusted checkpoint dir
(hub/safetensors_io.py), and `ocellus bench decode --vs llamacpp` (an installed command, not a script
under benchmarks/) converts the bench's weights with it. The `gguf` package ([llamacpp] extra) writes the
file; this module decides names, layouts and metadata.

What llama.cpp's `llama` architecture expects, and so what is written:
    token_embd.weight                   [V, D]      model.embed_tokens.weight
    blk.{i}.attn_norm.weight            [D]  f32    model.layers.{i}.input_layernorm.weight
    blk.{i}.attn_q/k/v/output.weight    [out, in]   self_attn.{q,k,v,o}_proj.weight (q, k permuted, below)
    blk.{i}.ffn_norm.weight             [D]  f32    post_attention_layernorm.weight
    blk.{i}.ffn_gate/up/down.weight     [out, in]   mlp.{gate,up,down}_proj.weight
    output_norm.weight                  [D]  f32    model.norm.weight
    output.weight                       [V, D]      lm_head.weight (absent when tied: llama.cpp reuses token_embd)
(shapes in PyTorch's [out, in] order; the file stores ggml's reversed order, [in, out].) Norm vectors stay
f32 in every file type, as llama.cpp's own converter keeps them.

The rope permutation: transformers rotates the pair (j, j + d/2) of each head (rotate_half), llama.cpp's
llama rope rotates (2j, 2j + 1). So each head's rows of q_proj (k_proj: per kv head) are reordered
[x_0..x_{d/2-1}, y_0..y_{d/2-1}] -> [x_0, y_0, x_1, y_1, ...]: q.k dot products, hence the model, are
unchanged, and llama.cpp's rotation meets the same pairs.

The vocabulary: the bench's Llama has random weights and no tokenizer (it decodes random ids), but
llama.cpp needs a vocabulary to load a model. A checkpoint without tokenizer files gets an id-only
SentencePiece-style vocabulary: `<unk>`, `<s>`, `</s>` at the config's ids (0/1/2 by default), the 256
byte pieces `<0x00>`..`<0xFF>` llama.cpp looks up (its newline token), `<id_N>` for every other id. Text
tokenised by llama.cpp against it means nothing; ids in, ids out is exact. Exporting a real tokenizer
(tokenizer.json / tokenizer.model) is not implemented and is refused by name.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from ocellus.errors import CheckpointError, ConfigError, positive_ints
from ocellus.hub.checkpoint_dir import read_config
from ocellus.hub.safetensors_io import checkpoint_files, read_tensors
from ocellus.nn.rope import RopeConfig

Q = gguf.GGMLQuantizationType
# file type name -> (the ggml type of each 2-D weight, general.file_type)
OUT_TYPES = {"f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
             "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
             "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def rope_interleave(w: np.ndarray, n_heads: int) -> np.ndarray:
    """[n_heads * d, in] rows per head in rotate_half order -> llama.cpp's interleaved pair order
    (row j of a head's first half goes to 2j, row j of its second half to 2j + 1)."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_names(n_layers: int, tied: bool) -> dict[str, str]:
    """HF tensor name -> GGUF tensor name, in the order they are written."""
    names = {"model.embed_tokens.weight": "token_embd.weight"}
    for i in range(n_layers):
        for hf, gg in _BLOCK.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    names["model.norm.weight"] = "output_norm.weight"
    if not tied:
        names["lm_head.weight"] = "output.weight"
    return names


def _llama_hparams(cfg: dict, where: Path) -> dict:
    """The config.json fields llama.cpp's llama architecture reads; anything it would compute differently
    (biases, scaled rope, partial rotary, another model type) is refused by name."""
    if cfg.get("model_type") != "llama":
        raise ConfigError(f"{where}: GGUF export handles model_type 'llama', got {cfg.get('model_type')!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ConfigError(f"{where}: GGUF export does not write biases ({flag}=true)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{where}: llama.cpp's llama uses silu, config hidden_act is {cfg['hidden_act']!r}")
    positive_ints(cfg, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads"), f"{where}: config field {{!r}}")
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rope = RopeConfig.from_hf(cfg, head_dim)
    if rope.rope_type != "default" or rope.partial_rotary_factor != 1.0:
        raise ConfigError(f"{where}: GGUF export writes plain rope only, config has rope type {rope.rope_type!r} "
                          f"with partial_rotary_factor {rope.partial_rotary_factor}")
    if head_dim * heads != cfg["hidden_size"]:
        raise ConfigError(f"{where}: head_dim {head_dim} x {heads} heads != hidden_size {cfg['hidden_size']}: "
                          "llama.cpp's llama derives the head size from hidden_size")
    return dict(vocab=cfg["vocab_size"], hidden=cfg["hidden_size"], ffn=cfg["intermediate_size"],
                layers=cfg["num_hidden_layers"], heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads,
                head_dim=head_dim, theta=float(rope.theta), eps=float(cfg.get("rms_norm_eps", 1e-6)),
                context=cfg.get("max_position_embeddings", 2048), tied=bool(cfg.get("tie_word_embeddings")),
                bos=cfg.get("bos_token_id"), eos=cfg.get("eos_token_id"))


def id_vocab(n: int, unk: int = 0, bos: int = 1, eos: int = 2) -> tuple[list[str], list[int]]:
    """(pieces, token types) of an n-token id-only vocabulary (module doc): specials at their ids, the 256
    byte pieces on the first free ids, `<id_N>` elsewhere."""
    if len({unk, bos, eos}) != 3 or not all(0 <= i < n for i in (unk, bos, eos)) or n < 259:
        raise ConfigError(f"an id-only GGUF vocabulary needs >= 259 ids and distinct unk/bos/eos inside them; "
                          f"got vocab_size {n}, unk {unk}, bos {bos}, eos {eos}")
    T = gguf.TokenType
    pieces, types = [f"<id_{i}>" for i in range(n)], [int(T.NORMAL)] * n
    for i, (piece, kind) in {unk: ("<unk>", T.UNKNOWN), bos: ("<s>", T.CONTROL), eos: ("</s>", T.CONTROL)}.items():
        pieces[i], types[i] = piece, int(kind)
    free = (i for i in range(n) if i not in (unk, bos, eos))
    for byte, i in zip(range(256), free):
        pieces[i], types[i] = f"<0x{byte:02X}>", int(T.BYTE)
    return pieces, types


def _encode(w: np.ndarray, qtype) -> np.ndarray:
    """fp32 [out, in] -> the bytes/array the writer stores for qtype (bf16, q8_0 through gguf.quants)."""
    if qtype == Q.F32:
        return w
    if qtype == Q.Q8_0 and w.shape[-1] % 32:
        raise ConfigError(f"q8_0 needs rows that are a multiple of 32 values; a weight has {w.shape[-1]}")
    return gguf.quants.quantize(w, qtype)


def export_gguf(checkpoint_dir, out_path, out_type: str = "f32") -> Path:
    """Write the Llama checkpoint at checkpoint_dir (config.json + safetensors) as one GGUF file.
    out_type: f32 | bf16 | q8_0 (2-D weights; norms stay f32). -> out_path."""
    checkpoint_dir, out_path = Path(checkpoint_dir), Path(out_path)
    if out_type not in OUT_TYPES:
        raise ConfigError(f"unknown GGUF type {out_type!r}; use one of {list(OUT_TYPES)}")
    present = [f for f in TOKENIZER_FILES if (checkpoint_dir / f).exists()]
    if present:
        raise ConfigError(f"{checkpoint_dir} has {present}: exporting a real tokenizer to GGUF is not implemented "
                          "(this converter writes an id-only vocabulary, for checkpoints without a tokenizer)")
    hp = _llama_hparams(read_config(checkpoint_dir), checkpoint_dir)
    tensors = read_tensors(checkpoint_files(checkpoint_dir))
    names = llama_names(hp["layers"], hp["tied"])
    missing = [k for k in names if k not in tensors]
    unexpected = [k for k in tensors if k not in names and not (hp["tied"] and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint_dir}: not a Llama checkpoint llama.cpp can take: missing {missing[:4]}"
                              f"{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}")
    qtype, ftype = OUT_TYPES[out_type]
    bos = 1 if hp["bos"] is None else hp["bos"]
    eos = hp["eos"][0] if isinstance(hp["eos"], list) else hp["eos"]
    eos = 2 if eos is None else eos
    pieces, types = id_vocab(hp["vocab"], unk=0, bos=bos, eos=eos)

    w = gguf.GGUFWriter(out_path.with_name(out_path.name + ".tmp"), "llama")
    w.add_name(checkpoint_dir.name)
    w.add_file_type(int(ftype))
    w.add_context_length(int(hp["context"]))
    w.add_embedding_length(hp["hidden"])
    w.add_block_count(hp["layers"])
    w.add_feed_forward_length(hp["ffn"])
    w.add_head_count(hp["heads"])
    w.add_head_count_kv(hp["kv_heads"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_rope_freq_base(hp["theta"])
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_vocab_size(hp["vocab"])
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores([0.0] * hp["vocab"])
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)  # callers pass ids; nothing is prepended behind their back
    for hf, gg in names.items():
        t = tensors[hf].to(torch.float32).numpy()
        if hf.endswith(("q_proj.weight", "k_proj.weight")):
            t = rope_interleave(t, hp["heads"] if "q_proj" in hf else hp["kv_heads"])
        if t.ndim == 1:
            w.add_tensor(gg, np.ascontiguousarray(t))
        else:
            w.add_tensor(gg, np.ascontiguousarray(_encode(t, qtype)), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out_path.with_name(out_path.name + ".tmp").replace(out_path)  # atomic: a half-written file is never reused
    return out_path
