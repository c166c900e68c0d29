"""A fault-injection TCP proxy for tests (toxiproxy's job, without toxiproxy).

    client --tcp--> FaultProxy(listen_port) --tcp--> target_host:target_port

Like `tlsbridge.TlsBridge` it runs its own asyncio loop in its own thread and is driven
synchronously. Faults apply to every connection, open or future, and can be changed at any time
with `FaultProxy.set`; ``direction`` limits a fault to one way ("up": client to target, "down":
target to client, "both"):

- ``latency`` seconds added to every chunk (delivery order kept), ``jitter`` ± seconds on top;
- ``bandwidth`` bytes per second;
- ``blackhole``: the connection stays open, bytes are accepted and dropped;
- ``slice_bytes`` / ``slice_delay``: deliver in pieces of N bytes with a delay between them;
- ``reset``: connections (open and new) are reset (RST: SO_LINGER 0, then close).

`reset_all` clears every fault (as toxiproxy's reset does); `reset_connections` sends an RST on
every open connection now.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import struct
import threading
import time
from typing import Any

from .threadedserver import ThreadedServer

_CHUNK = 64 * 1024
_DIRECTIONS = ("up", "down")


@dataclasses.dataclass
class Faults:
    latency: float = 0.0
    jitter: float = 0.0
    bandwidth: float = 0.0  # bytes/s; 0 = unlimited
    blackhole: bool = False
    slice_bytes: int = 0  # 0 = whole chunks
    slice_delay: float = 0.0
    reset: bool = False


class _Conn:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.target: asyncio.StreamWriter | None = None

    def rst(self) -> None:
        for side in (self.client, self.target):
            if side is None:
                continue
            sock = side.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            side.transport.abort()


class FaultProxy(ThreadedServer):
    thread_name = "faultproxy"

    def __init__(self, listen_port: int, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1",
                 seed: int | None = None) -> None:
        super().__init__(listen_host, listen_port)
        self.target_host = target_host
        self.target_port = target_port
        self.faults = {d: Faults() for d in _DIRECTIONS}
        self.connections = 0  # accepted so far
        self.resets = 0  # connections reset (by `reset` or `reset_connections`)
        self.errors: list[str] = []
        self._rng = random.Random(seed)
        self._conns: set[_Conn] = set()

    # -- control (any thread) ----------------------------------------------------------------------
    def set(self, direction: str = "both", **faults: Any) -> None:
        """Change faults, e.g. ``set(latency=0.05, slice_bytes=7)``; unnamed faults keep their value."""
        dirs = _DIRECTIONS if direction == "both" else (direction,)
        for d in dirs:
            for k, v in faults.items():
                if not hasattr(self.faults[d], k):
                    raise TypeError(f"unknown fault {k!r}")
                setattr(self.faults[d], k, v)
        if faults.get("reset"):
            self.reset_connections()

    def reset_all(self) -> None:
        """Clear every fault: bytes flow untouched again."""
        self.faults = {d: Faults() for d in _DIRECTIONS}

    def reset_connections(self) -> int:
        """RST every open connection (both sides); returns how many."""
        if self._loop is None:
            return 0
        done = threading.Event()
        count: list[int] = []

        def run() -> None:
            conns = list(self._conns)
            for c in conns:
                c.rst()
            self.resets += len(conns)
            count.append(len(conns))
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)
        return count[0] if count else 0

    @property
    def active(self) -> int:
        return len(self._conns)

    def _abort_connections(self) -> None:
        for c in list(self._conns):
            c.rst()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            if self.faults["up"].reset or self.faults["down"].reset:
                conn.rst()
                self.resets += 1
                return
            try:
                up_reader, conn.target = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port), 10.0)
            except (OSError, TimeoutError) as exc:
                self.errors.append(f"connect to {self.target_host}:{self.target_port} failed: {exc}")
                conn.rst()
                return
            await asyncio.gather(self._pump(reader, conn.target, "up"), self._pump(up_reader, writer, "down"))
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(conn)
            for side in (writer, conn.target):
                if side is not None:
                    side.close()
            self._tasks.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, direction: str) -> None:
        """Read as fast as the source sends; deliver each chunk at its due time (latency/jitter),
        in order, in slices, at the bandwidth set."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = asyncio.ensure_future(self._deliver(queue, sink, direction))
        try:
            while True:
                data = await source.read(_CHUNK)
                if not data:
                    break
                f = self.faults[direction]
                if f.blackhole:
                    continue
                delay = f.latency + (self._rng.uniform(-f.jitter, f.jitter) if f.jitter else 0.0)
                queue.put_nowait((time.monotonic() + max(0.0, delay), data))
                if deliver.done():
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await deliver
            sink.close()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes] | None], sink: asyncio.StreamWriter,
                       direction: str) -> None:
        last = 0.0
        try:
            while (item := await queue.get()) is not None:
                due, data = item
                due = max(due, last)  # jitter never reorders the stream
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                last = due
                f = self.faults[direction]
                size = f.slice_bytes if f.slice_bytes > 0 else len(data)
                for i in range(0, len(data), size):
                    piece = data[i:i + size]
                    if i and f.slice_delay:
                        await asyncio.sleep(f.slice_delay)
                    sink.write(piece)
                    await sink.drain()
                    if f.bandwidth > 0:
                        await asyncio.sleep(len(piece) / f.bandwidth)
        except (ConnectionError, OSError):
            pass
