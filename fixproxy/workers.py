"""Several worker processes on one listening port: `[proxy] workers = N`.

Python runs one thread of FIX work at a time, so past one core fixproxy scales with processes. Each
worker is a whole fixproxy (its own event loop, inspector, metrics, audit trail) bound to the same
port with SO_REUSEPORT. The kernel spreads new connections over the workers; a classic BPF program
attached to the port group steers them by the client's source address (the address modulo N),
so the connections of one OMS host always reach the same worker, which then owns its sessions
whole: sequence translation, rate limits, connection limits and the leak guard's order ownership
live in one process.

What each worker keeps apart (so nothing is shared or locked between processes):
- metrics: worker i serves ``metrics_listen`` port + i (scrape every worker; the dashboards sum);
- audit trail: ``<directory>/worker-<i>`` (each verifies on its own, with the same key);
- events file: ``<events_jsonl>.worker-<i>``; admin socket: ``<socket>.worker-<i>``;
- the MQTT client id gets ``-worker-<i>``; every event carries the instance ``<instance>-w<i>``.

Trade-off, stated in the README: a session allowed from several source addresses may have
connections on two workers; its per-session limits (one connection at a time) and the leak guard's
cross-session checks then hold per worker only. With one source address per session (the usual
`allowed_sources`), nothing is weaker than with one worker.

The supervisor (the process `fixproxy run` started) only starts, watches and stops the workers: a
worker that dies is started again (and reported), SIGTERM/SIGINT stops them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

from .config import ProxyConfig

log = logging.getLogger("fixproxy.workers")

SO_ATTACH_REUSEPORT_CBPF = 51  # linux/asm-generic/socket.h
_SKF_NET_OFF = -0x100000  # classic BPF: offsets relative to the network header
RESTART_BACKOFF = 1.0  # seconds before a dead worker is started again


def _steering_program(workers: int, family: socket.AddressFamily) -> bytes:
    """A classic BPF program for SO_ATTACH_REUSEPORT_CBPF: (client address) mod N, the index of the
    socket in the port's group. IPv4: the source address; IPv6: its last 32 bits."""
    offset = 12 if family == socket.AF_INET else 20
    ins = [
        (0x20, 0, 0, (_SKF_NET_OFF + offset) & 0xFFFFFFFF),  # ld [net + offset]: A = source address
        (0x94, 0, 0, workers),  # mod #workers
        (0x16, 0, 0, 0),  # ret A
    ]
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def listen_reuseport(host: str, port: int, workers: int) -> socket.socket:
    """A listening socket in the port's SO_REUSEPORT group, with the source-address steering."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        # After listen: the program belongs to the port's group (any member may attach it; the
        # last one attached wins, and every worker attaches the same one).
        prog = _steering_program(workers, family)
        buf = ctypes.create_string_buffer(prog, len(prog))  # alive until setsockopt has copied it
        fprog = struct.pack("HP", len(prog) // 8, ctypes.addressof(buf))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def worker_config(config: ProxyConfig, index: int) -> ProxyConfig:
    """Worker `index`'s copy of the configuration: the same port, its own files and metrics port."""
    suffix = f"worker-{index}"
    changes: dict[str, Any] = {"instance": f"{config.instance}-w{index}"}
    if config.metrics_listen is not None:
        host, port = config.metrics_listen
        changes["metrics_listen"] = (host, port + index if port else 0)
    if config.events_jsonl is not None:
        changes["events_jsonl"] = Path(f"{config.events_jsonl}.{suffix}")
    if config.admin is not None:
        changes["admin"] = dataclasses.replace(config.admin, socket=Path(f"{config.admin.socket}.{suffix}"))
    if config.audit is not None:
        changes["audit"] = dataclasses.replace(config.audit, directory=config.audit.directory / suffix)
    if config.mqtt is not None and config.mqtt.client_id:
        changes["mqtt"] = dataclasses.replace(config.mqtt, client_id=f"{config.mqtt.client_id}-{suffix}")
    return dataclasses.replace(config, **changes)


def _worker_main(config: ProxyConfig, index: int, workers: int, log_level: int) -> None:
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s %(name)s[w{index}]: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops us with SIGTERM
    from .proxy import run

    run(worker_config(config, index), reuseport_workers=workers)


def supervise(config: ProxyConfig, workers: int) -> None:
    """Start `workers` processes serving `config` on one port, restart any that dies, stop them all
    on SIGTERM/SIGINT. Returns when stopped."""
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter each: no inherited loop or sockets
    level = logging.getLogger().getEffectiveLevel()
    procs: dict[int, Any] = {}
    stopping = False

    def start(i: int) -> None:
        p = ctx.Process(target=_worker_main, args=(config, i, workers, level), name=f"fixproxy-worker-{i}",
                        daemon=False)
        p.start()
        procs[i] = p

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(workers):
            start(i)
        log.info("fixproxy: %d workers on %s:%d (SO_REUSEPORT)", workers, *config.listen)
        while not stopping:
            time.sleep(0.2)
            for i, p in list(procs.items()):
                if not p.is_alive() and not stopping:
                    log.error("worker %d exited (code %s): starting it again", i, p.exitcode)
                    time.sleep(RESTART_BACKOFF)
                    start(i)
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker closes its sessions and seals its audit trail
        deadline = time.monotonic() + 15
        for p in procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                with contextlib.suppress(Exception):
                    p.kill()
        for s, h in old.items():
            signal.signal(s, h)
