"""`ocellus.save(model, dir, processor=...)` writes the image / video processor settings the processor was read
with, so that the saved checkpoint's processor is the loaded one: before, only the tokenizer, the chat template and
processor_config.json were written, and `ocellus.load_processor` on the saved dir returned a bare Tokenizer (the
images' side silently gone)."""
import json
import shutil
from pathlib import Path

import torch
from PIL import Image
from safetensors.numpy import load_file as load_numpy

import ocellus
from ocellus.data.processor import Processor
from ocellus.hub.processor_files import write_processor_files

VIDEO_FIXTURE = Path(__file__).resolve().parents[1] / "parity" / "fixtures" / "qwen2_vl_video"


def _same_inputs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k], k


def test_the_default_model_saved_with_its_processor_reopens_with_it(tmp_path):
    src = ocellus.default_model_dir()
    model, proc = ocellus.load(src), ocellus.load_processor(src)
    ocellus.save(model, tmp_path, processor=proc)
    again = ocellus.load_processor(tmp_path)
    assert isinstance(again, Processor)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text()) == \
        json.loads((Path(src) / "preprocessor_config.json").read_text())
    image = Image.new("RGB", (61, 40), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    _same_inputs(proc(messages=[messages], images=[image]), again(messages=[messages], images=[image]))


def test_a_video_models_video_settings_are_written_back(tmp_path):
    """Qwen2-VL's video processor has its own pixel budget (video_preprocessor_config.json): the rewritten dir
    shrinks the clip as the source does."""
    proc = ocellus.load_processor(VIDEO_FIXTURE)
    shutil.copy(VIDEO_FIXTURE / "config.json", tmp_path / "config.json")
    write_processor_files(proc, tmp_path, "qwen2_vl")
    proc.tokenizer.save(tmp_path)
    assert (tmp_path / "video_preprocessor_config.json").exists()
    frames = load_numpy(str(VIDEO_FIXTURE / "frames.safetensors"))["frames_b"]
    clip = [Image.fromarray(f) for f in frames]
    messages = [[{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "and this one?"}]}]]
    _same_inputs(proc(messages=messages, videos=[clip]), ocellus.load_processor(tmp_path)(messages=messages, videos=[clip]))
