"""Many FIX sessions that connect (mutual TLS), log on and then idle: for the proxy's memory per
session. asyncio + uvloop in its own process, commanded over a pipe: it sends
``("ready", {"logged_on": n, "failed": m, "errors": [...]})`` once every session has logged on (or
failed), then holds them until ``("close",)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import Any

from . import fix


async def _session(host: str, port: int, compid: str, ctx: ssl.SSLContext | None, heartbeat: int,
                   timeout: float) -> asyncio.StreamWriter:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost" if ctx else None), timeout)
    writer.write(fix.logon(1, compid.encode(), fix.TARGET, fix.SendingTime()(), heartbeat=heartbeat))
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no Logon reply")
        data = await asyncio.wait_for(reader.read(4096), left)
        if not data:
            raise ConnectionError("closed before the Logon reply")
        buf += data
        msgs, buf = fix.split_messages(buf)
        if any(fix.msg_type(m) == b"A" for m in msgs):
            return writer


async def _main(conn: Any, spec: dict[str, Any]) -> None:
    from fixproxy import tls as tlsmod

    tls = spec.get("tls")
    contexts: dict[str, ssl.SSLContext | None] = {}
    if tls:
        pools = {name: tlsmod.client_context(cert, key, tls["ca"]) for name, (cert, key) in tls["pools"].items()}
        contexts = {c: pools[p] for c, p in spec["pool_of"].items()}
    sem = asyncio.Semaphore(spec.get("parallel", 32))
    writers: list[asyncio.StreamWriter] = []
    errors: list[str] = []

    async def one(compid: str) -> None:
        async with sem:
            try:
                writers.append(await _session(spec["host"], spec["port"], compid, contexts.get(compid),
                                              spec.get("heartbeat", 60), spec.get("timeout", 30.0)))
            except Exception as exc:
                errors.append(f"{compid}: {type(exc).__name__}: {exc}")

    t0 = time.monotonic()
    await asyncio.gather(*(one(c) for c in spec["compids"]))
    conn.send(("ready", {"logged_on": len(writers), "failed": len(errors), "errors": errors[:5],
                         "seconds": time.monotonic() - t0}))
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: done.done() or done.set_result(None))
    await done
    for w in writers:
        with contextlib.suppress(Exception):
            w.close()
    await asyncio.sleep(0.2)


def serve(conn: Any, spec: dict[str, Any]) -> None:
    import uvloop

    uvloop.run(_main(conn, spec))
