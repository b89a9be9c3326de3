"""Facts about the host that every Model Monitoring report carries, the same fields Roboflow's block sends."""

from __future__ import annotations

import functools
import platform
import socket
import uuid

# A TEST-NET address (RFC 5737): connecting a UDP socket sends nothing, it only asks the kernel for a route.
_ROUTE_PROBE = ("192.0.2.1", 9)


def _primary_ip() -> str:
    """The address of the interface that carries the default route, else what the hostname resolves to."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(_ROUTE_PROBE)
            return str(probe.getsockname()[0])
    except OSError:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return ""


def _mac_address() -> str:
    return ":".join(f"{uuid.getnode():012x}"[i : i + 2] for i in range(0, 12, 2))


@functools.cache
def host_facts() -> dict[str, str]:
    """Collected once per process: `platform` ... `processor`, in the order the block sends them."""
    return {
        "platform": platform.system(),
        "platform_release": platform.release(),
        "platform_version": platform.version(),
        "architecture": platform.machine(),
        "hostname": socket.gethostname(),
        "ip_address": _primary_ip(),
        "mac_address": _mac_address(),
        # empty on most Linux builds of Python; the machine type is the closest portable answer
        "processor": platform.processor() or platform.machine(),
    }
