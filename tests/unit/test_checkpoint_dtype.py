"""A checkpoint's dtype survives load and save as transformers keeps it: config.json's dtype (or the older
torch_dtype) is the default, an explicit dtype wins, the aliases name the dtypes they spell; a bfloat16 model is
saved as bfloat16 tensors with config.json saying so (what transformers' save_pretrained writes and its
from_pretrained reads back); loading leaves torch's default dtype alone and returns the model in eval mode."""
import json
import shutil

import pytest
import torch
from safetensors import safe_open

import ocellus
from ocellus.hub.checkpoint import parse_dtype
from tests.conftest import build_reference


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    """transformers' own bfloat16 export: its config.json and tensors are the reference."""
    path = tmp_path_factory.mktemp("bf16")
    build_reference("llama").to(torch.bfloat16).save_pretrained(path)
    return path


def _file_dtypes(path):
    out = set()
    for f in path.glob("*.safetensors"):
        with safe_open(f, framework="pt") as st:
            out |= {st.get_slice(k).get_dtype() for k in st.keys()}
    return out


def test_aliases_name_their_dtypes():
    for alias, name in {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "torch.bfloat16": "bfloat16",
                        "float16": "float16"}.items():
        assert parse_dtype(alias) is getattr(torch, name), alias
    assert parse_dtype(torch.bfloat16) is torch.bfloat16 and parse_dtype(None) is None


def test_config_dtype_is_the_default_and_an_explicit_dtype_wins(bf16_dir):
    assert json.loads((bf16_dir / "config.json").read_text())["dtype"] == "bfloat16"
    assert ocellus.load(bf16_dir).embed_tokens.weight.dtype == torch.bfloat16
    assert ocellus.load(bf16_dir, dtype="float32").embed_tokens.weight.dtype == torch.float32
    assert ocellus.load(bf16_dir, dtype="bf16").embed_tokens.weight.dtype == torch.bfloat16


def test_older_config_with_torch_dtype_only(bf16_dir, tmp_path):
    """transformers < 4.56 wrote `torch_dtype`; such a config still says the weights' dtype."""
    shutil.copytree(bf16_dir, tmp_path, dirs_exist_ok=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["torch_dtype"] = cfg.pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert ocellus.load(tmp_path).embed_tokens.weight.dtype == torch.bfloat16


def test_load_leaves_the_default_dtype_and_returns_eval_mode(bf16_dir):
    before = torch.get_default_dtype()
    model = ocellus.load(bf16_dir, dtype="float16")
    assert torch.get_default_dtype() is before
    assert not any(m.training for m in model.modules())


def test_bf16_saved_as_bf16_and_transformers_reads_it_back(bf16_dir, tmp_path):
    import transformers
    ours = ocellus.load(bf16_dir)
    ocellus.save(ours, tmp_path)
    assert _file_dtypes(tmp_path) == _file_dtypes(bf16_dir) == {"BF16"}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype="auto")
    assert ref.dtype == torch.bfloat16
    assert torch.equal(ref.model.embed_tokens.weight, ours.embed_tokens.weight)
