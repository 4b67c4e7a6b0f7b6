"""Image URL policies (ocellus/serve/media.py): data URLs, http(s) only when enabled and only to public
addresses, no redirects, a byte cap, file:// only inside the allowed directory."""
from __future__ import annotations

import http.server

import pytest

from ocellus.errors import InputError
from ocellus.serve import media
from ocellus.serve.limits import ServeLimits
from tests.serve.conftest import data_url, loopback_http, shape_image


@pytest.fixture()
def http_server():
    """A loopback HTTP server: /img.png (a PNG), /big (over the cap), /redirect (302 to /img.png), /liar (the PNG
    under a Content-Length over the cap)."""
    import io
    buf = io.BytesIO()
    shape_image().save(buf, format="PNG")
    png = buf.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/img.png")
                self.end_headers()
                return
            body = png if self.path in ("/img.png", "/liar") else b"\0" * 5000
            self.send_response(200)
            self.send_header("Content-Length", str(10 ** 9 if self.path == "/liar" else len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with loopback_http(Handler) as port:
        yield f"http://127.0.0.1:{port}"


def test_data_url_formats():
    for fmt in ("PNG", "JPEG", "WEBP", "GIF"):
        assert media.fetch_image(data_url(shape_image(), fmt), "img", ServeLimits()).size == (48, 48)
    with pytest.raises(InputError, match="data URLs must be base64 images"):
        media.fetch_image("data:image/svg+xml;base64,PHN2Zz4=", "img", ServeLimits())


@pytest.mark.parametrize("address,public", [
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.5", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("::1", False), ("fd00::1", False), ("::ffff:127.0.0.1", False),
    ("0.0.0.0", False), ("224.0.0.1", False), ("8.8.8.8", True), ("2001:4860:4860::8888", True),
    ("::ffff:8.8.8.8", True)])   # an IPv4-mapped address is judged as the IPv4 address it maps
def test_public_address_rule(address, public):
    assert media.is_public(address) is public


def test_http_disabled_by_default_and_private_hosts_refused(http_server):
    with pytest.raises(InputError, match="http\\(s\\) image URLs are disabled"):
        media.fetch_image(http_server + "/img.png", "img", ServeLimits())
    with pytest.raises(InputError, match="non-public address"):  # loopback: the SSRF guard
        media.fetch_image(http_server + "/img.png", "img", ServeLimits(allow_http_images=True))


def test_http_fetch_cap_and_no_redirects(http_server, monkeypatch):
    monkeypatch.setattr(media, "is_public", lambda address: True)  # let the loopback test server count as public
    limits = ServeLimits(allow_http_images=True, http_max_bytes=4000)
    assert media.fetch_image(http_server + "/img.png", "img", limits).size == (48, 48)
    with pytest.raises(InputError, match="redirects are not followed"):
        media.fetch_image(http_server + "/redirect", "img", limits)
    with pytest.raises(InputError, match="over the limit of 4,000"):
        media.fetch_image(http_server + "/big", "img", limits)
    with pytest.raises(InputError, match="1,000,000,000 bytes, over the limit"):   # refused on the header alone
        media.fetch_image(http_server + "/liar", "img", limits)


def test_a_host_with_any_private_address_is_refused(monkeypatch):
    """DNS answers a public and a private address: the host is refused, whichever would be connected to."""
    answers = [(None, None, None, None, (a, 80)) for a in ("1.1.1.1", "10.0.0.1")]
    monkeypatch.setattr(media.socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(InputError, match=r"non-public address\(es\) \['10.0.0.1'\]"):
        media.fetch_image("http://mixed.example/img.png", "img", ServeLimits(allow_http_images=True))


def test_file_urls_only_inside_the_allowed_dir(tmp_path):
    inside = tmp_path / "ok"
    inside.mkdir()
    shape_image().save(inside / "a.png")
    shape_image().save(tmp_path / "secret.png")
    (inside / "link.png").symlink_to(tmp_path / "secret.png")
    limits = ServeLimits(allowed_image_dir=inside)
    assert media.fetch_image((inside / "a.png").as_uri(), "img", limits).size == (48, 48)
    with pytest.raises(InputError, match="file:// URLs are disabled"):
        media.fetch_image((inside / "a.png").as_uri(), "img", ServeLimits())
    with pytest.raises(InputError, match="file URLs must be local"):
        media.fetch_image(f"file://files.example{inside}/a.png", "img", limits)
    for escape in (f"file://{inside}/../secret.png", (inside / "link.png").as_uri()):
        with pytest.raises(InputError, match="outside the allowed image directory"):
            media.fetch_image(escape, "img", limits)


def test_limits_are_inclusive(http_server, monkeypatch):
    """A body of exactly http_max_bytes, and an image of exactly max_image_pixels, are within their limits."""
    import io
    buf = io.BytesIO()
    shape_image().save(buf, format="PNG")
    monkeypatch.setattr(media, "is_public", lambda address: True)
    exact = ServeLimits(allow_http_images=True, http_max_bytes=len(buf.getvalue()))
    assert media.fetch_image(http_server + "/img.png", "img", exact).size == (48, 48)
    with pytest.raises(InputError, match="over the limit"):
        media.fetch_image(http_server + "/img.png", "img",
                          ServeLimits(allow_http_images=True, http_max_bytes=len(buf.getvalue()) - 1))
    url = data_url(shape_image())
    assert media.fetch_image(url, "img", ServeLimits(max_image_pixels=48 * 48)).size == (48, 48)
    with pytest.raises(InputError, match="max_pixels"):
        media.fetch_image(url, "img", ServeLimits(max_image_pixels=48 * 48 - 1))


def test_a_video_exactly_at_max_video_bytes_is_within_it():
    import base64
    import io
    from PIL import Image
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((200, 0, 0), (0, 200, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    raw = buf.getvalue()
    url = "data:image/gif;base64," + base64.b64encode(raw).decode()
    (video,) = media.fetch_videos([(url, "v")], ServeLimits(max_video_bytes=len(raw)))
    assert len(video.frames) == 2
    with pytest.raises(InputError, match="--max-video-bytes"):
        media.fetch_videos([(url, "v")], ServeLimits(max_video_bytes=len(raw) - 1))
