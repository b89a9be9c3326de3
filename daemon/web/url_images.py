"""Fetching an API request's `{"type": "url"}` image without becoming a proxy into the device's network.

- Only http and https, to public addresses: every address a host name resolves to must be global unicast
  (no loopback, private, link-local, shared, reserved or multicast address); the connection then goes to the
  address that was checked, so a second DNS answer cannot swap it (DNS rebinding).
- Redirects are followed by hand, at most MAX_REDIRECTS, each hop checked the same way.
- One deadline for the whole fetch (connect, redirects, headers, body), however slowly the server trickles.
- Every refusal and every failure gives the same text, so the answers cannot map the internal network.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from daemon import __version__

REFUSED = "cannot fetch the image URL"
MAX_REDIRECTS = 3
DEADLINE = 10.0  # seconds for the whole fetch
REDIRECTS = (301, 302, 303, 307, 308)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class _Refused(Exception):
    pass


def _resolve(host: str, port: int, allowed: Callable[[Address], bool]) -> tuple[Any, ...]:
    """The socket address to connect to; _Refused unless every address of `host` is allowed."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise _Refused
    for *_, sockaddr in infos:
        if not allowed(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])):
            raise _Refused
    return infos[0][4]


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the checked address, whatever the host name would resolve to now. `pinned` stays set
    after http.client lets go of `sock` (a response that closes the connection), for the read deadline."""

    pinned: socket.socket | None = None

    def __init__(self, host: str, port: int, address: tuple[Any, ...], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = self.pinned = socket.create_connection(self._address[:2], self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    pinned: socket.socket | None = None

    def __init__(self, host: str, port: int, address: tuple[Any, ...], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection(self._address[:2], self.timeout)
        self.sock = self.pinned = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_url(
    url: Any, limit: int, deadline: float = DEADLINE, allowed: Callable[[Address], bool] = is_public
) -> bytes:
    """GET an image URL, at most `limit` bytes; ValueError(REFUSED) on any refusal or failure."""
    if not isinstance(url, str):
        raise ValueError("the value must be an http:// or https:// URL")
    ends = time.monotonic() + deadline
    try:
        for _ in range(MAX_REDIRECTS + 1):
            data, location = _get(url, limit, ends, allowed)
            if location is None:
                return data
            url = urllib.parse.urljoin(url, location)
    except (_Refused, OSError, ValueError, http.client.HTTPException):
        pass
    raise ValueError(REFUSED)


def _left(ends: float) -> float:
    left = ends - time.monotonic()
    if left <= 0:
        raise _Refused
    return left


def _get(url: str, limit: int, ends: float, allowed: Callable[[Address], bool]) -> tuple[bytes, str | None]:
    """One hop: (body, None), or (b"", where it redirects to)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Refused
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _resolve(parts.hostname, port, allowed)
    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    connection = kind(parts.hostname, port, address, timeout=_left(ends))
    try:
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        connection.request("GET", target, headers={"User-Agent": f"edgewatch/{__version__}"})
        response = connection.getresponse()
        if response.status in REDIRECTS:
            location = response.getheader("Location")
            if not location:
                raise _Refused
            return b"", location
        if response.status != 200:
            raise _Refused
        chunks, size = [], 0
        # Since Python 3.11.8 and 3.12.2, the response closes itself (and with it the socket) as soon as its
        # last byte is read, so the socket's timeout may only be set while the response is open.
        while not response.isclosed():
            if connection.pinned is not None:
                connection.pinned.settimeout(_left(ends))
            chunk = response.read1(min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise _Refused
        return b"".join(chunks), None
    finally:
        connection.close()
