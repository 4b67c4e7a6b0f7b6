"""Tokenizer side files that are JSON but not objects (a list, a string) are a CheckpointError naming the file."""
import shutil

import pytest

import ocellus
from ocellus.data.tokenizer import Tokenizer
from ocellus.errors import CheckpointError


@pytest.mark.parametrize("name", ["tokenizer_config.json", "special_tokens_map.json"])
@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "3"])
def test_non_object_json_is_a_checkpoint_error(name, content, tmp_path):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ocellus.default_model_dir() / f, tmp_path / f)
    (tmp_path / name).write_text(content)
    with pytest.raises(CheckpointError, match=f"{name} must hold a JSON object"):
        Tokenizer.from_dir(tmp_path)
