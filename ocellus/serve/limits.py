"""The server's limits and access policy, in one frozen config (every field is a `ocellus serve` flag).

Each limit answers a bad or hostile request with a 4xx before it costs model time:
request bytes (413), images per request, pixels per image and per request (400, checked on the
image headers before any is decoded), prompt text bytes (400, before tokenizing), max_tokens (400),
videos per request, frames, decoded pixels and encoded bytes per video (400, counted while the frames
are read: a file with more frames than the limit is refused at the first frame over it), a full queue (429), the request timeout (504 / a streamed error), the API key (401), and the browser
guards (serve/guards.py: Host 400, Origin 403, content type 415, idle connections closed). Decoding
and tokenizing run for at most `preprocess_concurrency` requests at once, so memory is bounded by
that many request budgets. docs/SERVING.md lists them with their defaults.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ocellus.errors import ConfigError, positive_int

API_KEY_ENV = "OCELLUS_API_KEY"


@dataclass(frozen=True)
class ServeLimits:
    api_key: str | None = None             # None: no auth (the CLI also reads $OCELLUS_API_KEY)
    max_request_bytes: int = 20 * 2**20    # whole HTTP body, base64 images included
    max_images: int = 8                    # image parts per request
    max_image_pixels: int = 4096 * 4096    # width * height of one image, read from its header
    max_request_pixels: int = 4096 * 4096  # summed over a request's images, from their headers, before decoding
    max_videos: int = 2                    # video_url parts per request
    max_video_frames: int = 64             # frames of one video (counted while decoding)
    max_video_pixels: int = 64 * 640 * 480  # frames x width x height of one decoded video
    max_video_bytes: int = 8 * 2**20       # one encoded video (a data URL's payload, a file, an http body)
    prompt_bytes_per_token: int = 8        # text over this x the context length is refused before tokenizing
    preprocess_concurrency: int = 2        # requests decoding images / tokenizing at the same time
    max_tokens: int = 1024                 # the most a request may ask for (and the default cap)
    max_n: int = 4                         # choices per request
    request_timeout_s: float = 120.0       # from arrival to the last token, queue wait included
    max_queue: int = 64                    # waiting requests beyond this get 429
    slots: int = 16                        # rows decoded together (1 = one request at a time)
    max_context: int | None = None         # tokens per slot; None: the model's context
    prefill_chunk: int | None = 256        # prompt tokens prefilled per engine step (None: whole prompts)
    allow_http_images: bool = False        # fetch http(s) image URLs (public addresses only)
    http_timeout_s: float = 10.0
    http_max_bytes: int = 10 * 2**20
    allowed_image_dir: Path | None = None  # file:// URLs only under this directory
    allowed_hosts: tuple[str, ...] = ()    # Host / Origin names served besides localhost and the bound address
    idle_timeout_s: float = 5.0            # a connection must complete each request head within this

    def __post_init__(self):
        for name in ("max_request_bytes", "max_images", "max_image_pixels", "max_request_pixels", "max_videos",
                     "max_video_frames", "max_video_pixels", "max_video_bytes", "max_tokens",
                     "max_n", "max_queue", "slots", "http_max_bytes", "prompt_bytes_per_token",
                     "preprocess_concurrency"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"serve limit {name} must be an int >= 1, got {v!r}")
        positive_int(self.prefill_chunk, "serve limit prefill_chunk", optional=True)
        for name in ("request_timeout_s", "http_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"serve limit {name} must be > 0, got {getattr(self, name)!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty; pass a non-empty --api-key or leave it unset")
        if self.allowed_image_dir is not None:
            d = Path(self.allowed_image_dir).resolve()
            if not d.is_dir():
                raise ConfigError(f"--allow-image-dir {self.allowed_image_dir} is not a directory")
            object.__setattr__(self, "allowed_image_dir", d)

    @staticmethod
    def key_from_env(given: str | None) -> str | None:
        return given if given is not None else (os.environ.get(API_KEY_ENV) or None)
