"""An Ocellus int8 checkpoint is read only as what its quantization_config says it is: quant_method ocellus_int8 with
bits 8. The same method with other bits (a 4-bit export of a later version, a hand-edited config) is a
CheckpointError naming what is read, not int8 weights read as if they were 8-bit."""
import json

import pytest

import ocellus
from ocellus.errors import CheckpointError
from ocellus.nn.quant import quantize_model


@pytest.fixture(scope="module")
def int8_dir(llama_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("int8")
    ocellus.save(quantize_model(ocellus.load(llama_dir)), path)
    return path


def test_only_bits_8_is_read(int8_dir):
    ocellus.load(int8_dir, quantize="int8")
    cfg = json.loads((int8_dir / "config.json").read_text())
    assert cfg["quantization_config"]["bits"] == 8
    for bits in (4, None):
        cfg["quantization_config"]["bits"] = bits
        (int8_dir / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match="is not one Ocellus reads .*bits 8"):
            ocellus.load(int8_dir, quantize="int8")
