"""data:<mime>;base64,<payload> URLs (what OpenAI-style chat requests carry for images and clips): the one
parser behind load_image, load_video and the server's media parts, so every door refuses the same way."""
from __future__ import annotations

import base64
import binascii

from ocellus.errors import InputError


def data_url_bytes(url: str, label: str, types: tuple[str, ...], accepts: str) -> bytes:
    """url -> the payload's bytes, for a base64 data URL whose MIME type is one of `types` (an entry ending in
    '/' takes every subtype: "image/"). Anything else is an InputError '<label>: <accepts>, got <header>'
    (`accepts` says what the caller takes); a payload that is not base64 says so."""
    header, _, payload = url.partition(",")
    mime = header[5:].split(";", 1)[0].lower() if header[:5].lower() == "data:" else ""
    known = mime in types or any(t.endswith("/") and mime.startswith(t) for t in types)
    if not known or not header.endswith(";base64"):
        raise InputError(f"{label}: {accepts}, got {header[:48]!r}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{label}: the data URL is not valid base64 ({e})") from e
