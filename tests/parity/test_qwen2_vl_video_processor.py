"""Ocellus' processor on videos = transformers' Qwen2VLProcessor + Qwen2VLVideoProcessor (5.23.0) on the same
frames: input_ids (each video's <|video_pad|> run between the vision markers, beside an image), attention_mask,
pixel_values_videos and video_grid_thw, for one conversation with a video and an image, a left-padded batch of
two (one video shrunk by smart_resize under the video processor's own pixel budget), and fps sampling (12
frames at 6 fps kept at 2 fps).

transformers' video processor needs torchvision, which cannot be installed beside this project's CPU torch, so
its outputs were computed once in a second environment and committed (fixtures/qwen2_vl_video/expected.safetensors,
by scripts/make_qwen2_vl_video_fixture.py, which says how to rerun it). Frames that need no resize match exactly;
frames smart_resize shrinks are resized by PIL here and by torchvision's antialiased bicubic there, which differ
by one level of 255 on a few pixels (measured: max |diff| 0.015 after normalisation, mean 2e-5 on this case).
"""
import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

import ocellus
from ocellus.data.video import Video, VideoSampling

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "qwen2_vl_video"
CASES = {
    "single": [[("text", "which way does it move?"), ("video", "a"), ("image", "i")]],
    "batch": [[("video", "b"), ("text", "and this one?")], [("text", "first"), ("video", "a")]],
    "sampled": [[("video", "c"), ("text", "count the frames")]],
}   # as scripts/make_qwen2_vl_video_fixture.py builds them
RESIZED_ATOL = {"batch": 0.02}   # video "b" is resized (see the module docstring); everything else is exact


@pytest.fixture(scope="module")
def fixture():
    frames = {k[len("frames_"):]: v for k, v in load_numpy(str(FIXTURE / "frames.safetensors")).items()}
    return ocellus.load_processor(FIXTURE), frames, load_file(str(FIXTURE / "expected.safetensors"))


def _messages(case):
    return [[{"role": "user", "content": [{"type": k} if k != "text" else {"type": "text", "text": v} for k, v in conv]}]
            for conv in case]


@pytest.mark.parametrize("name", list(CASES))
def test_video_inputs_equal_transformers(fixture, name):
    proc, frames, expected = fixture
    case = CASES[name]
    videos = [Video([Image.fromarray(f) for f in frames[v]], fps=6.0 if name == "sampled" else None)
              for conv in case for k, v in conv if k == "video"]
    images = [Image.fromarray(frames[v][0]) for conv in case for k, v in conv if k == "image"] or None
    if name == "sampled":   # transformers' call: do_sample_frames=True, fps=2, the clip's metadata at 6 fps
        proc = _sampling(proc, VideoSampling(do_sample_frames=True, fps=2.0))
    got = proc(messages=_messages(case), images=images, videos=videos)
    want = {k.split(".", 1)[1]: v for k, v in expected.items() if k.startswith(name + ".")}
    for key in ("input_ids", "attention_mask", "video_grid_thw", "image_grid_thw"):
        if key in want:
            assert torch.equal(got[key], want[key]), key
    torch.testing.assert_close(got["pixel_values_videos"], want["pixel_values_videos"],
                               atol=RESIZED_ATOL.get(name, 1e-6), rtol=0)
    if "pixel_values" in want:
        torch.testing.assert_close(got["pixel_values"], want["pixel_values"], atol=1e-6, rtol=0)
    assert set(want) - set(got) == {"mm_token_type_ids"}   # transformers 5's modality mask; the model derives it


def test_the_video_processor_config_is_the_one_used(fixture):
    """The video processor's pixel budget (video_preprocessor_config.json) is not the image one's: clip "b" is
    shrunk to its 32 x 48 budget, while the image processor would keep it larger."""
    proc, frames, expected = fixture
    clip = [Image.fromarray(f) for f in frames["b"]]
    got = proc(messages=_messages(CASES["batch"][:1]), videos=[clip])
    assert got["video_grid_thw"].tolist() == expected["batch.video_grid_thw"][:1].tolist() == [[2, 2, 6]]
    image_budget = proc.image_inputs([clip[0]])[0]["image_grid_thw"].tolist()
    assert image_budget != [[1, 2, 6]]


def _sampling(proc, sampling):
    """A copy of the processor with other frame sampling (transformers' do_sample_frames / fps call arguments)."""
    proc = copy.copy(proc)
    proc._video_inputs = replace(proc._video_inputs, sampling=sampling)
    return proc
