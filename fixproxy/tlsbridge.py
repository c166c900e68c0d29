"""Real TLS in front of FIX engines that have none.

The PyPI ``quickfix`` build has no TLS (compiled without HAVE_SSL), so the demo OMS and ATS speak
plain TCP on 127.0.0.1 and a `TlsBridge` next to each adds the TLS hop the proxy terminates:

    OMS --tcp--> TlsBridge.client --TLS (OMS client cert)--> fixproxy --mTLS--> TlsBridge.server --tcp--> ATS

A bridge is a byte pump: it neither parses nor buffers FIX beyond one read (each write is
drained before the next read), and when either side closes it closes the other, so a FIX peer
sees the same connection lifetime it would see without the bridge.

It runs its own asyncio loop in its own thread so tests and the demo can use it synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from .threadedserver import ThreadedServer

_CHUNK = 64 * 1024
_HANDSHAKE_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 2.0  # for the TLS close_notify exchange; then the socket is simply dropped


class TlsBridge(ThreadedServer):
    """Accept on 127.0.0.1:`listen_port`, connect each connection to the target, pump bytes.

    Build one with `client` (plain in, TLS out) or `server` (TLS in, plain out). ``port`` is the
    port actually listened on (pass 0 to let the OS choose). ``connections`` counts accepted
    connections, ``errors`` describes every connection that failed (TLS handshake, connect),
    and ``peer_subjects`` holds the subject of each verified client certificate (server bridges).
    """

    def __init__(
        self,
        *,
        listen_port: int,
        target_host: str,
        target_port: int,
        accept_tls: ssl.SSLContext | None,
        connect_tls: ssl.SSLContext | None,
        server_hostname: str | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        super().__init__(listen_host, listen_port)
        self.target_host = target_host
        self.target_port = target_port
        self._accept_tls = accept_tls
        self._connect_tls = connect_tls
        self._server_hostname = server_hostname
        self.connections = 0
        self.errors: list[str] = []
        self.peer_subjects: list[str] = []
        self._active = 0

    thread_name = "tlsbridge"

    @classmethod
    def client(
        cls,
        listen_port: int,
        target_host: str,
        target_port: int,
        ssl_context: ssl.SSLContext,
        server_hostname: str = "localhost",
    ) -> TlsBridge:
        """Plain TCP in (from the OMS) -> TLS out (to fixproxy), with the OMS's client certificate."""
        return cls(
            listen_port=listen_port,
            target_host=target_host,
            target_port=target_port,
            accept_tls=None,
            connect_tls=ssl_context,
            server_hostname=server_hostname,
        )

    @classmethod
    def server(cls, listen_port: int, ssl_context: ssl.SSLContext, target_host: str, target_port: int) -> TlsBridge:
        """TLS in (from fixproxy's upstream leg; mutual when the context requires it) -> plain TCP out."""
        return cls(
            listen_port=listen_port,
            target_host=target_host,
            target_port=target_port,
            accept_tls=ssl_context,
            connect_tls=None,
        )

    @property
    def active(self) -> int:
        """Connections currently open."""
        return self._active

    def _error(self, text: str) -> None:
        self.errors.append(text)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self._active += 1
        peer = writer.get_extra_info("peername")
        upstream: asyncio.StreamWriter | None = None
        dying = False
        try:
            if self._accept_tls is not None:
                try:
                    await writer.start_tls(self._accept_tls, ssl_handshake_timeout=_HANDSHAKE_TIMEOUT)
                except (ssl.SSLError, OSError, TimeoutError) as exc:
                    self._error(f"TLS handshake with {peer} failed: {exc}")
                    return
                self._record_peer(writer)
            try:
                up_reader, upstream = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.target_host,
                        self.target_port,
                        ssl=self._connect_tls,
                        server_hostname=self._server_hostname if self._connect_tls else None,
                        ssl_handshake_timeout=_HANDSHAKE_TIMEOUT if self._connect_tls else None,
                    ),
                    _CONNECT_TIMEOUT,
                )
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                self._error(f"connect to {self.target_host}:{self.target_port} for {peer} failed: {exc}")
                return
            # Each pump closes the side it writes to when its source ends, which ends the other.
            await asyncio.gather(self._pump(reader, upstream), self._pump(up_reader, writer))
        except asyncio.CancelledError:
            # Only stop() cancels a handler. Ending normally keeps asyncio's start_server callback
            # (3.11) from logging the cancellation as an error.
            pass
        except GeneratorExit:
            dying = True  # collected while suspended (its loop was closed under it)
            raise
        finally:
            if dying:  # nothing may be awaited now: drop the sockets
                for side in (writer, upstream):
                    if side is not None:
                        with contextlib.suppress(RuntimeError):  # its loop may be closed already
                            side.transport.abort()
                self._active -= 1
                self._tasks.discard(task)
            else:
                try:
                    await self._close(writer, upstream)
                except asyncio.CancelledError:
                    pass  # as above; _close has already dropped the sockets
                finally:
                    self._active -= 1
                    self._tasks.discard(task)

    @staticmethod
    async def _close(*sides: asyncio.StreamWriter | None) -> None:
        live = [side for side in sides if side is not None]
        for side in live:
            side.close()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(side.wait_closed() for side in live), return_exceptions=True), _CLOSE_TIMEOUT
            )
        except TimeoutError:
            # A TLS peer never finished the close: drop the sockets.
            for side in live:
                side.transport.abort()
        except asyncio.CancelledError:
            # The bridge is stopping: drop the sockets now, not after the loop has ended.
            for side in live:
                side.transport.abort()
            raise

    def _record_peer(self, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert") or {}
        subject = ", ".join("=".join(pair) for rdn in cert.get("subject", ()) for pair in rdn)
        if subject:
            self.peer_subjects.append(subject)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await source.read(_CHUNK)
                if not data:
                    break
                sink.write(data)
                # Bounded memory: read no more until the other side has taken this chunk.
                await sink.drain()
        except (ConnectionError, ssl.SSLError, OSError):
            pass  # either side going away ends the pair; nothing to report
        finally:
            sink.close()
