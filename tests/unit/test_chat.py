"""ChatSession keeps multi-turn history (images included), `ocellus chat` works on piped stdin with
/image, /reset and /quit, a bad /image (missing, truncated, too big) prints one error line and the session
goes on (exit 2 at the end), a bad --image ends the command, a reply is capped to the context left, the
embedded model answers two questions with every default, and `ocellus generate --image` answers about an
image. The checkpoint is a tiny random LLaVA built with ocellus itself (tokenizer trained here, CLIP-style
preprocessor_config.json written by hand)."""
import io
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ocellus
from ocellus.chat import ChatSession
from ocellus.cli import main
from ocellus.data.shapes import ShapesConfig, make_qa, make_scene, render
from ocellus.demo import _correct
from ocellus.errors import InputError

SPECIALS = ["<pad>", "<s>", "</s>", "<image>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'].upper() + ': ' }}"
            "{% for p in m['content'] %}{% if p['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ p['text'] }}"
            "{% endif %}{% endfor %}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def make_tiny_llava(path, seed=0):
    """A tiny LLaVA checkpoint dir: CLIP ViT 32px/8px patches (16 image tokens), Llama decoder, BPE tokenizer."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from ocellus.models.families.llava.modeling import build_llava
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["What is in the picture? A red circle left of a blue square."] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cfg = dict(architectures=["LlavaForConditionalGeneration"], model_type="llava",
               image_token_index=raw.token_to_id("<image>"), vision_feature_layer=-2,
               vision_feature_select_strategy="default",
               vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
               text_config=dict(model_type="llama", vocab_size=raw.get_vocab_size(), hidden_size=48,
                                intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=512, eos_token_id=None,
                                pad_token_id=raw.token_to_id("<pad>")))
    torch.manual_seed(seed)
    ocellus.save(build_llava(cfg), path)
    raw.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(dict(
        tokenizer_class="PreTrainedTokenizerFast", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        image_token="<image>", chat_template=TEMPLATE)))
    (path / "preprocessor_config.json").write_text(json.dumps(dict(
        image_processor_type="CLIPImageProcessor", do_resize=True, size={"shortest_edge": 32}, do_center_crop=True,
        crop_size={"height": 32, "width": 32}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711], resample=3)))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / "good.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(d / "second.png")
    data = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(data[:len(data) // 2])
    return d


def _expected_reply(model, proc, messages, images, n):
    batch = proc(messages=messages, images=images)
    out = model.generate(batch["input_ids"], pixel_values=batch["pixel_values"], max_new_tokens=n)
    return proc.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def test_session_keeps_history_with_images_and_resets(tiny, images):
    model, proc = ocellus.load(tiny), ocellus.load_processor(tiny)
    session = ChatSession(model, proc, max_new_tokens=5)
    first = "".join(session.send("What is in the picture?", [images / "good.png"]))
    second = "".join(session.send("And the colour?", [images / "second.png"]))
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert len(session.images) == 2
    # the second reply is what the model says to the whole conversation, both images included
    history = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": first.strip()}]},
               {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And the colour?"}]}]
    assert second == _expected_reply(model, proc, history, [images / "good.png", images / "second.png"], 5)
    session.reset()
    assert session.messages == [] and session.images == []
    again = "".join(session.send("What is in the picture?", [images / "good.png"]))
    assert again == first  # greedy, same context after the reset
    system = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]
    briefed = ChatSession(model, proc, system="Be brief.", max_new_tokens=2)
    assert briefed.messages == system                   # the system message opens the conversation
    "".join(briefed.send("Hi"))
    briefed.reset()
    assert briefed.messages == system                   # and stays through a reset


def test_bad_image_raises_at_send_and_leaves_history(tiny, images):
    session = ChatSession(ocellus.load(tiny), ocellus.load_processor(tiny), max_new_tokens=3, max_pixels=1000)
    for bad, why in [(images / "absent.png", "no such file"), (images / "truncated.png", "truncated"),
                     (images / "good.png", "over the limit")]:  # 40x50 = 2000 pixels > max_pixels
        with pytest.raises(InputError, match=why):
            session.send("What is it?", [bad])
    assert session.messages == []
    assert "".join(session.send("hello")) is not None and len(session.messages) == 2


def test_cli_chat_piped_stdin(tiny, images, monkeypatch, capsys):
    seen, replies = [], []  # (history length, number of images, text) at each send: what /image and /reset did
    real_send = ChatSession.send

    def spy(self, text, images=()):
        seen.append((len(self.messages), len(images), text))
        deltas = list(real_send(self, text, images))
        replies.append("".join(deltas))
        return iter(deltas)
    monkeypatch.setattr(ChatSession, "send", spy)
    script = "\n".join([f"/image {images / 'good.png'}", "What is in the picture?",
                        f"/image {images / 'truncated.png'}", "Still there?",
                        f"/image {images / 'absent.png'}", "/reset", "hello", "/quit", "never read"]) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert main(["chat", "--model", str(tiny), "--max-new-tokens", "4"]) == 2  # the session went on; errors: exit 2
    out, err = capsys.readouterr()
    assert [(n, k, t) for n, k, t in seen] == [(0, 1, "What is in the picture?"), (2, 0, "Still there?"),
                                               (0, 0, "hello")]
    assert out == "".join(reply + "\n" for reply in replies)  # stdout: one streamed reply per user turn
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 2 and "truncated.png" in errors[0] and "absent.png" in errors[1]
    assert "history cleared" in err


def test_cli_chat_reads_until_eof_and_refuses_too_big_images(tiny, images, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond"))  # no /quit, no final newline
    assert main(["chat", "--model", str(tiny), "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.count("\n") == 2
    monkeypatch.setattr(sys, "stdin", io.StringIO("first\nsecond"))
    assert main(["chat", "--model", str(tiny), "--max-new-tokens", "2", "--max-image-pixels", "1000",
                 "--image", str(images / "good.png")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "max_pixels" in err and len(err.strip().split("\n")) == 1


@pytest.mark.parametrize("bad", ["absent.png", "truncated.png"])
def test_cli_chat_bad_image_argument_is_an_error_not_an_answer_without_it(tiny, images, bad, monkeypatch, capsys):
    """`--image` is part of the command: a file that cannot be used ends it (exit 2, one line naming the
    path) before any question is read, instead of answering as if no image had been given."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is in the picture?\n"))
    assert main(["chat", "--model", str(tiny), "--max-new-tokens", "2", "--image", str(images / bad)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and str(images / bad) in err and "Traceback" not in err


def test_reply_is_capped_to_the_context_left_and_a_full_context_is_an_error(tiny, monkeypatch):
    """max_new_tokens beyond what the context leaves after the conversation is capped, not refused;
    only a conversation that fills the context is an error (history untouched, saying how to go on)."""
    generate = sys.modules["ocellus.infer.generate"]  # the module (ocellus.infer.generate is also a function)
    model, proc = ocellus.load(tiny), ocellus.load_processor(tiny)
    asked = []

    def spy(model, tok, ids, *args, **kw):  # what the session asks the engine for (no need to decode it)
        asked.append((ids.shape[1], kw["max_new_tokens"]))
        return iter(["ok"])
    monkeypatch.setattr(generate, "stream", spy)
    session = ChatSession(model, proc, max_new_tokens=10 * model.max_context)
    "".join(session.send("What is in the picture?"))
    assert asked == [(asked[0][0], model.max_context - asked[0][0])]
    "".join(ChatSession(model, proc, max_new_tokens=3).send("hello"))  # below the room left: asked as given
    assert asked[-1][1] == 3
    history = list(session.messages)
    with pytest.raises(InputError, match="fills the model's context.*/reset"):
        session.send("circle " * model.max_context)
    assert session.messages == history
    hello = asked[-1][0]                     # a prompt that exactly fills the context leaves no token to reply
    monkeypatch.setattr(type(model), "max_context", property(lambda self: hello))
    with pytest.raises(InputError, match="fills the model's context"):
        "".join(ChatSession(model, proc, max_new_tokens=3).send("hello"))


def _shapes_image_and_questions(path):
    """A generated shapes scene at the default model's image size and two questions about it with
    their true answers, asked plainly as a user types them (no short-answer suffix)."""
    cfg = ShapesConfig(image_size=48, seed=777, min_size=max(0.18, 6.5 / 48))
    rng = np.random.default_rng([cfg.seed, 0])
    scene = make_scene(rng, cfg)
    render(scene).save(path)
    return [(q, a) for _, q, a in (make_qa(rng, scene, cfg, t) for t in ("colour", "shape"))]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stdin", [io.StringIO, _Terminal], ids=["piped", "interactive"])
def test_default_model_answers_two_questions_with_the_chat_defaults(tmp_path, stdin, monkeypatch, capsys):
    """`ocellus chat --image X` with every default (the embedded model, whose context is 256 tokens, and
    max_new_tokens 256): both questions of the conversation are answered, the second one correctly."""
    (q1, a1), (q2, a2) = _shapes_image_and_questions(tmp_path / "scene.png")
    monkeypatch.setattr(sys, "stdin", stdin(f"{q1}\n{q2}\n"))
    assert main(["chat", "--image", str(tmp_path / "scene.png")]) == 0
    out, err = capsys.readouterr()
    answers = [line.removeprefix("> ").strip() for line in out.splitlines() if line.removeprefix("> ").strip()]
    assert "error" not in err and len(answers) == 2 and all(answers), (out, err)
    assert _correct(answers[0], a1) and _correct(answers[1], a2), (answers, a1, a2)


def test_cli_generate_with_image(tiny, images, capsys):
    args = ["generate", "--model", str(tiny), "--image", str(images / "good.png"), "--max-new-tokens", "5",
            "What is in the picture?"]
    assert main(args) == 0
    model, proc = ocellus.load(tiny), ocellus.load_processor(tiny)
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    assert capsys.readouterr().out == _expected_reply(model, proc, conv, [images / "good.png"], 5) + "\n"
    assert main(args[:-1] + ["--num-beams", "2", "What?"]) == 0
    assert main(["generate", "--model", str(tiny), "--image", str(images / "truncated.png"), "hi"]) == 2
    assert "InputError" in capsys.readouterr().err


def test_text_only_checkpoint_chats_and_refuses_images(tmp_path, images, monkeypatch, capsys):
    from ocellus.demo import make_tiny_checkpoint
    text_only = make_tiny_checkpoint(tmp_path / "text")
    session = ChatSession(ocellus.load(text_only), ocellus.load_processor(text_only), max_new_tokens=3)
    replies = ["".join(session.send("hello there")).strip(), "".join(session.send("and again")).strip()]
    expected = [role for reply in replies if reply for role in ("user", "assistant")]  # an empty reply leaves no turn
    assert [m["role"] for m in session.messages] == expected and [m["content"][0]["text"] for m in
                                                                  session.messages[1::2]] == [r for r in replies if r]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/image {images / 'good.png'}\nhi\n"))
    assert main(["chat", "--model", str(text_only), "--max-new-tokens", "2"]) == 2
    assert "text-only" in capsys.readouterr().err
