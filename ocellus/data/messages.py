"""Conversations in one normal form, and converters from the dataset formats people have.

The normal form is what the transformers / OpenAI "content parts" style looks like:

    [{"role": "system" | "user" | "assistant",
      "content": [{"type": "text", "text": "..."}, {"type": "image"}, ...]}, ...]

Images are *positions* in the conversation ({"type": "image"} parts, optionally carrying the
image object under "image"); the pixels travel separately, in the order the parts appear. Every
later step (templates, loss masks, image-token expansion) reads this structure, so nothing
downstream has to re-split a rendered string to find out who said what.

Sources converted here:
- plain string content ({"role": "user", "content": "hi"}) -> one text part;
- the LLaVA JSON format (haotian-liu/LLaVA, llava_v1_5_mix665k.json and friends):
  {"id": ..., "image": "x.jpg" | [...], "conversations": [{"from": "human" | "gpt" | "system",
  "value": "<image>\\nWhat is ..."}]} — each "<image>" in a value becomes an image part at that
  position, the text around it is kept verbatim (so the round trip is exact);
- TRL-style rows ({"messages": [...], "images": [...]}, content a string or parts), as used by
  TRL's SFTTrainer / DataCollatorForVisionLanguageModeling.

Every problem raises InputError naming the row and the turn (principle 6): a dataset with a
bad row stops with a message pointing at it, it is never skipped quietly.
"""
import base64
import binascii
from typing import Any, NamedTuple

from ocellus.errors import InputError

ROLES = ("system", "user", "assistant")
LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
LLAVA_SPEAKERS = {"user": "human", "assistant": "gpt", "system": "system"}


class Conversation(NamedTuple):
    """A normalised conversation and its images (file names, PIL images, ...), in part order."""

    messages: list[dict]
    images: list[Any]


def _where(row=None, turn=None) -> str:
    parts = ([f"row {row}"] if row is not None else []) + ([f"turn {turn}"] if turn is not None else [])
    return ", ".join(parts) or "conversation"


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def image_part() -> dict:
    return {"type": "image"}


# Where a part may carry its media, in the order transformers' processor apply_chat_template reads them
# ({"type": "image", "url": ...} is its documented form; "base64" is the raw payload without a data: header).
MEDIA_KEYS = {"image": ("image", "url", "path", "base64"), "video": ("video", "url", "path")}


def part_media(part: dict, where: str = "part"):
    """The image / video a normalised part carries (None if it carries none): the one of its MEDIA_KEYS that is
    set. Two set keys are an InputError (transformers would take both as two images for one placeholder);
    a "base64" payload becomes bytes."""
    found = [k for k in MEDIA_KEYS.get(part["type"], ()) if part.get(k) is not None]
    if len(found) > 1:
        raise InputError(f"{where}: the {part['type']} part carries {' and '.join(map(repr, found))}; "
                         f"give one source per part")
    if not found:
        return None
    src = part[found[0]]
    if found[0] == "base64" and isinstance(src, str) and not src.startswith("data:"):
        try:
            return base64.b64decode(src, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InputError(f"{where}: the image part's 'base64' is not valid base64 ({e})") from e
    return src


def _image_url_part(part: dict, where: str) -> dict:
    """OpenAI's {"type": "image_url", "image_url": {"url": u}} (or "image_url": u) -> {"type": "image", "url": u},
    as transformers' apply_chat_template rewrites it."""
    info = part.get("image_url")
    url = info.get("url") if isinstance(info, dict) else info
    if not isinstance(url, str) or not url:
        raise InputError(f"{where}: an image_url part needs 'image_url': {{'url': str}}, got {info!r}")
    return {"type": "image", "url": url}


def _normalize_content(content, row, turn, videos: bool = False) -> list[dict]:
    if isinstance(content, str):
        return [text_part(content)]
    if not isinstance(content, (list, tuple)):
        raise InputError(f"{_where(row, turn)}: content must be a string or a list of parts, "
                         f"got {type(content).__name__}")
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise InputError(f"{_where(row, turn)}, part {j}: a content part must be a dict, got {type(part).__name__}")
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise InputError(f"{_where(row, turn)}, part {j}: a text part needs a string 'text'")
            parts.append(text_part(part["text"]))
        elif kind == "image" or (kind == "video" and videos):
            parts.append(dict(part))  # keeps an attached image / video object ("image": ...) if there is one
        elif kind == "image_url":
            parts.append(_image_url_part(part, f"{_where(row, turn)}, part {j}"))
        else:
            expected = "'text', 'image', 'image_url' or 'video'" if videos else "'text', 'image' or 'image_url'"
            hint = ("; video parts are read by a video model's processor (Qwen2-VL), not here"
                    if kind == "video" else "")
            raise InputError(f"{_where(row, turn)}, part {j}: unknown content part type {kind!r} "
                             f"(expected {expected}){hint}")
    return parts


def normalize(messages, *, row=None, videos: bool = False) -> list[dict]:
    """Any accepted message list -> the normal form (new dicts; the input is not modified).

    videos: accept {"type": "video"} parts too (only a processor that expands video placeholders asks;
    everywhere else a part is text or an image, and a video part is refused naming where it is).
    Raises InputError for an empty conversation, a message that is not {"role", "content"},
    an unknown role, an unknown part type, or a message with no content at all."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(f"{_where(row)}: a conversation must be a non-empty list of messages")
    out = []
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise InputError(f"{_where(row, turn)}: a message must be a dict with 'role' and 'content'")
        role = message["role"]
        if role not in ROLES:
            raise InputError(f"{_where(row, turn)}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        parts = _normalize_content(message["content"], row, turn, videos)
        if not any(p["type"] != "text" or p["text"] for p in parts):
            raise InputError(f"{_where(row, turn)}: {role} message has empty content")
        out.append({"role": role, "content": parts})
    return out


def count_images(messages) -> int:
    return sum(p["type"] == "image" for m in messages for p in m["content"])


def count_videos(messages) -> int:
    return sum(p["type"] == "video" for m in messages for p in m["content"])


def validate(messages, *, num_images: int | None = None, alternate: bool = False, row=None) -> None:
    """Checks on normalised messages beyond their shape.

    num_images: the number of images supplied with the conversation; it must equal the number
        of image parts (the placeholder/image mismatch that elsewhere silently drops samples).
    alternate: templates such as Vicuna's need an optional system message first, then
        user, assistant, user, ... strictly alternating, starting with the user.
    """
    if num_images is not None and count_images(messages) != num_images:
        raise InputError(f"{_where(row)}: {count_images(messages)} image placeholders in the messages "
                         f"but {num_images} images given")
    if alternate:
        expected = "user"
        for turn, message in enumerate(messages):
            if message["role"] == "system" and turn == 0:
                continue
            if message["role"] != expected:
                raise InputError(f"{_where(row, turn)}: expected role {expected}, got {message['role']} "
                                 "(this template needs an optional system message first, then user and "
                                 "assistant turns alternating, starting with the user)")
            expected = "assistant" if expected == "user" else "user"


# ---- LLaVA JSON ---------------------------------------------------------------------------------

def _split_placeholders(text: str, image_token: str) -> list[dict]:
    """"<image>\\nWhat?" -> [image, text("\\nWhat?")]: text kept verbatim, empty pieces dropped."""
    parts = []
    for k, piece in enumerate(text.split(image_token)):
        if k > 0:
            parts.append(image_part())
        if piece:
            parts.append(text_part(piece))
    return parts


def from_llava(data: dict, *, row=None, image_token: str = "<image>") -> Conversation:
    """One LLaVA-format record -> Conversation. `row` (default: the record's "id") names it in errors."""
    if not isinstance(data, dict):
        raise InputError(f"{_where(row)}: a LLaVA record must be a dict, got {type(data).__name__}")
    row = data.get("id") if row is None else row
    turns = data.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise InputError(f"{_where(row)}: 'conversations' must be a non-empty list")
    images = data.get("image")
    images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
    messages = []
    for turn, entry in enumerate(turns):
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), str):
            raise InputError(f"{_where(row, turn)}: a LLaVA turn must be {{'from': ..., 'value': str}}")
        speaker = entry.get("from")
        if speaker not in LLAVA_ROLES:
            raise InputError(f"{_where(row, turn)}: unknown speaker {speaker!r} (expected human, gpt or system)")
        messages.append({"role": LLAVA_ROLES[speaker], "content": _split_placeholders(entry["value"], image_token)})
    messages = normalize(messages, row=row)
    validate(messages, num_images=len(images), row=row)
    return Conversation(messages, images)


def _joined_text(message: dict, image_token: str) -> str:
    return "".join(image_token if p["type"] == "image" else p["text"] for p in message["content"])


def to_llava(messages, images=(), *, id=None, image_token: str = "<image>") -> dict:
    """Conversation -> LLaVA record; one image is written as a string, several as a list."""
    messages = normalize(messages)
    validate(messages, num_images=len(images), row=id)
    record = {} if id is None else {"id": id}
    if len(images) == 1:
        record["image"] = images[0]
    elif images:
        record["image"] = list(images)
    record["conversations"] = [{"from": LLAVA_SPEAKERS[m["role"]], "value": _joined_text(m, image_token)}
                               for m in messages]
    return record


# ---- TRL rows -----------------------------------------------------------------------------------

def from_trl(data: dict, *, row=None) -> Conversation:
    """{"messages": [...], "images": [...]} -> Conversation.

    Images come from the row's "images" list, or, when it has none, from image objects attached
    to the parts ({"type": "image", "image": pil}); both at once is ambiguous and raises."""
    if not isinstance(data, dict) or "messages" not in data:
        raise InputError(f"{_where(row)}: a TRL row must be a dict with 'messages'")
    messages = normalize(data["messages"], row=row)
    attached = [src for turn, m in enumerate(messages) for j, p in enumerate(m["content"]) if p["type"] == "image"
                and (src := part_media(p, f"{_where(row, turn)}, part {j}")) is not None]
    images = data.get("images")
    if images is not None and attached:
        raise InputError(f"{_where(row)}: images given both in 'images' and inside the content parts; use one")
    images = list(images) if images is not None else attached
    validate(messages, num_images=len(images), row=row)
    return Conversation(messages, images)


def to_trl(messages, images=()) -> dict:
    """Conversation -> {"messages": [...], "images": [...]} with content as parts."""
    messages = normalize(messages)
    validate(messages, num_images=len(images))
    stripped = [{"role": m["role"], "content": [image_part() if p["type"] == "image" else p for p in m["content"]]}
                for m in messages]
    return {"messages": stripped, "images": list(images)}
