"""Where the load goes: a sidecar on this machine only, since numbers taken across a network measure the network."""

from __future__ import annotations

import ipaddress
import re


class BenchError(Exception):
    """The benchmark cannot run as asked (bad target, sidecar did not start, model mismatch)."""


def parse_loopback_target(target: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT on loopback; raises BenchError for anything else, without resolving names."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", target.strip())
    if m is None:
        raise BenchError(f"--target {target!r}: expected HOST:PORT, e.g. 127.0.0.1:50051 or [::1]:50051")
    host, port = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
    if not 0 < int(port) < 65536:
        raise BenchError(f"--target {target!r}: port out of range")
    # Names other than localhost are refused rather than resolved: DNS could
    # point anywhere, and this tool only measures loopback.
    if host.lower() != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise BenchError(f"--target {target!r}: {host} is not loopback; the load test only talks to 127.0.0.0/8, ::1 or localhost")
    return host, int(port)

