"""A hub id is fetched with an allow-list of file patterns (hub/resolve.CHECKPOINT_FILES): every file a loader
reads must be on it, or a model downloaded from the hub loads without it (a Qwen2-VL's video settings, a
tokenizer's named chat templates). Checked on directories as their writers lay them out: the embedded default
model, transformers' Qwen2-VL with its video processor, a tokenizer saved with several chat templates."""
from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects
from tokenizers import Tokenizer as RawTokenizer, models, pre_tokenizers

import ocellus
from ocellus.hub.resolve import CHECKPOINT_FILES

FIXTURE = Path(__file__).resolve().parents[1] / "parity" / "fixtures" / "qwen2_vl_video"
NOT_READ = {"README.md", "expected.safetensors", "frames.safetensors"}   # the model card; the fixture's test data


def files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name not in NOT_READ)


def fetched(names: list[str]) -> list[str]:
    return list(filter_repo_objects(names, allow_patterns=CHECKPOINT_FILES))


@pytest.mark.parametrize("directory", [ocellus.default_model_dir(), FIXTURE], ids=["default-llava", "qwen2-vl-video"])
def test_every_checkpoint_file_is_fetched(directory):
    names = files(directory)
    assert "config.json" in names and fetched(names) == names


def test_named_chat_templates_are_fetched(tmp_path):
    transformers = pytest.importorskip("transformers")
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")
    tok.chat_template = {"default": "{{ 'a' }}", "tool_use": "{{ 'b' }}"}
    tok.save_pretrained(tmp_path)
    names = files(tmp_path)
    assert "additional_chat_templates/tool_use.jinja" in names and fetched(names) == names
