"""README.md's Python VLM example runs as written (the snippet is read from README.md, so the docs cannot go stale):
on the embedded default model it prints the answer `ocellus generate --image` gives for the same question."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from PIL import Image, ImageDraw

import ocellus
from ocellus.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def vlm_snippet() -> str:
    """The python block of "## Use" that calls the processor with images."""
    use = README.read_text().split("## Use", 1)[1].split("\n## ", 1)[0]
    [block] = [b for b in re.findall(r"```python\n(.*?)```", use, re.S) if "images=" in b]
    return block


def test_readme_vlm_snippet_runs_and_matches_the_cli(tmp_path, monkeypatch, capsys):
    code = vlm_snippet()
    assert "ocellus.load_processor(" in code and "proc(messages=" in code and "model.generate(" in code
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(220, 40, 40))
    monkeypatch.chdir(tmp_path)
    image.save("photo.png")                            # the file the snippet names
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {})
    answer = printed.getvalue().strip()
    [question] = re.findall(r'"text": "([^"]+)"', code)
    max_new = re.search(r"max_new_tokens=(\d+)", code).group(1)
    capsys.readouterr()
    assert main(["generate", "--model", str(ocellus.default_model_dir()), "--image", "photo.png",
                 "--max-new-tokens", max_new, question]) == 0
    assert answer and answer == capsys.readouterr().out.strip()
