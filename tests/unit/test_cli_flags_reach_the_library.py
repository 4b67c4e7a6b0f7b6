"""Each `ocellus` flag reaches the library call it names, with the documented default: serve's limits (each
flag to its own ServeLimits field), chat's and explain's --max-new-tokens, eval's --image-size, generate's
--max-new-tokens default of 64, -q as --log-level warning. The library calls are replaced by recorders: nothing
is loaded or served."""
from __future__ import annotations

import pytest

import ocellus
from ocellus import cli


def test_quiet_is_log_level_warning():
    parser = cli.build_parser()
    assert parser.parse_args(["-q", "demo"]).log_level == "warning"
    assert parser.parse_args(["demo", "-q"]).log_level == "warning"
    assert parser.parse_args(["-v", "demo"]).log_level == "debug"


SERVE_FLAGS = {   # flag -> (ServeLimits field, a value no other flag is given)
    "--max-request-bytes": ("max_request_bytes", 1001), "--max-images": ("max_images", 3),
    "--max-image-pixels": ("max_image_pixels", 1002), "--max-request-pixels": ("max_request_pixels", 1003),
    "--max-videos": ("max_videos", 5), "--max-video-frames": ("max_video_frames", 6),
    "--max-video-pixels": ("max_video_pixels", 1004), "--max-video-bytes": ("max_video_bytes", 1005),
    "--prompt-bytes-per-token": ("prompt_bytes_per_token", 7), "--preprocess-concurrency": ("preprocess_concurrency", 9),
    "--max-tokens": ("max_tokens", 11), "--max-n": ("max_n", 2), "--max-queue": ("max_queue", 13),
    "--slots": ("slots", 14), "--max-context": ("max_context", 150), "--prefill-chunk": ("prefill_chunk", 17),
}


def test_serve_flags_reach_their_limits(monkeypatch):
    import ocellus.serve.app as app
    seen = {}
    monkeypatch.setattr(app, "serve", lambda model, **kw: seen.update(kw, model=model))
    argv = ["serve", "--model", "m"]
    for flag, (_, value) in SERVE_FLAGS.items():
        argv += [flag, str(value)]
    assert cli.main(argv) == 0
    limits = seen["limits"]
    for flag, (field, value) in SERVE_FLAGS.items():
        assert getattr(limits, field) == value, flag


@pytest.fixture()
def no_model(monkeypatch):
    monkeypatch.setattr(ocellus, "load", lambda *a, **k: "model")
    monkeypatch.setattr(ocellus, "load_processor", lambda *a, **k: "processor")


def test_chat_max_new_tokens_reaches_the_session(monkeypatch, no_model):
    import ocellus.chat
    made = []
    monkeypatch.setattr(ocellus.chat, "ChatSession", lambda model, proc, **kw: made.append(kw) or "session")
    monkeypatch.setattr(cli, "chat_loop", lambda session, images=(), videos=(): 0)
    model = str(ocellus.default_model_dir())
    assert cli.main(["chat", "--model", model, "--max-new-tokens", "7"]) == 0
    assert cli.main(["chat", "--model", model]) == 0
    assert [kw["max_new_tokens"] for kw in made] == [7, 256]


def test_explain_max_new_tokens_reaches_explain(monkeypatch, no_model, capsys):
    import ocellus.viz.attention_map as attention_map
    asked = []

    class Result:
        answer, answer_ids, peak = "red", [1], (0, 0)

        class grid:
            shape = (2, 2)

    monkeypatch.setattr(attention_map, "explain", lambda *a, **kw: asked.append(kw) or Result)
    assert cli.main(["explain", "--model", "m", "--image", "x.png", "--out", "o.png", "--max-new-tokens", "5",
                     "q"]) == 0
    assert cli.main(["explain", "--model", "m", "--image", "x.png", "--out", "o.png", "q"]) == 0
    assert [kw["max_new_tokens"] for kw in asked] == [5, 32]


def test_eval_image_size_reaches_evaluate(monkeypatch):
    import ocellus.eval.harness as harness
    asked = []
    monkeypatch.setattr(harness, "evaluate", lambda model, task, **kw: asked.append(kw))
    assert cli.main(["eval", "--model", "m", "--task", "shapes-vqa", "--image-size", "96", "--n", "3"]) == 0
    assert cli.main(["eval", "--model", "m", "--task", "shapes-vqa"]) == 0
    assert [(kw["image_size"], kw["n"]) for kw in asked] == [(96, 3), (None, 200)]


def test_generate_max_new_tokens_defaults_to_64(monkeypatch, no_model, capsys):
    import importlib
    generate = importlib.import_module("ocellus.infer.generate")   # the package's `generate` is the function
    stop_text = importlib.import_module("ocellus.infer.stop_text")
    asked = []
    monkeypatch.setattr(cli, "_prompt_inputs", lambda proc, prompt, images, raw: ("tok", "ids", {}))
    monkeypatch.setattr(stop_text, "reply_stops", lambda processor, stops: tuple(stops))
    monkeypatch.setattr(generate, "stream", lambda model, tok, ids, **kw: asked.append(kw) or iter(["hi"]))
    assert cli.main(["generate", "--model", "m", "hello"]) == 0
    assert cli.main(["generate", "--model", "m", "--max-new-tokens", "9", "--top-p", "0.5", "hello"]) == 0
    assert [(kw["max_new_tokens"], kw["top_p"], kw["do_sample"]) for kw in asked] == [(64, None, False),
                                                                                        (9, 0.5, False)]
