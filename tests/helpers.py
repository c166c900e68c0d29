"""Small helpers the end-to-end tests share (outcomes are awaited, never timed)."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

WAIT = 15.0  # generous: the machine is noisy; only outcomes are asserted


def wait(predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll until `predicate()` is truthy or the timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


def handshake_refused(port: int, ctx: ssl.SSLContext, timeout: float = WAIT) -> bool:
    """Connect and read. TLS 1.3: the client finishes its handshake first, so the server's refusal
    shows as EOF or a reset on the first read (no alert is flushed; see fixproxy.tls)."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            s.settimeout(timeout)
            return s.recv(1) == b""
    except (ssl.SSLError, OSError):
        return True
