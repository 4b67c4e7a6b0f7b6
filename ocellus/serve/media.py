"""Image URLs of a chat request -> checked PIL images, under the server's URL and file policies.

`image_url.url` may be
- a data URL `data:image/png|jpeg|webp|gif;base64,...`: always accepted;
- `http(s)://...`: only with `--allow-http-images`. The host must resolve to public addresses only
  (loopback, private, link-local, multicast and reserved ranges are refused, which blocks the
  classic SSRF to cloud metadata or internal services), the connection goes to the address that
  was checked (no second DNS lookup to race), redirects are not followed, and the body is read
  with a timeout and a byte cap;
- `file:///abs/path`: only with `--allow-image-dir DIR`, and only for files whose resolved path
  (symlinks followed) lies inside DIR.
Anything else is refused. Every refusal is an InputError naming the image ("messages[1].content[2]")
and the rule. `fetch_images` reads every image's header (Image.open is lazy) before it decodes any:
one image over `max_image_pixels`, or images adding up to more than `max_request_pixels`, are refused
before a pixel is decoded; decoding goes through `data/image.load_image`.

`video_url.url` follows the same URL and file rules (data URLs of the animated types Pillow decodes:
image/gif, image/png (APNG), image/webp). `fetch_videos` refuses an encoded video over `max_video_bytes`,
then decodes it through `data/video_file.load_video` under the frame and pixel limits, which name the
server's flags (--max-video-frames, --max-video-pixels, --max-image-pixels per frame).
"""
from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

from ocellus.data.data_url import data_url_bytes
from ocellus.data.image import load_image
from ocellus.data.video import Video
from ocellus.data.video_file import load_video
from ocellus.errors import InputError
from ocellus.serve.limits import ServeLimits

DATA_URL_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif")
VIDEO_DATA_URL_TYPES = ("image/gif", "image/png", "image/apng", "image/webp")   # animated; no FFmpeg here
VIDEO_LIMIT_FLAGS = {"max_frames": "--max-video-frames", "max_total_pixels": "--max-video-pixels",
                     "max_frame_pixels": "--max-image-pixels"}


def fetch_images(parts: list[tuple[str, str]], limits: ServeLimits) -> list[Image.Image]:
    """(url, where) per image part -> RGB images; InputError naming the part when one is refused, unreadable,
    or the images add up to more pixels than the request's budget (decided on the headers alone)."""
    sources = [(_source(url, where, limits), where) for url, where in parts]
    total = 0
    for src, where in sources:
        total += _header_pixels(src, where, limits)
        if total > limits.max_request_pixels:
            raise InputError(f"{where}: the request's images add up to {total:,} pixels, over this server's budget of "
                             f"{limits.max_request_pixels:,} per request (--max-request-pixels); send smaller images")
    return [load_image(src, name=where, max_pixels=limits.max_image_pixels) for src, where in sources]


def fetch_image(url: str, where: str, limits: ServeLimits) -> Image.Image:
    """One image part's URL -> RGB image (InputError naming `where` when refused or unreadable)."""
    return fetch_images([(url, where)], limits)[0]


def fetch_videos(parts: list[tuple[str, str]], limits: ServeLimits) -> list[Video]:
    """(url, where) per video part -> decoded videos; InputError naming the part and the limit it broke (the
    encoded size first, then frames and pixels while decoding)."""
    out = []
    for url, where in parts:
        src = _source(url, where, limits, kind="video")
        size = len(src) if isinstance(src, bytes) else Path(src).stat().st_size
        if size > limits.max_video_bytes:
            raise InputError(f"{where}: the video is {size:,} bytes, over this server's limit of "
                             f"{limits.max_video_bytes:,} per video (--max-video-bytes)")
        out.append(load_video(src, name=where, max_frames=limits.max_video_frames,
                              max_total_pixels=limits.max_video_pixels, max_frame_pixels=limits.max_image_pixels,
                              names=VIDEO_LIMIT_FLAGS))
    return out


def _header_pixels(src, where: str, limits: ServeLimits) -> int:
    """width * height from the header only. An image whose header is unreadable or over the per-image limit
    goes to load_image now, which refuses it (before decoding) with the precise reason."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as img:
            pixels = img.width * img.height
    except Exception:  # noqa: BLE001 - load_image below says what is wrong with it
        pixels = None
    if pixels is None or pixels > limits.max_image_pixels:
        load_image(src, name=where, max_pixels=limits.max_image_pixels)
        raise InputError(f"{where}: the image header cannot be read")  # load_image refused nothing: a safe stop
    return pixels


def _source(url: str, where: str, limits: ServeLimits, kind: str = "image") -> bytes | str:
    """The encoded image (kind "video": video) behind a URL (bytes, or a checked path for file://), nothing
    decoded."""
    if not isinstance(url, str) or not url:
        raise InputError(f"{where}: {kind}_url.url must be a non-empty string")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "data":
        types = DATA_URL_TYPES if kind == "image" else VIDEO_DATA_URL_TYPES
        hint = "" if kind == "image" else " (animated; this server decodes no MP4 / WebM: convert the clip)"
        return data_url_bytes(url, where, types, f"data URLs must be base64 {kind}s of type {', '.join(types)}{hint}")
    if scheme in ("http", "https"):
        if not limits.allow_http_images:
            raise InputError(f"{where}: http(s) image URLs are disabled on this server (start it with "
                             f"--allow-http-images); send the image as a base64 data URL")
        return _http_get(url, where, limits)
    if scheme == "file":
        if limits.allowed_image_dir is None:
            raise InputError(f"{where}: file:// URLs are disabled on this server (start it with --allow-image-dir DIR)")
        return str(_allowed_file(url, where, limits.allowed_image_dir))
    raise InputError(f"{where}: unsupported image URL scheme {scheme[:32]!r}: use a data URL"
                     + (", http(s)" if limits.allow_http_images else "")
                     + (" or file://" if limits.allowed_image_dir else ""))


def _allowed_file(url: str, where: str, root: Path) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise InputError(f"{where}: file URLs must be local (file:///path), got host {parts.netloc!r}")
    path = Path(unquote(parts.path)).resolve()
    if not path.is_relative_to(root):
        raise InputError(f"{where}: {path} is outside the allowed image directory {root}")
    if not path.is_file():
        raise InputError(f"{where}: no such file {path}")
    return path


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _http_get(url: str, where: str, limits: ServeLimits) -> bytes:
    parts = urlsplit(url)
    host, secure = parts.hostname, parts.scheme.lower() == "https"
    if not host:
        raise InputError(f"{where}: the image URL has no host")
    port = parts.port or (443 if secure else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InputError(f"{where}: cannot resolve {host!r} ({e})") from e
    addresses = sorted({info[4][0] for info in infos})
    private = [a for a in addresses if not is_public(a)]
    if private:
        raise InputError(f"{where}: {host!r} resolves to non-public address(es) {private}; only public hosts are "
                         f"fetched")
    conn = _PinnedConnection(host, addresses[0], port, secure, limits.http_timeout_s)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", target, headers={"Host": parts.netloc, "User-Agent": "ocellus-serve",
                                             "Accept": "image/*"})
        resp = conn.getresponse()
        if 300 <= resp.status < 400:
            raise InputError(f"{where}: the image URL answered a redirect ({resp.status}); redirects are not followed")
        if resp.status != 200:
            raise InputError(f"{where}: the image URL answered HTTP {resp.status}")
        declared = resp.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > limits.http_max_bytes:
            raise InputError(f"{where}: the image is {int(declared):,} bytes, over the limit of "
                             f"{limits.http_max_bytes:,}")
        body = resp.read(limits.http_max_bytes + 1)
        if len(body) > limits.http_max_bytes:
            raise InputError(f"{where}: the image is over the limit of {limits.http_max_bytes:,} bytes")
        return body
    except (OSError, http.client.HTTPException) as e:
        raise InputError(f"{where}: fetching the image failed ({type(e).__name__}: {e})") from e
    finally:
        conn.close()


class _PinnedConnection(http.client.HTTPSConnection):
    """Connects to the address we checked, while TLS and the Host header use the URL's name."""

    def __init__(self, host: str, address: str, port: int, secure: bool, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address, self.secure = address, secure

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        if self.secure:
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)
