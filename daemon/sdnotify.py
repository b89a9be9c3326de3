"""A tiny client of systemd's notify protocol (sd_notify(3)), without a dependency.

systemd passes a datagram socket in $NOTIFY_SOCKET (a path, or '@name' for the abstract namespace) and, with
WatchdogSec=, the interval in $WATCHDOG_USEC. Outside systemd every call is a no-op returning False.
"""

from __future__ import annotations

import os
import socket
import time


def _address() -> str | None:
    target = os.environ.get("NOTIFY_SOCKET", "")
    if target.startswith("@"):
        return "\0" + target[1:]
    if target.startswith("/"):
        return target
    return None  # unset, or a transport this client does not speak (vsock)


def notify(state: str) -> bool:
    """Send `state` (newline-separated VAR=value assignments); True if a manager received it."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def ready() -> bool:
    return notify("READY=1")


def reloading() -> bool:
    """A reload starts; systemd waits for the next READY=1 (MONOTONIC_USEC= ties it to the request)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    # One line only: a newline would start another assignment (e.g. MAINPID=) under the caller's name.
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval() -> float | None:
    """Seconds within which systemd expects WATCHDOG=1, or None when no watchdog watches this process."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
