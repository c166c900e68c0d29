"""A TCP listener on its own asyncio loop in a daemon thread, usable synchronously.

The test peers that stand beside the proxy (`tlsbridge.TlsBridge`, `faultproxy.FaultProxy`)
share this lifecycle: `start()` returns once the port is bound (or raises why it could not be),
`stop()` closes the listener and every connection and ends the thread. Subclasses implement
`_handle` (one accepted connection) and may abort their connections in `_abort_connections`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Self


class ThreadedServer:
    thread_name = "server"

    def __init__(self, listen_host: str, listen_port: int) -> None:
        self.listen_host = listen_host
        self.port = listen_port  # the port actually listened on once started (0: the OS picks)
        self._lock = threading.Lock()  # start/stop may be called from any thread
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle (any thread) ----------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> Self:
        """Listen and return once the port is bound (raises if it cannot be). Idempotent."""
        with self._lock:
            if self._thread is not None:
                return self
            ready = threading.Event()
            failure: list[BaseException] = []
            thread = threading.Thread(target=self._run, args=(ready, failure),
                                      name=f"{self.thread_name}-{self.port}", daemon=True)
            thread.start()
            if not ready.wait(timeout):
                raise TimeoutError(f"{self.thread_name} did not start")
            if failure:
                thread.join(timeout)
                raise failure[0]
            self._thread = thread
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every open connection, then end the thread. Idempotent."""
        with self._lock:
            thread, loop, stopping = self._thread, self._loop, self._stopping
            if thread is None or loop is None or stopping is None:
                return
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
            thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the event loop thread -------------------------------------------------------------------------
    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:  # startup failures are re-raised by start()
            failure.append(exc)
            ready.set()
        finally:
            loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        # Plain TCP even where TLS is spoken: a subclass does any handshake per connection in
        # _handle, so a failed one is recorded instead of vanishing into asyncio's exception handler.
        server = await asyncio.start_server(self._handle, self.listen_host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            self._abort_connections()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()
            # Aborted transports close their sockets from a loop callback: let it run before the
            # loop is closed, or the sockets leak (ResourceWarning).
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    def _abort_connections(self) -> None:
        """Called on the loop at stop, before the connection tasks are cancelled."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
