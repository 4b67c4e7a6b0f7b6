"""`ocellus chat`'s loop commands (cli.chat_loop), on a recording session: /exit ends the chat as /quit does
(nothing after it is sent), /reset clears the history and the images attached for the next turn."""
import io
import sys

from ocellus.cli import chat_loop


class Recorder:
    def __init__(self):
        self.sent, self.resets = [], 0

    def load_image(self, path):
        return f"image:{path}"

    def reset(self):
        self.resets += 1

    def send(self, line, images):
        self.sent.append((line, list(images)))
        yield "ok"


def _run(monkeypatch, text, images=()):
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    session = Recorder()
    assert chat_loop(session, images) == 0
    return session


def test_exit_ends_the_chat_like_quit(monkeypatch, capsys):
    for word in ("/exit", "/quit"):
        session = _run(monkeypatch, f"hello\n{word}\nnever sent\n")
        assert session.sent == [("hello", [])], word


def test_reset_drops_the_images_attached_for_the_next_turn(monkeypatch, capsys):
    session = _run(monkeypatch, "/image b.png\n/reset\nhello\n/image c.png\nagain\n", images=["a.png"])
    assert session.resets == 1
    assert session.sent == [("hello", []), ("again", ["image:c.png"])]
