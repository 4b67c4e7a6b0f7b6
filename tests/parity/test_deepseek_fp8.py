"""DeepSeek-V3's released checkpoint layout (hub/fp8.py, models/text/deepseek.mtp_keys): block-scaled float8
weights with `weight_scale_inv`, and the multi-token-prediction layer after the decoder.

The fp8 checkpoint is written here from a tiny transformers DeepseekV3ForCausalLM the way DeepSeek's
fp8 cast does it (per 16x16 block: scale = amax / 448, codes = w / scale in float8_e4m3fn, the scale stored
as weight_scale_inv), with ragged last blocks (24- and 12-wide projections). Expected weights are
dequantised here block by block in a loop; the model loaded from the fp8 directory must hold exactly those,
and give the logits of the model (ours, and transformers') loaded from those weights saved in fp32."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import ocellus
from ocellus.errors import CheckpointError, ConfigError
from test_deepseek_parity import ATOL, _ids, reference

BLOCK = (16, 16)
FP8 = torch.float8_e4m3fn
QCFG = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": list(BLOCK), "activation_scheme": "dynamic"}


def quantize_blocks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = -(-w.shape[0] // BLOCK[0]), -(-w.shape[1] // BLOCK[1])
    codes, scales = torch.empty(w.shape, dtype=FP8), torch.empty(rows, cols)
    for i in range(rows):
        for j in range(cols):
            block = w[i * BLOCK[0]:(i + 1) * BLOCK[0], j * BLOCK[1]:(j + 1) * BLOCK[1]].float()
            scales[i, j] = block.abs().max().clamp(min=1e-12) / 448.0
            codes[i * BLOCK[0]:(i + 1) * BLOCK[0], j * BLOCK[1]:(j + 1) * BLOCK[1]] = (block / scales[i, j]).to(FP8)
    return codes, scales


def dequantize_by_hand(codes: torch.Tensor, scales: torch.Tensor, block=BLOCK) -> torch.Tensor:
    w = torch.empty(codes.shape)
    for i in range(scales.shape[0]):
        for j in range(scales.shape[1]):
            rows, cols = slice(i * block[0], (i + 1) * block[0]), slice(j * block[1], (j + 1) * block[1])
            w[rows, cols] = codes[rows, cols].float() * scales[i, j]
    return w


def test_non_square_ragged_blocks_dequantise_block_by_block():
    """8x16 blocks over a 37x50 weight: 5x4 scales, the last row of blocks 5 high, the last column 2 wide."""
    from ocellus.hub.fp8 import dequantize_blocks
    g = torch.Generator().manual_seed(0)
    codes = (torch.randn(37, 50, generator=g) * 50).to(FP8)
    scales = torch.rand(5, 4, generator=g) + 0.5
    assert torch.equal(dequantize_blocks(codes, scales, (8, 16), torch.float32),
                       dequantize_by_hand(codes, scales, (8, 16)))


def quantized(name: str, t: torch.Tensor) -> bool:
    """What DeepSeek-V3 ships in fp8: the layers' projections (experts included); embeddings, norms, the
    routers and lm_head stay float."""
    return name.startswith("model.layers.") and name.endswith("proj.weight") and t.dim() == 2


def write_fp8(src, dst, mtp: dict | None = None, **config) -> dict:
    """src (a float checkpoint dir) -> dst in the fp8 layout (+ extra float tensors `mtp`); -> the weights
    dequantised by hand for every quantized key, and the source tensors for the rest."""
    tensors, out, expected = load_file(str(src / "model.safetensors")), {}, {}
    for name, t in {**tensors, **(mtp or {})}.items():
        if quantized(name, t):
            codes, scales = quantize_blocks(t)
            out[name], out[name + "_scale_inv"] = codes, scales
            expected[name] = dequantize_by_hand(codes, scales)
        else:
            out[name] = expected[name] = t.contiguous()
    dst.mkdir(parents=True)
    save_file(out, str(dst / "model.safetensors"))
    cfg = {**json.loads((src / "config.json").read_text()), "quantization_config": QCFG, **config}
    (dst / "config.json").write_text(json.dumps(cfg))
    return expected


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    ref = reference("v3")
    ref.save_pretrained(root / "float")
    expected = write_fp8(root / "float", root / "fp8", num_nextn_predict_layers=0)
    # the same weights in fp32, as a plain checkpoint: what the fp8 load must equal
    save_file({k: v for k, v in expected.items()}, str(root / "float" / "model.safetensors"))
    return root, expected


def test_fp8_weights_load_as_the_block_dequantised_weights(v3):
    root, expected = v3
    ours = ocellus.load(root / "fp8")
    state = ours.state_dict()
    checked = 0
    for name, w in expected.items():
        if quantized(name, w):
            key = name.removeprefix("model.")
            assert state[key].dtype == torch.float32 and torch.equal(state[key], w), name
            checked += 1
    assert checked > 20 and expected["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"].shape[0] % BLOCK[0]
    half = ocellus.load(root / "fp8", dtype="bfloat16")   # into the load dtype, from the fp32 product
    w = expected["model.layers.1.mlp.experts.3.down_proj.weight"]
    assert torch.equal(half.layers[1].mlp.experts[3].down_proj.weight, w.to(torch.bfloat16))


def test_fp8_logits_equal_the_model_loaded_from_the_dequantised_weights(v3):
    import transformers
    root, _ = v3
    ours, plain = ocellus.load(root / "fp8"), ocellus.load(root / "float")
    ref = transformers.DeepseekV3ForCausalLM.from_pretrained(root / "float").eval()
    ids = _ids()
    with torch.no_grad():
        logits = ours(ids).logits
        assert torch.equal(logits, plain(ids).logits)
        torch.testing.assert_close(logits, ref(ids).logits, atol=ATOL, rtol=0)


def test_save_after_an_fp8_load_writes_plain_float_weights(v3, tmp_path):
    root, _ = v3
    ours = ocellus.load(root / "fp8")
    ocellus.save(ours, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert not any(k.endswith("_scale_inv") for k in load_file(str(tmp_path / "out" / "model.safetensors")))
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(ocellus.load(tmp_path / "out")(ids).logits, ours(ids).logits)


def _mtp_layer(layer: int, ref) -> dict:
    """V3's MTP module as the release names it: a decoder block plus enorm / hnorm / eh_proj / shared_head
    (its embed_tokens and head repeat the model's)."""
    block = {f"model.layers.{layer}.{k.split('.', 3)[3]}": v.clone()
             for k, v in ref.state_dict().items() if k.startswith("model.layers.2.")}
    d = ref.config.hidden_size
    return {**block, f"model.layers.{layer}.enorm.weight": torch.ones(d), f"model.layers.{layer}.hnorm.weight": torch.ones(d),
            f"model.layers.{layer}.eh_proj.weight": torch.randn(d, 2 * d),
            f"model.layers.{layer}.embed_tokens.weight": ref.model.embed_tokens.weight.detach().clone(),
            f"model.layers.{layer}.shared_head.norm.weight": torch.ones(d),
            f"model.layers.{layer}.shared_head.head.weight": ref.lm_head.weight.detach().clone()}


def test_the_mtp_layer_is_skipped_by_its_index_and_nothing_else_is(v3, tmp_path):
    import transformers
    root, _ = v3
    ref = transformers.DeepseekV3ForCausalLM.from_pretrained(root / "float").eval()
    layers = ref.config.num_hidden_layers                             # 3: the MTP layer is model.layers.3
    write_fp8(root / "float", tmp_path / "mtp", mtp=_mtp_layer(layers, ref), num_nextn_predict_layers=1)
    ours, plain = ocellus.load(tmp_path / "mtp"), ocellus.load(root / "fp8")
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, plain(ids).logits)
    assert len(ours.layers) == layers
    # without num_nextn_predict_layers saying so, the same keys are unexpected
    cfg = json.loads((tmp_path / "mtp" / "config.json").read_text())
    (tmp_path / "mtp" / "config.json").write_text(json.dumps({**cfg, "num_nextn_predict_layers": 0}))
    with pytest.raises(CheckpointError, match=rf"unexpected \(\d+\): .*model\.layers\.{layers}\.enorm\.weight"):
        ocellus.load(tmp_path / "mtp")
    # a layer past the MTP ones is not skipped
    write_fp8(root / "float", tmp_path / "past", mtp=_mtp_layer(layers + 1, ref), num_nextn_predict_layers=1)
    with pytest.raises(CheckpointError, match=rf"model\.layers\.{layers + 1}\.eh_proj\.weight"):
        ocellus.load(tmp_path / "past")


def test_the_mtp_count_defaults_as_transformers_does():
    from ocellus.models.text.deepseek import mtp_keys
    assert mtp_keys({"model_type": "deepseek_v3", "num_hidden_layers": 61}) == (r"model\.layers\.(61)\.",)
    assert mtp_keys({"architectures": ["DeepseekV3ForCausalLM"], "num_hidden_layers": 4,
                     "num_nextn_predict_layers": 2}) == (r"model\.layers\.(4|5)\.",)
    assert mtp_keys({"model_type": "deepseek_v2", "num_hidden_layers": 27}) == ()
    with pytest.raises(ConfigError, match="num_nextn_predict_layers must be an int >= 0, got -1"):
        mtp_keys({"model_type": "deepseek_v3", "num_hidden_layers": 4, "num_nextn_predict_layers": -1})


def _edit(root, tmp_path, tensors=None, **qcfg):
    """A copy of the fp8 checkpoint with its tensors and quantization_config edited."""
    out = tmp_path / "edited"
    out.mkdir()
    loaded = load_file(str(root / "fp8" / "model.safetensors"))
    save_file(tensors(loaded) if tensors else loaded, str(out / "model.safetensors"))
    cfg = json.loads((root / "fp8" / "config.json").read_text())
    cfg["quantization_config"] = {**cfg["quantization_config"], **qcfg}
    (out / "config.json").write_text(json.dumps(cfg))
    return out


KEY = "model.layers.0.self_attn.o_proj.weight"


@pytest.mark.parametrize("tensors, qcfg, error, message", [
    (None, {"quant_method": "awq"}, ConfigError, "quant_method 'awq' is not one Ocellus reads: 'fp8'"),
    (None, {"weight_block_size": [16]}, ConfigError, "weight_block_size must be \\[rows, cols\\] positive integers"),
    (None, {"activation_scheme": "static"}, ConfigError, "activation_scheme 'static' unsupported"),
    (None, {"fmt": "e3m4"}, ConfigError, "fmt 'e3m4' unsupported"),
    (lambda t: {k: v for k, v in t.items() if k != KEY + "_scale_inv"}, {}, CheckpointError,
     f"{KEY} is torch.float8_e4m3fn without its {KEY}_scale_inv"),
    (lambda t: {**t, KEY + "_scale_inv": t[KEY + "_scale_inv"][:, :1].contiguous()}, {}, CheckpointError,
     f"{KEY}_scale_inv: shape \\(2, 1\\), but a 32x24 weight in 16x16 blocks has 2x2 scales"),
    (lambda t: {k: v for k, v in t.items() if k != KEY}, {}, CheckpointError, f"{KEY}_scale_inv scales no weight"),
    (lambda t: {**t, KEY: t[KEY].float()}, {}, CheckpointError, f"{KEY} has block scales but is torch.float32"),
], ids=["method", "block", "static", "fmt", "no-scale", "scale-shape", "orphan-scale", "float-weight"])
def test_bad_fp8_checkpoints_are_errors_naming_the_problem(v3, tmp_path, tensors, qcfg, error, message):
    root, _ = v3
    with pytest.raises(error, match=message):
        ocellus.load(_edit(root, tmp_path, tensors, **qcfg))
