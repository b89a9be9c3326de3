"""URL images: public addresses only, after every redirect, one deadline, one answer for every refusal.

Real HTTP servers on loopback. As loopback is itself refused, the tests that need a server to be reached
allow exactly 127.0.0.1 and use 127.0.0.2 (also loopback, a different address) as the forbidden one.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from daemon.web.url_images import REFUSED, fetch_url, is_public

ONLY_127_0_0_1 = ipaddress.ip_address("127.0.0.1").__eq__
IMAGE = b"\x89PNG" + b"x" * 1000


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/redirect?"):
            self.send_response(302)
            self.send_header("Location", self.path.split("?", 1)[1])
            self.end_headers()
        elif self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            try:
                for byte in IMAGE:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)  # the slow server under test, not synchronisation
            except (BrokenPipeError, ConnectionResetError):  # the client under test gave up, as it should
                pass
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            self.wfile.write(IMAGE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def refused(url: object, **options: object) -> str:
    with pytest.raises(ValueError) as caught:
        fetch_url(url, 10_000, **options)
    return str(caught.value)


def test_an_allowed_address_is_fetched(server: str) -> None:
    assert fetch_url(f"{server}/image.png", 10_000, allowed=ONLY_127_0_0_1) == IMAGE
    assert fetch_url(f"{server}/redirect?/image.png", 10_000, allowed=ONLY_127_0_0_1) == IMAGE


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/image.png",  # loopback
        "http://localhost:{port}/image.png",
        "http://[::1]:{port}/image.png",
        "http://169.254.169.254/latest/meta-data/",  # link-local: cloud metadata
        "http://10.0.0.5/cam.jpg",  # private
        "http://192.168.1.1/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "ftp://127.0.0.1/image.png",
        "file:///etc/passwd",
        "http://no-such-host.invalid/",
    ],
)
def test_internal_addresses_and_other_schemes_are_refused_with_one_text(server: str, url: str) -> None:
    port = server.rsplit(":", 1)[1]
    assert refused(url.format(port=port)) == REFUSED


def test_every_redirect_is_checked_too(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    assert refused(f"{server}/redirect?http://127.0.0.2:{port}/image.png", allowed=ONLY_127_0_0_1) == REFUSED
    assert refused(f"{server}/redirect?ftp://127.0.0.1/x", allowed=ONLY_127_0_0_1) == REFUSED
    assert refused(f"{server}/redirect?/redirect?/redirect?/redirect?/image.png", allowed=ONLY_127_0_0_1) == (
        REFUSED  # more than 3 hops
    )


def test_a_trickling_server_is_cut_off_by_one_overall_deadline(server: str) -> None:
    started = time.monotonic()
    assert refused(f"{server}/trickle", allowed=ONLY_127_0_0_1, deadline=1.0) == REFUSED
    assert time.monotonic() - started < 2.0


def test_a_body_over_the_limit_is_refused(server: str) -> None:
    with pytest.raises(ValueError, match=REFUSED):
        fetch_url(f"{server}/image.png", 100, allowed=ONLY_127_0_0_1)


def test_public_means_global_unicast() -> None:
    assert is_public(ipaddress.ip_address("8.8.8.8"))
    for address in ("100.64.0.1", "224.0.0.1", "0.0.0.0", "::ffff:10.0.0.1", "fc00::1"):
        assert not is_public(ipaddress.ip_address(address)), address
