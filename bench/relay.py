"""A minimal asyncio + uvloop byte relay: the floor a Python proxy can reach.

Per accepted connection it opens one upstream connection and copies bytes both ways, with write
backpressure (a full write buffer on one leg pauses reading on the other) and TCP_NODELAY. No
parsing, no FIX. With ``--tls`` it terminates mutual TLS towards the client and re-originates
mutual TLS towards the upstream, as fixproxy does (same contexts: ``fixproxy.tls``).

    python bench/relay.py --upstream 127.0.0.1:9000 [--listen 127.0.0.1:0]
        [--tls --server-cert C --server-key K --client-cert C --client-key K --ca CA]

Prints ``listening <port>`` on stdout when ready; runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fixproxy.proxy import ReadsIntoBuffer  # noqa: E402  (after the sys.path line above)

HIGH_WATER = 1 << 20
# One read buffer for every TLS leg (one loop, one thread): each read is copied out in the callback
# that filled it. A BufferedProtocol because, for a plain Protocol, uvloop's TLS layer allocates
# 256 KiB per read (twice: the second read finds nothing), which glibc often serves with an mmap, a
# page fault and a munmap; fixproxy's TLS legs read the same way (fixproxy/proxy.py). Plain TCP
# legs stay Protocols: uvloop reads them into a buffer of its own.
_VIEW = memoryview(bytearray(256 * 1024))


def _nodelay(transport: Any) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Leg(asyncio.BaseProtocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.peer: _Leg | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        _nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Downstream(_Leg):
    """The client side: what it sends before the upstream leg is connected is held (reading is
    paused too, but uvloop may deliver a first read anyway)."""

    def __init__(self, upstream: tuple[str, int], ctx: ssl.SSLContext | None, hostname: str | None) -> None:
        super().__init__()
        self.upstream = upstream
        self.ctx = ctx
        self.hostname = hostname
        self.pending: list[bytes] | None = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        transport.pause_reading()
        asyncio.get_running_loop().create_task(self._connect())

    def data_received(self, data: bytes) -> None:
        if self.pending is None:
            self.peer.transport.write(data)  # type: ignore[union-attr]
        else:
            self.pending.append(data)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(Leg if self.ctx is None else TlsLeg, *self.upstream, ssl=self.ctx,
                                                 server_hostname=self.hostname if self.ctx else None)
        except Exception as exc:
            print(f"relay: upstream connect failed: {exc}", file=sys.stderr)
            self.transport.close()
            return
        if self.transport.is_closing():
            up.transport.close()
            return
        up.peer = self
        self.peer = up
        pending, self.pending = self.pending, None
        if pending:
            up.transport.write(b"".join(pending))
        self.transport.resume_reading()


class Leg(_Leg, asyncio.Protocol):
    pass


class PlainDownstream(Downstream, asyncio.Protocol):
    pass


class TlsLeg(ReadsIntoBuffer, _Leg):
    view = _VIEW


class TlsDownstream(ReadsIntoBuffer, Downstream):
    view = _VIEW


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server_ctx = client_ctx = None
    if args.tls:
        from fixproxy import tls as tlsmod

        server_ctx = tlsmod.server_context(args.server_cert, args.server_key, args.ca)
        client_ctx = tlsmod.client_context(args.client_cert, args.client_key, args.ca)
    host, port = args.listen.rsplit(":", 1)
    uhost, uport = args.upstream.rsplit(":", 1)
    upstream = (uhost, int(uport))
    downstream = PlainDownstream if server_ctx is None else TlsDownstream
    server = await loop.create_server(lambda: downstream(upstream, client_ctx, args.server_hostname),
                                      host, int(port), ssl=server_ctx, backlog=2048)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--tls", action="store_true", help="mutual TLS on both legs")
    ap.add_argument("--server-cert")
    ap.add_argument("--server-key")
    ap.add_argument("--client-cert")
    ap.add_argument("--client-key")
    ap.add_argument("--ca")
    ap.add_argument("--server-hostname", default="localhost")
    args = ap.parse_args(argv)
    if args.tls and not all((args.server_cert, args.server_key, args.client_cert, args.client_key, args.ca)):
        ap.error("--tls needs --server-cert --server-key --client-cert --client-key --ca")
    import uvloop

    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
