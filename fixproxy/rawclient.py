"""A minimal blocking FIX client that writes whatever bytes it is told to: the hostile peer of
the demo and the adversarial tests (a real engine will not send a bad checksum on request)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterable

from .codec import Decoder, FieldValue, Message, encode
from .session import utc_timestamp


class RawFixClient:
    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str = "localhost", sender: str = "OMS1", target: str = "ATS",
                 begin_string: str = "FIX.4.4", timeout: float = 5.0, source: str | None = None) -> None:
        self.sender = sender
        self.target = target
        self.begin_string = begin_string
        self.seq = 1
        self.decoder = Decoder()
        self.received: list[Message] = []
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=(source, 0) if source else None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = (ssl_context.wrap_socket(sock, server_hostname=server_hostname)
                                    if ssl_context is not None else sock)

    def build(self, msg_type: str, fields: Iterable[tuple[FieldValue, FieldValue]] = (), *,
              seq: int | None = None, sender: str | None = None, possdup: bool = False) -> bytes:
        if seq is None:
            seq = self.seq
            self.seq += 1
        head: list[tuple[FieldValue, FieldValue]] = [(35, msg_type), (49, sender or self.sender),
                                                     (56, self.target), (34, seq)]
        if possdup:
            head.append((43, "Y"))
        head.append((52, utc_timestamp()))
        if possdup:
            head.append((122, utc_timestamp()))
        return encode(self.begin_string, [*head, *fields])

    def send(self, msg_type: str, fields: Iterable[tuple[FieldValue, FieldValue]] = (), **kw: object) -> bytes:
        data = self.build(msg_type, fields, **kw)  # type: ignore[arg-type]
        self.sock.sendall(data)
        return data

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def logon(self, heartbeat: int = 30, extra: Iterable[tuple[FieldValue, FieldValue]] = (),
              wait: float = 5.0) -> Message | None:
        self.send("A", [(98, 0), (108, heartbeat), *extra])
        return self.wait_for(lambda m: m.msg_type == b"A", wait)

    def new_order(self, cl_ord_id: str, symbol: str = "VOD.L", qty: int = 100, price: str = "10.5") -> bytes:
        return self.send("D", [(11, cl_ord_id), (21, "1"), (55, symbol), (54, "1"), (60, utc_timestamp()),
                               (38, qty), (40, "2"), (44, price)])

    def read(self, timeout: float = 0.2) -> list[Message]:
        """Whatever arrives within `timeout`; [] on timeout; raises ConnectionError when closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return []
        except ssl.SSLError as exc:
            raise ConnectionError(str(exc)) from exc
        if not data:
            raise ConnectionError("closed by peer")
        msgs = [m for m in self.decoder.feed(data) if isinstance(m, Message)]
        self.received.extend(msgs)
        return msgs

    def wait_for(self, predicate: object, timeout: float = 5.0) -> Message | None:
        deadline = time.monotonic() + timeout
        for m in self.received:
            if predicate(m):  # type: ignore[operator]
                return m
        while time.monotonic() < deadline:
            for m in self.read(min(0.2, max(0.01, deadline - time.monotonic()))):
                if predicate(m):  # type: ignore[operator]
                    return m
        return None

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the peer closes the connection within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.read(0.2)
            except (ConnectionError, OSError):
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
