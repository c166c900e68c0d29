"""Small helpers the end-to-end tests share (outcomes are awaited, never timed)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fixproxy.demo import Stack

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


# Refused handshakes count toward the brute-force block of 127.0.0.1, which would end every other
# test sharing a proxy: suites that refuse on purpose raise the threshold.
NO_BRUTEFORCE = "\n[auth]\nbruteforce_threshold = 1000\n"


@contextlib.contextmanager
def started_stack(workdir: Path, sessions: dict[str, dict[str, Any]], *, oms: bool = False,
                  extra: str = NO_BRUTEFORCE, **kw: Any) -> Iterator[Stack]:
    """A `Stack` (real ATS engine, fixproxy, optionally the OMS engines) for a module's tests."""
    s = Stack(workdir, list(sessions), sessions=sessions, extra=extra, **kw)
    try:
        s.start(oms=oms)
        yield s
    finally:
        s.stop()
