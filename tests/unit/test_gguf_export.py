"""GGUF export of a Llama checkpoint (ocellus/hub/gguf_export.py), read back with gguf.GGUFReader: metadata,
tensor names, ggml shapes and types, values per file type, the rope permutation (by index and by what it
means: llama.cpp's interleaved rope on the exported q/k gives transformers' attention scores), refusals.
With llama-cpp-python installed (the [llamacpp] extra), llama.cpp's greedy ids on the f32 file equal
Ocellus' greedy ids: the end-to-end proof the conversion is right."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

import ocellus
from ocellus.errors import CheckpointError, ConfigError
from ocellus.hub.gguf_export import export_gguf, id_vocab, rope_interleave
from ocellus.hub.safetensors_io import write_tensors

CFG = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=320, hidden_size=64,
           intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
           max_position_embeddings=128, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500.0},
           hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=None, pad_token_id=0)


def _checkpoint(path, seed=0, **over):
    """A random Llama checkpoint (config.json + model.safetensors) in HF names; norms not all ones."""
    cfg = {**CFG, **over}
    g = torch.Generator().manual_seed(seed)
    D, F, V, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["head_dim"]
    H, K = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    t = {"model.embed_tokens.weight": r(V, D, scale=1.0), "model.norm.weight": 1 + r(D)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": 1 + r(D), p + "post_attention_layernorm.weight": 1 + r(D),
                  p + "self_attn.q_proj.weight": r(H * hd, D), p + "self_attn.k_proj.weight": r(K * hd, D),
                  p + "self_attn.v_proj.weight": r(K * hd, D), p + "self_attn.o_proj.weight": r(D, H * hd),
                  p + "mlp.gate_proj.weight": r(F, D), p + "mlp.up_proj.weight": r(F, D),
                  p + "mlp.down_proj.weight": r(D, F)})
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = r(V, D)
    write_tensors(t, path)
    (path / "config.json").write_text(json.dumps(cfg))
    return path, t


def _field(reader, key):
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode() for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode()
    return f.parts[f.data[0]][0].item()


def _tensors(reader):
    return {t.name: t for t in reader.tensors}


def test_f32_metadata_names_shapes_and_values(tmp_path):
    ckpt, hf = _checkpoint(tmp_path / "ckpt")
    r = gguf.GGUFReader(export_gguf(ckpt, tmp_path / "m.gguf", "f32"))
    meta = {k: _field(r, k) for k in ("general.architecture", "general.file_type", "llama.block_count",
                                      "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                                      "llama.attention.head_count", "llama.attention.head_count_kv",
                                      "llama.rope.dimension_count", "llama.vocab_size", "tokenizer.ggml.model",
                                      "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")}
    assert meta == {"general.architecture": "llama", "general.file_type": 0, "llama.block_count": 2,
                    "llama.context_length": 128, "llama.embedding_length": 64, "llama.feed_forward_length": 96,
                    "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
                    "llama.rope.dimension_count": 16, "llama.vocab_size": 320, "tokenizer.ggml.model": "llama",
                    "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    assert _field(r, "llama.rope.freq_base") == 500.0
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    tokens, types = _field(r, "tokenizer.ggml.tokens"), _field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 320 and tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert tokens[3 + 10] == "<0x0A>" and types[3 + 10] == gguf.TokenType.BYTE  # llama.cpp's newline lookup

    ts = _tensors(r)
    names = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                           "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(ts) == names
    assert list(ts["token_embd.weight"].shape) == [64, 320]        # ggml order: [in, out]
    assert list(ts["blk.0.attn_k.weight"].shape) == [64, 32]
    assert list(ts["blk.1.ffn_down.weight"].shape) == [96, 64]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in ts.values())

    def back(name):  # the stored array in PyTorch's [out, in] order
        return np.asarray(ts[name].data).reshape(ts[name].data.shape)

    np.testing.assert_array_equal(back("token_embd.weight"), hf["model.embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(back("blk.1.ffn_gate.weight"), hf["model.layers.1.mlp.gate_proj.weight"].numpy())
    np.testing.assert_array_equal(back("blk.0.attn_v.weight"), hf["model.layers.0.self_attn.v_proj.weight"].numpy())
    np.testing.assert_array_equal(back("blk.1.ffn_norm.weight"),
                                  hf["model.layers.1.post_attention_layernorm.weight"].numpy())
    np.testing.assert_array_equal(back("output.weight"), hf["lm_head.weight"].numpy())
    # rope permutation, by index: head h's row 2j is HF row h*d + j, row 2j+1 is HF row h*d + d/2 + j
    for name, key, heads in (("blk.1.attn_q.weight", "q_proj", 4), ("blk.1.attn_k.weight", "k_proj", 2)):
        ours, theirs = back(name), hf[f"model.layers.1.self_attn.{key}.weight"].numpy()
        for h in range(heads):
            for j in range(8):
                np.testing.assert_array_equal(ours[h * 16 + 2 * j], theirs[h * 16 + j])
                np.testing.assert_array_equal(ours[h * 16 + 2 * j + 1], theirs[h * 16 + 8 + j])


def test_tied_checkpoint_has_no_output_tensor(tmp_path):
    ckpt, _ = _checkpoint(tmp_path / "ckpt", tie_word_embeddings=True)
    ts = _tensors(gguf.GGUFReader(export_gguf(ckpt, tmp_path / "m.gguf", "f32")))
    assert "output.weight" not in ts and "token_embd.weight" in ts   # llama.cpp reuses token_embd


def test_bf16_and_q8_0_values(tmp_path):
    ckpt, hf = _checkpoint(tmp_path / "ckpt")
    w = hf["model.layers.0.mlp.up_proj.weight"]
    for out_type, qtype, ftype in (("bf16", gguf.GGMLQuantizationType.BF16, 32),
                                   ("q8_0", gguf.GGMLQuantizationType.Q8_0, 7)):
        r = gguf.GGUFReader(export_gguf(ckpt, tmp_path / f"m-{out_type}.gguf", out_type))
        assert _field(r, "general.file_type") == ftype
        ts = _tensors(r)
        assert ts["blk.0.ffn_up.weight"].tensor_type == qtype
        assert ts["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32   # norms stay f32
        np.testing.assert_array_equal(np.asarray(ts["blk.0.attn_norm.weight"].data),
                                      hf["model.layers.0.input_layernorm.weight"].numpy())
        got = gguf.quants.dequantize(ts["blk.0.ffn_up.weight"].data, qtype)
        assert got.shape == tuple(w.shape)
        if out_type == "bf16":  # round to nearest even, as torch rounds
            np.testing.assert_array_equal(got, w.to(torch.bfloat16).float().numpy())
        else:                   # one scale per 32 weights, max |w| / 127 stored as fp16; codes round(w / scale)
            blocks = w.reshape(-1, 32)
            step = blocks.abs().amax(1, keepdim=True) / 127
            want = (torch.round(blocks / step) * step.half().float()).reshape(w.shape)
            np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-7)
            assert not np.array_equal(got, w.numpy())


def _rope(x, pos, theta, interleaved):
    """Rotate x [n, d] at positions pos [n]: pairs (j, j + d/2) (transformers) or (2j, 2j + 1) (llama.cpp)."""
    d = x.shape[-1]
    ang = pos[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    a, b = (x[:, 0::2], x[:, 1::2]) if interleaved else (x[:, : d // 2], x[:, d // 2:])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    out = np.empty_like(x)
    if interleaved:
        out[:, 0::2], out[:, 1::2] = ra, rb
    else:
        out[:, : d // 2], out[:, d // 2:] = ra, rb
    return out


def test_rope_interleave_keeps_attention_scores():
    """What the permutation is for: llama.cpp's interleaved rope on the permuted q/k weights gives the
    same q.k scores, head by head, as transformers' rotate_half rope on the original weights."""
    rng = np.random.default_rng(0)
    heads, d, dim, n = 3, 8, 12, 5
    wq, wk, x = rng.normal(size=(heads * d, dim)), rng.normal(size=(heads * d, dim)), rng.normal(size=(n, dim))
    pos = np.arange(n, dtype=np.float64) * 3
    for w_hf, w_cpp in ((wq, rope_interleave(wq, heads)), (wk, rope_interleave(wk, heads))):
        assert not np.array_equal(w_hf, w_cpp)
    for h in range(heads):
        s = slice(h * d, (h + 1) * d)
        hf = _rope(x @ wq[s].T, pos, 100.0, False) @ _rope(x @ wk[s].T, pos, 100.0, False).T
        cpp = _rope(x @ rope_interleave(wq, heads)[s].T, pos, 100.0, True) \
            @ _rope(x @ rope_interleave(wk, heads)[s].T, pos, 100.0, True).T
        np.testing.assert_allclose(cpp, hf, rtol=1e-10, atol=1e-10)


def test_id_vocab_places_specials_and_bytes():
    pieces, types = id_vocab(300, unk=0, bos=5, eos=2)
    assert (pieces[0], pieces[5], pieces[2]) == ("<unk>", "<s>", "</s>")
    assert pieces[1] == "<0x00>" and pieces[3] == "<0x01>" and pieces[6] == "<0x03>" and pieces[258] == "<0xFF>"
    assert pieces[259] == "<id_259>" and len(set(pieces)) == 300
    assert types[5] == gguf.TokenType.CONTROL and types[260] == gguf.TokenType.NORMAL
    with pytest.raises(ConfigError, match="259"):
        id_vocab(200)


@pytest.mark.parametrize("change, error, match", [
    (dict(model_type="qwen2"), ConfigError, "model_type"),
    (dict(model_type="mistral", architectures=["MistralForCausalLM"]), ConfigError, "got 'mistral'"),
    (dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"]), ConfigError, "got 'qwen3'"),
    (dict(attention_bias=True), ConfigError, "attention_bias"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}), ConfigError, "plain rope"),
    (dict(head_dim=8), ConfigError, "head_dim"),
])
def test_unsupported_configs_are_refused_by_name(tmp_path, change, error, match):
    ckpt, _ = _checkpoint(tmp_path / "ckpt")
    cfg = {**json.loads((ckpt / "config.json").read_text()), **change}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(error, match=match):
        export_gguf(ckpt, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_bad_checkpoints_and_types_are_refused(tmp_path):
    ckpt, hf = _checkpoint(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="unknown GGUF type 'q4_0'"):
        export_gguf(ckpt, tmp_path / "m.gguf", "q4_0")
    (ckpt / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError, match="tokenizer"):
        export_gguf(ckpt, tmp_path / "m.gguf")
    (ckpt / "tokenizer.json").unlink()
    del hf["model.layers.1.mlp.up_proj.weight"]
    write_tensors(hf, ckpt)
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        export_gguf(ckpt, tmp_path / "m.gguf")


def test_llamacpp_greedy_ids_equal_ocellus_on_the_f32_file(tmp_path):
    """The real proof: llama.cpp decodes the exported f32 file to the same greedy ids as Ocellus decodes
    the checkpoint, for a few prompts (rope permutation, GQA, norms, tied and untied heads)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the [llamacpp] extra)")
    from ocellus.bench_llamacpp import greedy, load_llamacpp
    for tied in (False, True):
        ckpt, _ = _checkpoint(tmp_path / f"ckpt-{tied}", seed=3, tie_word_embeddings=tied)
        llm = load_llamacpp(export_gguf(ckpt, tmp_path / f"m-{tied}.gguf", "f32"), threads=1, n_ctx=64)
        model = ocellus.load(ckpt, dtype=torch.float32)
        g = torch.Generator().manual_seed(7)
        for length in (1, 5, 23):
            ids = torch.randint(3, 320, (1, length), generator=g)
            ours = model.generate(ids, max_new_tokens=16)
            assert greedy(llm, ids, 16).tolist() == ours.tolist(), (tied, length)
