"""`[proxy] workers = N`: worker processes on one port (SO_REUSEPORT), steered by source address.

Real sockets, a real `fixproxy run` with two workers, real TLS and a real QuickFIX ATS behind it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixproxy.config import ConfigError, parse_config
from fixproxy.demo import Stack
from fixproxy.engines import free_port
from fixproxy.workers import listen_reuseport, worker_config
from tests.helpers import NO_BRUTEFORCE, wait

ROOT = Path(__file__).resolve().parents[1]


def test_connections_are_steered_by_source_address() -> None:
    """Every connection from one address reaches the same socket of the group; addresses spread."""
    port = free_port()
    group = [listen_reuseport("127.0.0.1", port, 2) for _ in range(2)]
    try:
        for s in group:
            s.setblocking(True)
            s.settimeout(0.5)
        seen: dict[str, set[int]] = {}
        for last in range(2, 10):
            src = f"127.0.0.{last}"
            for _ in range(3):
                c = socket.create_connection(("127.0.0.1", port), source_address=(src, 0))
                got = None
                for i, s in enumerate(group):
                    with contextlib.suppress(TimeoutError):
                        conn, _ = s.accept()
                        conn.close()
                        got = i
                        break
                c.close()
                assert got is not None
                seen.setdefault(src, set()).add(got)
        assert all(len(v) == 1 for v in seen.values()), seen  # one worker per source address
        assert set().union(*seen.values()) == {0, 1}, seen  # and both workers get some
    finally:
        for s in group:
            s.close()


_BASE = """
[proxy]
listen = "127.0.0.1:{port}"
insecure = true
workers = {workers}
[upstream]
endpoints = ["127.0.0.1:9"]
insecure = true
[metrics]
listen = "127.0.0.1:{metrics}"
[[sessions]]
name = "S"
begin_string = "FIX.4.4"
sender_comp_id = "S"
target_comp_id = "ATS"
"""


@pytest.mark.parametrize(("port", "metrics", "workers", "problem"), [
    (0, 9100, 2, "needs a fixed proxy.listen port"),
    (7000, 0, 2, "needs a fixed metrics.listen port"),
    (7000, 9100, 65, "must be at most 64"),
    (7000, 9100, 0, "must be a positive integer"),
])
def test_workers_config_errors_name_the_key(tmp_path: Path, port: int, metrics: int, workers: int,
                                            problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_BASE.format(port=port, metrics=metrics, workers=workers), tmp_path, "f.toml")
    assert "proxy.workers" in str(err.value) and problem in str(err.value)


def test_each_worker_gets_its_own_files_and_metrics_port(tmp_path: Path) -> None:
    text = _BASE.format(port=7000, metrics=9100, workers=2) + f"""
[events]
jsonl = "{tmp_path / 'ev.jsonl'}"
[admin]
socket = "{tmp_path / 'admin.sock'}"
allowed_uids = [0]
"""
    cfg = parse_config(text, tmp_path, "f.toml")
    w1 = worker_config(cfg, 1)
    assert w1.listen == cfg.listen and w1.metrics_listen == ("127.0.0.1", 9101)
    assert w1.events_jsonl == tmp_path / "ev.jsonl.worker-1"
    assert w1.admin is not None and w1.admin.socket == tmp_path / "admin.sock.worker-1"
    assert w1.instance == "fixproxy-w1" and worker_config(cfg, 0).metrics_listen == ("127.0.0.1", 9100)


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = Path(f"/proc/{d}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
    return out


def _worker_pids(pid: int) -> list[int]:
    return [c for c in _children(pid) if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]


def _logons(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [e["session"] for e in map(json.loads, path.read_text().splitlines()) if e.get("kind") == "session.logon"]


def _trade(stack: Stack, compid: str, source: str, order: str) -> None:
    c = stack.raw_client(compid, source=source)
    try:
        # a new connection of the raw client starts at 1: Logon with ResetSeqNumFlag
        assert c.logon(extra=[(141, "Y")]) is not None, c.received
        c.new_order(order)
        er = c.wait_for(lambda m: m.msg_type == b"8" and m.get(b"11") == order.encode(), 10)
        assert er is not None, c.received
        c.send("5")
        c.wait_for(lambda m: m.msg_type == b"5", 5)
    finally:
        c.close()


def test_two_workers_serve_whole_sessions_and_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ["WK1", "WK2"], sessions={"WK1": {}, "WK2": {}}, extra=NO_BRUTEFORCE, workers=2)
    proc = None
    try:
        stack.start(oms=False)
        assert stack.proxy is not None
        stack.proxy.stop()  # the config's workers = 2 needs `fixproxy run`: a child process takes the port
        stack.proxy = None
        log = (tmp_path / "workers.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "fixproxy.cli", "run", "--config", str(stack.config_path)],
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT)
        assert wait(lambda: len(_worker_pids(proc.pid)) == 2, 30), (tmp_path / "workers.log").read_text()
        events = [Path(f"{tmp_path / 'events.jsonl'}.worker-{i}") for i in range(2)]
        # 127.0.0.2 and 127.0.0.3 go to different workers (address mod 2): one session each
        assert wait(lambda: _trade_ok(stack, "WK1", "127.0.0.2", "W1-1"), 30)
        _trade(stack, "WK2", "127.0.0.3", "W2-1")
        assert wait(lambda: sorted(_logons(events[0]) + _logons(events[1])) == ["WK1", "WK2"], 10)
        assert {len(_logons(e)) for e in events} == {1}, [_logons(e) for e in events]
        # the same source address again: the same worker (whole sessions stay in one process)
        _trade(stack, "WK1", "127.0.0.2", "W1-2")
        wk1 = next(e for e in events if "WK1" in _logons(e))
        assert wait(lambda: _logons(wk1).count("WK1") == 2, 10), [_logons(e) for e in events]
        # kill one worker: the supervisor starts it again; both sessions trade again
        before = set(_worker_pids(proc.pid))
        os.kill(sorted(before)[0], signal.SIGKILL)
        assert wait(lambda: len(set(_worker_pids(proc.pid)) - before) == 1
                    and len(_worker_pids(proc.pid)) == 2, 30), (tmp_path / "workers.log").read_text()[-2000:]
        assert wait(lambda: _trade_ok(stack, "WK1", "127.0.0.2", "W1-3"), 30)
        assert wait(lambda: _trade_ok(stack, "WK2", "127.0.0.3", "W2-3"), 30)
        assert "worker" in (tmp_path / "workers.log").read_text() and "starting it again" in \
            (tmp_path / "workers.log").read_text()
        # SIGTERM: the supervisor stops its workers and exits
        proc.terminate()
        assert proc.wait(30) == 0
        assert not _worker_pids(proc.pid)
    finally:
        if proc is not None and proc.poll() is None:
            for p in _worker_pids(proc.pid):
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
            proc.kill()
            proc.wait(10)
        stack.stop()


def _trade_ok(stack: Stack, compid: str, source: str, order: str) -> bool:
    try:
        _trade(stack, compid, source, order)
    except (AssertionError, OSError):
        time.sleep(0.2)
        return False
    return True
