"""A real Mosquitto broker per test (Debian `mosquitto`, started here, never the system service), and a
paho subscriber that records everything it receives.

Fixtures: `mosquitto` (anonymous, started), `mosquitto_tls` (TLS + password file, started),
`mosquitto_factory` (brokers created stopped, for tests that start them late), `mqtt_subscriber`, and
`tcp_relay` (a cuttable TCP path to a broker, to simulate a network outage), and `mqtt_publisher` (our
MqttPublisher, started against a broker or relay, closed at teardown).
"""

from __future__ import annotations

import contextlib
import getpass
import secrets
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from daemon.config import MqttConfig
from daemon.metrics import Metrics
from daemon.sinks.mqtt import MqttPublisher
from tests.support.daemon import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A self-signed CA and a server certificate it signed for 127.0.0.1 and localhost (openssl CLI)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (
        directory / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        "/CN=edgewatch test CA",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=localhost",
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return TlsFiles(ca=ca, cert=cert, key=key)


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    path.write_text("")
    for user, password in users.items():
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), user, password], check=True, capture_output=True)
    return path


class Mosquitto:
    """One broker on a fixed loopback port: `start()`, `stop()`, `restart()` keep the port. No persistence,
    so a restart forgets every retained message (what a client must cope with)."""

    def __init__(
        self, workdir: Path, *, tls: TlsFiles | None = None, users: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port()
        self.tls = tls
        self.users = users or {}
        self.log_file = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {HOST}",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"user {getpass.getuser()}",  # as root, do not switch to the `mosquitto` user
        ]
        if self.users:
            lines += [
                "allow_anonymous false",
                f"password_file {make_password_file(workdir / 'passwd', self.users)}",
            ]
        else:
            lines.append("allow_anonymous true")
        if tls:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10) -> None:
        assert not self.running, "already running"
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {stderr}{self.log()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its connections but reads nothing (a stalled broker)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class Subscriber:
    """A paho client subscribed to `topic` (default everything), recording every message in arrival order."""

    def __init__(
        self, broker: Mosquitto, topic: str = "#", *, username: str = "", password: str = ""
    ) -> None:
        self.messages: list[Received] = []
        self._changed = threading.Condition()
        client_id = f"test-{uuid.uuid4().hex[:8]}"
        self._marker_topic = f"test-marker/{client_id}"
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if username:
            self._client.username_pw_set(username, password)
        if broker.tls:
            self._client.tls_set(ca_certs=str(broker.tls.ca))
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._client.connect(broker.host, broker.port, keepalive=10)
        self._client.loop_start()
        self._client.subscribe([(topic, 1), (self._marker_topic, 1)])
        if not subscribed.wait(10):
            raise AssertionError("test subscriber: no SUBACK from the broker")

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(Received(message.topic, message.payload, bool(message.retain), message.qos))
            self._changed.notify_all()

    def on(self, topic: str) -> list[Received]:
        with self._changed:
            return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.on(topic)]

    def wait_for(
        self, condition: Callable[[], object], timeout: float = 10, what: str = "condition"
    ) -> object:
        """Wait until `condition()` is truthy (re-checked on every message and every 0.1 s)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = condition()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    topics = sorted({m.topic for m in self.messages})
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; topics seen: {topics}"
                    )
                self._changed.wait(min(remaining, 0.1))

    def wait_payload(self, topic: str, payload: bytes, timeout: float = 10) -> Received:
        """Wait for (and return) the first message on `topic` with exactly `payload`."""

        def found() -> Received | None:
            return next((m for m in self.on(topic) if m.payload == payload), None)

        return self.wait_for(found, timeout, f"{payload!r} on {topic}")  # type: ignore[return-value]

    def sync(self, timeout: float = 10) -> None:
        """Round-trip a marker through the broker: everything it sent us before has then arrived."""
        token = secrets.token_hex(4).encode()
        self._client.publish(self._marker_topic, token, qos=1)
        self.wait_for(lambda: token in self.payloads(self._marker_topic), timeout, "the marker")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class TcpRelay:
    """A loopback TCP relay in front of a broker that can be cut and restored: a network outage between a
    client and a broker that stays up (other clients, and the retained messages, remain)."""

    def __init__(self, target: Mosquitto) -> None:
        self.host = HOST
        self.port = free_port()
        self._target = (target.host, target.port)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen()
        with self._lock:
            self._sockets.append(listener)
        threading.Thread(target=self._accept, args=(listener,), name="relay-accept", daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:  # cut
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(
                    target=self._pump, args=(source, sink), name="relay-pump", daemon=True
                ).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and close the open ones (both ends see the TCP connection end)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def mosquitto_factory(tmp_path: Path):
    """Create brokers (not started); all are stopped at teardown."""
    brokers: list[Mosquitto] = []

    def create(name: str = "broker", **kwargs) -> Mosquitto:
        broker = Mosquitto(tmp_path / name, **kwargs)
        brokers.append(broker)
        return broker

    yield create
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory) -> Mosquitto:
    broker = mosquitto_factory()
    broker.start()
    return broker


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def mosquitto_tls(mosquitto_factory, tls_files: TlsFiles) -> Mosquitto:
    """TLS on loopback with a password file: user `edge`, a random password (broker.users)."""
    broker = mosquitto_factory("tls-broker", tls=tls_files, users={"edge": secrets.token_urlsafe(12)})
    broker.start()
    return broker


@pytest.fixture
def tcp_relay():
    """`tcp_relay(broker)` -> a started TcpRelay to it; cut at teardown."""
    relays: list[TcpRelay] = []

    def create(broker: Mosquitto) -> TcpRelay:
        relay = TcpRelay(broker)
        relay.start()
        relays.append(relay)
        return relay

    yield create
    for relay in relays:
        relay.cut()


@pytest.fixture
def mqtt_subscriber():
    """`mqtt_subscriber(broker, topic="#", username=..., password=...)` -> Subscriber; closed at teardown."""
    subscribers: list[Subscriber] = []

    def subscribe(broker: Mosquitto, topic: str = "#", **kwargs) -> Subscriber:
        subscriber = Subscriber(broker, topic, **kwargs)
        subscribers.append(subscriber)
        return subscriber

    yield subscribe
    for subscriber in subscribers:
        subscriber.close()


@pytest.fixture
def mqtt_publisher():
    """`mqtt_publisher(broker_or_relay, cameras=[...], metrics=..., discovery_state=..., **MqttConfig fields)`
    -> a started MqttPublisher (device `edge-01`); closed at teardown."""
    publishers: list[MqttPublisher] = []

    def start(
        target: Mosquitto | TcpRelay,
        *,
        cameras: tuple[str, ...] = ("cam-1",),
        metrics: Metrics | None = None,
        device: str = "edge-01",
        discovery_state: Path | None = None,
        **fields: object,
    ) -> MqttPublisher:
        config = MqttConfig(host=target.host, port=target.port, **fields)
        metrics = metrics or Metrics()
        publisher = MqttPublisher(config, device, cameras, metrics.mqtt, discovery_state=discovery_state)
        publisher.start()
        publishers.append(publisher)
        return publisher

    yield start
    for publisher in publishers:
        publisher.close(timeout=1)
