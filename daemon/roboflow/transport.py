"""Outbound HTTP of the Roboflow clients: one kept-alive connection, the environment's proxy, a deadline.

- Proxies as curl and requests read them: `https_proxy`/`HTTPS_PROXY` for https URLs (a CONNECT tunnel),
  `http_proxy`/`HTTP_PROXY` for http URLs (the request line carries the absolute URI), `all_proxy`/`ALL_PROXY`
  for either, the lower-case name first; `no_proxy`/`NO_PROXY` lists hosts reached directly (`*`, a domain and
  its subdomains with or without a leading dot, an IP address or a CIDR block, optionally with `:port`).
  Credentials in a proxy URL go in `Proxy-Authorization` and are never logged: errors name the proxy by host.
- One overall deadline per request, from connecting until the last byte of the answer: a server (or proxy)
  that trickles a byte every few seconds is cut off at the deadline, where a socket timeout alone would wait
  forever, since every byte restarts it.
- Every answer is classified for the spools (`Outcome`), and every text leaving here is redacted.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import enum
import http.client
import ipaddress
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timezone
from typing import Any

RETRY_AFTER_MAX = 3600.0  # a Retry-After longer than this is taken as this
RESPONSE_LIMIT = 64 * 1024  # bytes read from any answer
_RETRY_STATUSES = frozenset({408, 429})  # 4xx that mean "later", not "never"


# --- outcomes ------------------------------------------------------------------------------------------


class Outcome(enum.Enum):
    ACCEPTED = "accepted"  # 2xx: delete it from the spool
    RETRY = "retry"  # 5xx, 408, 429, timeout, connection error, odd answer: keep it, try later
    UNAUTHORIZED = "unauthorized"  # 401/403: the key is refused; keep everything, stop sending
    REJECTED = "rejected"  # any other 4xx: this request will never be accepted as it is


@dataclass(frozen=True, slots=True)
class Response:
    outcome: Outcome
    status: int | None  # HTTP status; None when no answer came
    detail: str  # one line for logs, already redacted
    retry_after: float | None = None  # seconds, from Retry-After on 429/503


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.ACCEPTED
    if status in (401, 403):
        return Outcome.UNAUTHORIZED
    if 400 <= status < 500 and status not in _RETRY_STATUSES:
        return Outcome.REJECTED
    return Outcome.RETRY  # 5xx, 408, 429, and the unexpected (1xx/3xx): keep the data


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (as given and as URL-encoded) replaced by `***`."""
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, urllib.parse.quote_plus(secret), urllib.parse.quote(secret, safe="")}:
            text = text.replace(form, "***")
    return text


# --- proxies -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization value, from credentials in the proxy URL
    password: str  # to redact

    def __str__(self) -> str:  # what logs may show: never the credentials
        return f"proxy {self.host}:{self.port}"


def _environment(environ: Mapping[str, str], name: str) -> str:
    return (environ.get(name.lower()) or environ.get(name.upper()) or "").strip()


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    host = host.lower().strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_port = None
        if entry.count(":") == 1:  # host:port (a bare IPv6 entry has several colons)
            entry, _, entry_port_text = entry.partition(":")
            entry_port = int(entry_port_text) if entry_port_text.isdigit() else None
        entry = entry.strip("[]")
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        domain = entry.lstrip(".")
        if host == domain or host.endswith("." + domain):
            return True
    return False


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy a request to `url` goes through, as curl and requests pick it; None: connect directly."""
    environ = os.environ if environ is None else environ
    target = urllib.parse.urlsplit(url)
    scheme = target.scheme.lower()
    host = target.hostname or ""
    port = target.port or (443 if scheme == "https" else 80)
    value = _environment(environ, f"{scheme}_proxy") or _environment(environ, "all_proxy")
    if not value or _bypassed(host, port, _environment(environ, "no_proxy")):
        return None
    if "://" not in value:
        value = "http://" + value  # curl's default proxy scheme
    proxy = urllib.parse.urlsplit(value)
    if proxy.scheme.lower() != "http" or not proxy.hostname:
        raise ValueError(f"the environment's {scheme}_proxy must look like http://[user:password@]host[:port]")
    authorization = None
    user = urllib.parse.unquote(proxy.username or "")
    password = urllib.parse.unquote(proxy.password or "")
    if proxy.username is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        authorization = f"Basic {token}"
    return Proxy(proxy.hostname, proxy.port or 1080, authorization, password)  # 1080: curl's default


# --- the connection ------------------------------------------------------------------------------------


class DeadlineExceeded(TimeoutError):
    pass


class HttpClient:
    """Requests to one origin (`base_url`) over one kept-alive connection; never raises for HTTP or network
    errors: `request` returns a classified `Response`. Thread-safe (one request at a time).

    http.client never follows redirects, so a 3xx cannot pass for success.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        secrets: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("api_url must look like https://host[:port][/path]")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._origin = f"{url.scheme}://{url.netloc.rpartition('@')[2]}"
        self.base_path = url.path.rstrip("/")
        self.proxy = proxy_for(base_url, environ)
        self._timeout = timeout
        self._secrets = [*secrets, self.proxy.password if self.proxy else ""]
        self._headers = dict(headers or {})
        self._io = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Response, Any]:
        """One request to `base_url` + `path`; the answer classified, and its JSON when it is a 2xx."""
        target = f"{self.base_path}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with self._io:
            try:
                answer, raw = self._exchange(method, target, body, {**self._headers, **(headers or {})})
            except (OSError, ValueError, http.client.HTTPException) as exc:
                # some of these messages quote the request line, key included: rephrase, never re-raise
                via = f" (via {self.proxy})" if self.proxy else ""
                detail = f"{type(exc).__name__}: {self.redact(str(exc))}{via}"
                return Response(Outcome.RETRY, None, detail), None
        status = answer.status
        if not 200 <= status < 300:
            text = self.redact(raw[:300].decode("utf-8", "replace").replace("\n", " ").strip())
            reason = self.redact(answer.reason or "")
            retry_after = parse_retry_after(answer.getheader("Retry-After")) if status in (429, 503) else None
            detail = f"HTTP {status} {reason}".rstrip() + (f": {text}" if text else "")
            return Response(classify(status), status, detail, retry_after), None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        return Response(Outcome.ACCEPTED, status, f"HTTP {status}"), payload

    def close(self) -> None:
        with self._io:
            self._disconnect()

    def _exchange(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """One request and its answer; a kept connection the server closed while idle is reopened once."""
        reused = self._connection is not None
        try:
            return self._exchange_once(method, target, data, headers)
        except (ConnectionResetError, BrokenPipeError):  # RemoteDisconnected is a ConnectionResetError
            if not reused:
                raise
            return self._exchange_once(method, target, data, headers)

    def _connect(self) -> http.client.HTTPConnection:
        proxy = self.proxy
        if proxy is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            return kind(self._host, self._port, timeout=self._timeout)
        if self._https:  # CONNECT host:port, then TLS with the origin through the tunnel
            connection = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=self._timeout)
            tunnel_headers = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
            connection.set_tunnel(self._host, self._port, headers=tunnel_headers)
            return connection
        return http.client.HTTPConnection(proxy.host, proxy.port, timeout=self._timeout)

    def _exchange_once(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPResponse, bytes]:
        if self._connection is None:
            self._connection = self._connect()
        connection = self._connection
        if self.proxy is not None and not self._https:  # a plain-HTTP proxy takes the absolute URI
            target = self._origin + target
            if self.proxy.authorization:
                headers = {**headers, "Proxy-Authorization": self.proxy.authorization}
        expired = threading.Event()

        def cut_off() -> None:
            expired.set()
            sock = connection.sock
            if sock is not None:
                # the plain socket's shutdown: wakes a blocked read without touching the TLS state
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

        deadline = threading.Timer(self._timeout, cut_off)
        deadline.daemon = True
        deadline.start()
        try:
            connection.request(method, target, body=data, headers=headers)
            answer = connection.getresponse()
            raw = answer.read(RESPONSE_LIMIT)
        except BaseException as exc:
            self._disconnect()
            if expired.is_set():
                raise DeadlineExceeded(f"timed out: no complete answer within {self._timeout:g} s") from exc
            raise
        finally:
            deadline.cancel()
        if expired.is_set():
            self._disconnect()
            raise DeadlineExceeded(f"timed out: no complete answer within {self._timeout:g} s")
        if not answer.isclosed():  # an answer longer than we read: the connection cannot be reused
            self._disconnect()
        return answer, raw

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
