"""Faults injected on real sockets: the fault proxy itself, then real QuickFIX engines through
fixproxy with a `FaultProxy` in front of each ATS endpoint (latency, slicing, a reset primary),
repeated failover drills, and the audit trail on a full disk.

Only outcomes are asserted; figures (MTTR, drill distribution) are printed (``pytest -s``) and
written as JSON to the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import NO_BRUTEFORCE

import fixproxy.demo as demo
from fixproxy.demo import Stack
from fixproxy.engines import OrderEntry
from fixproxy.events import Outcome
from fixproxy.faultproxy import FaultProxy
from fixproxy.reasons import Reason

WAIT = 20.0
_SEQUENCE_ERROR = re.compile(r"MsgSeqNum too low|NextExpectedMsgSeqNum too high")


def _wait(pred: Any, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return bool(pred())


# -- 1. the fault proxy with a plain echo server --------------------------------------------------------


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with contextlib.suppress(OSError):
                    conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        srv.close()


def _recv_pieces(sock: socket.socket, total: int, timeout: float = 5.0) -> list[tuple[float, bytes]]:
    sock.settimeout(timeout)
    out: list[tuple[float, bytes]] = []
    got = 0
    while got < total:
        data = sock.recv(65536)
        if not data:
            break
        out.append((time.monotonic(), data))
        got += len(data)
    return out


def test_fault_proxy_faults_do_what_they_say() -> None:
    with echo_server() as port, FaultProxy(0, "127.0.0.1", port, seed=1) as fp:
        figures: dict[str, float] = {}
        # untouched: an echo comes back whole
        with socket.create_connection(("127.0.0.1", fp.port)) as s:
            s.sendall(b"hello")
            assert b"".join(d for _, d in _recv_pieces(s, 5)) == b"hello"
        # latency on the way back: the bytes arrive, later than without it
        fp.set("down", latency=0.3)
        with socket.create_connection(("127.0.0.1", fp.port)) as s:
            t0 = time.monotonic()
            s.sendall(b"late")
            pieces = _recv_pieces(s, 4)
            assert b"".join(d for _, d in pieces) == b"late"
            figures["latency_s"] = pieces[-1][0] - t0
        assert figures["latency_s"] >= 0.3  # a lower bound only: the delay is added, never removed
        fp.reset_all()
        # slicing: 40 bytes in 4-byte pieces, each a separate delivery, order kept
        fp.set("down", slice_bytes=4, slice_delay=0.05)
        with socket.create_connection(("127.0.0.1", fp.port)) as s:
            payload = bytes(range(40))
            s.sendall(payload)
            pieces = _recv_pieces(s, 40)
            assert b"".join(d for _, d in pieces) == payload
            assert len(pieces) >= 3  # not one delivery (a busy reader may coalesce a few pieces)
            figures["slices"] = len(pieces)
        fp.reset_all()
        # jitter never reorders the stream
        fp.set(latency=0.01, jitter=0.01)
        with socket.create_connection(("127.0.0.1", fp.port)) as s:
            sent = b"".join(f"{i:04d}".encode() for i in range(50))
            for i in range(50):
                s.sendall(f"{i:04d}".encode())
            assert b"".join(d for _, d in _recv_pieces(s, len(sent))) == sent
        fp.reset_all()
        # bandwidth: 2000 bytes at 10 kB/s all arrive
        fp.set("down", bandwidth=10_000, slice_bytes=100)
        with socket.create_connection(("127.0.0.1", fp.port)) as s:
            t0 = time.monotonic()
            s.sendall(b"x" * 2000)
            assert sum(len(d) for _, d in _recv_pieces(s, 2000)) == 2000
            figures["bandwidth_2000B_s"] = time.monotonic() - t0
        fp.reset_all()
        # blackhole: the connection stays up, nothing comes back; clearing it lets bytes through again
        fp.set("up", blackhole=True)
        with socket.create_connection(("127.0.0.1", fp.port)) as s:
            s.sendall(b"lost")
            s.settimeout(0.5)
            with pytest.raises(TimeoutError):
                s.recv(10)
            fp.reset_all()
            s.sendall(b"found")
            assert b"".join(d for _, d in _recv_pieces(s, 5)) == b"found"
        # reset: an open connection gets an RST (ECONNRESET, not an orderly EOF), new ones too
        with socket.create_connection(("127.0.0.1", fp.port)) as s:
            s.sendall(b"x")
            _recv_pieces(s, 1)
            assert fp.reset_connections() == 1
            with pytest.raises(ConnectionResetError):
                s.settimeout(5)
                s.recv(10)
        fp.set(reset=True)
        with socket.create_connection(("127.0.0.1", fp.port)) as s:
            s.settimeout(5)
            with pytest.raises(ConnectionResetError):
                s.sendall(b"x")
                s.recv(10)
                s.sendall(b"y")
                s.recv(10)
        assert fp.resets >= 2
        print(f"\nfault proxy figures: {figures}")


# -- a Stack whose ATS endpoints are behind fault proxies --------------------------------------------


class FaultStack(Stack):
    """`Stack` with a `FaultProxy` in front of each ATS TLS bridge: the proxy's upstream endpoints
    are the fault proxies (``faults[i]`` in front of ATS ``i``)."""

    faults: list[FaultProxy]

    def start(self, *, oms: bool = True) -> FaultStack:
        original = demo.demo_config_text

        def through_faults(pki: Any, *, upstream_ports: list[int], **kw: Any) -> str:
            self.faults = [FaultProxy(0, "127.0.0.1", p).start() for p in upstream_ports]
            return original(pki, upstream_ports=[f.port for f in self.faults], **kw)

        demo.demo_config_text = through_faults  # type: ignore[assignment]
        try:
            super().start(oms=oms)
        finally:
            demo.demo_config_text = original  # type: ignore[assignment]
        return self

    def stop(self) -> None:
        super().stop()
        for f in getattr(self, "faults", []):
            f.stop()


def fills(oms: OrderEntry) -> set[str]:
    return {r.cl_ord_id for r in oms.exec_reports if r.ord_status == "2"}


def acked(oms: OrderEntry) -> set[str]:
    return {r.cl_ord_id for r in oms.exec_reports}


def send_orders(oms: OrderEntry, prefix: str, n: int) -> set[str]:
    ids = {f"{prefix}{i:03d}" for i in range(n)}
    for cl in sorted(ids):
        oms.send_new_order(cl, "VOD.L", "1", 100, 10.5)
    return ids


def wait_filled(oms: OrderEntry, ids: set[str]) -> None:
    assert oms.wait_for(lambda: ids <= fills(oms), WAIT), (
        f"not filled: {sorted(ids - fills(oms))}; events: {oms.event_texts()[-8:]}")


def logon_responses(oms: OrderEntry) -> int:
    return sum(1 for t in oms.event_texts() if t == "Received logon response")


def history(stack: Stack) -> list[dict[str, Any]]:
    p = stack.proxy
    assert p is not None and p.proxy is not None
    return p.sync(lambda: [dict(h) for h in p.proxy.failover.history])


def no_sequence_errors(stack: Stack, oms: OrderEntry, compid: str, ats_dirs: int) -> None:
    assert oms.sequence_errors() == [], oms.sequence_errors()
    assert oms.rejects == []
    for i in range(ats_dirs):
        text = "".join(p.read_text() for p in (stack.workdir / f"ats{i}-log").glob(f"*ATS-{compid}.event*"))
        assert not _SEQUENCE_ERROR.search(text), text[-2000:]


# -- 2. the ATS leg: latency and slicing; a reset primary -----------------------------------------------


def test_orders_fill_through_latency_and_slicing_on_the_ats_leg(tmp_path: Path) -> None:
    stack = FaultStack(tmp_path, ["FLT1"], sessions={"FLT1": {}}, extra=NO_BRUTEFORCE)
    try:
        stack.start()
        oms = stack.oms["FLT1"]
        assert oms.wait_logged_on(WAIT)
        # TLS records cut into 7-byte pieces and delayed, both ways, while orders flow
        stack.faults[0].set(latency=0.02, jitter=0.01, slice_bytes=7, slice_delay=0.001)
        t0 = time.monotonic()
        wait_filled(oms, send_orders(oms, "LAT", 20))
        print(f"\n20 orders filled through 20±10 ms latency and 7-byte slicing in {time.monotonic() - t0:.2f} s")
        no_sequence_errors(stack, oms, "FLT1", 1)
        assert history(stack) == []  # nothing failed over
        stack.faults[0].reset_all()
        wait_filled(oms, send_orders(oms, "CLR", 5))
    finally:
        stack.stop()


def test_reset_primary_mid_stream_fails_over_to_the_standby(tmp_path: Path) -> None:
    stack = FaultStack(tmp_path, ["FLT2"], ats_count=2, sessions={"FLT2": {}}, extra=NO_BRUTEFORCE)
    try:
        stack.start()
        oms = stack.oms["FLT2"]
        assert oms.wait_logged_on(WAIT)
        wait_filled(oms, send_orders(oms, "PRE", 5))
        logons = logon_responses(oms)
        # orders in flight, then the primary dies: every connection to it reset, new ones too
        stream = send_orders(oms, "MID", 20)
        time.sleep(0.02)
        stack.faults[0].set(reset=True)
        acked_before = acked(oms)
        assert _wait(lambda: logon_responses(oms) > logons and oms.logged_on()), oms.event_texts()[-8:]
        after = send_orders(oms, "POST", 5)
        wait_filled(oms, after)
        # every order the OMS saw acknowledged stays acknowledged; the stream's orders are answered
        # too (resent by FIX rules or already filled)
        assert acked_before <= acked(oms)
        assert oms.wait_for(lambda: stream <= acked(oms), WAIT), sorted(stream - acked(oms))
        h = history(stack)
        assert len(h) == 1 and h[0]["trigger"] == "failure" and h[0]["endpoint"] == 1
        no_sequence_errors(stack, oms, "FLT2", 2)
        standby = "".join(p.read_text() for p in (tmp_path / "ats1-log").glob("*ATS-FLT2.event*"))
        assert "Received logon request" in standby
        report = {"mttr_s": h[0]["seconds"], "acked_before_reset": len(acked_before & stream),
                  "mid_stream_filled": len(stream & fills(oms)), "resets": stack.faults[0].resets}
        print(f"\nreset primary: {report}")
        (tmp_path / "reset-failover.json").write_text(json.dumps(report))
    finally:
        stack.stop()


# -- 3. repeated drills ----------------------------------------------------------------------------------

DRILLS = 20


def test_repeated_failover_drills(tmp_path: Path) -> None:
    stack = FaultStack(tmp_path, ["FLT3"], ats_count=2, sessions={"FLT3": {}}, extra=NO_BRUTEFORCE)
    try:
        stack.start()
        assert stack.proxy is not None and stack.proxy.proxy is not None
        proxy = stack.proxy
        oms = stack.oms["FLT3"]
        assert oms.wait_logged_on(WAIT)
        wait_filled(oms, send_orders(oms, "D00-", 1))
        ok = 0
        for drill in range(1, DRILLS + 1):
            logons = logon_responses(oms)
            result = proxy.call(proxy.proxy.failover_drill())
            assert result == {"active": drill % 2, "closed": 1}
            if not oms.wait_for(lambda n=logons: logon_responses(oms) > n and oms.logged_on(), WAIT):
                break
            ids = send_orders(oms, f"D{drill:02d}-", 1)
            if not oms.wait_for(lambda ids=ids: ids <= fills(oms), WAIT):
                break
            h = history(stack)
            if len(h) == drill and h[-1]["endpoint"] == drill % 2:
                ok += 1
        h = history(stack)
        mttr = sorted(x["seconds"] for x in h)
        report = {"drills": DRILLS, "succeeded": ok,
                  "mttr_s": {"min": mttr[0], "p50": statistics.median(mttr), "max": mttr[-1]} if mttr else None,
                  "per_drill_s": [x["seconds"] for x in h]}
        (tmp_path / "drills.json").write_text(json.dumps(report, indent=1))
        print(f"\nfailover drills: {ok}/{DRILLS} succeeded; MTTR {report['mttr_s']} ({tmp_path / 'drills.json'})")
        assert ok == DRILLS
        no_sequence_errors(stack, oms, "FLT3", 2)
    finally:
        stack.stop()


# -- 4. fixproxy killed with SIGKILL mid-stream, restarted on the same port -----------------------------


def _audit_extra(work: Path, audit_dir: Path, *, write_ahead: bool = False) -> str:
    from fixproxy.audit import generate_signing_key

    key = work / "audit-signing.pem"
    generate_signing_key(key)
    return f"""{NO_BRUTEFORCE}
[audit]
directory = "{audit_dir}"
signing_key = "{key}"
checkpoint_seconds = 0.5
write_ahead = {"true" if write_ahead else "false"}
"""


def _audit_records(audit_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(audit_dir.glob("audit-*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _child_proxy(stack: Stack) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(Path(demo.__file__).resolve().parent.parent))
    log = (stack.workdir / "child-proxy.log").open("ab")
    proc = subprocess.Popen([os.sys.executable, "-m", "fixproxy.cli", "run", "--config", str(stack.config_path)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    assert _wait(lambda: _listening(stack.proxy_port) or proc.poll() is not None), "child proxy did not listen"
    assert proc.poll() is None, (stack.workdir / "child-proxy.log").read_text()[-2000:]
    return proc


@pytest.mark.parametrize("write_ahead", [False, True], ids=["batched", "write_ahead"])
def test_sigkill_mid_stream_then_restart(tmp_path: Path, write_ahead: bool) -> None:
    audit_dir = tmp_path / "audit"
    stack = Stack(tmp_path, ["FLT4"], sessions={"FLT4": {}},
                  extra=_audit_extra(tmp_path, audit_dir, write_ahead=write_ahead))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        stack.start(oms=False)
        assert stack.proxy is not None
        stack.proxy.stop()  # the in-process proxy gives way to a child process on the same port
        stack.proxy = None
        procs.append(_child_proxy(stack))
        oms = stack.start_oms("FLT4")
        assert oms.wait_logged_on(WAIT)
        wait_filled(oms, send_orders(oms, "K1-", 10))
        logons = logon_responses(oms)
        stream = send_orders(oms, "K2-", 30)
        time.sleep(0.05)
        procs[0].kill()  # SIGKILL mid-stream: no flush, no final checkpoint
        procs[0].wait(10)
        # what SIGKILL can leave besides: a record half written (a torn tail)
        last = sorted(audit_dir.glob("audit-*.jsonl"))[-1]
        with last.open("ab") as f:
            f.write(b'{"seq": 999999, "kind": "messages", "torn')
        procs.append(_child_proxy(stack))
        assert _wait(lambda: logon_responses(oms) > logons and oms.logged_on()), oms.event_texts()[-8:]
        assert oms.wait_for(lambda: stream <= acked(oms), WAIT), sorted(stream - acked(oms))
        wait_filled(oms, send_orders(oms, "K3-", 10))
        no_sequence_errors(stack, oms, "FLT4", 1)
        procs[1].terminate()
        procs[1].wait(10)
        # the trail verifies with the CLI; the torn tail was cut, kept aside and recorded
        env = dict(os.environ, PYTHONPATH=str(Path(demo.__file__).resolve().parent.parent))
        out = subprocess.run([os.sys.executable, "-m", "fixproxy.cli", "audit", "verify", str(audit_dir)],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        records = _audit_records(audit_dir)
        recovered = [r for r in records if r["kind"] == "audit.recovered"]
        assert len(recovered) == 1 and recovered[0]["bytes"] > 0, recovered
        assert list(audit_dir.glob("audit-*.jsonl.torn.*"))
        # every order the ATS received is in the trail as forwarded
        forwarded = {row[0] for r in records if r["kind"] == "messages" and r["session"] == "FLT4"
                     for row in r["messages"] if row[1] == "D" and row[3] == "forwarded"}
        at_ats = {int(m.get(34)): m.get(11) for m in stack.ats[0].messages("D", "FIX.4.4:ATS->FLT4")}  # type: ignore[union-attr]
        # Batched mode: records are written off the FIX path (every 5 ms): what was forwarded in the last
        # batch before SIGKILL is not in the trail. Everything after the restart is.
        after_restart = {s for s, cl in at_ats.items() if cl.startswith("K3-")}
        assert len(after_restart) == 10 and after_restart <= forwarded, sorted(after_restart - forwarded)
        lost = sorted(s for s in at_ats if s not in forwarded)
        print(f"\nSIGKILL ({'write-ahead' if write_ahead else 'batched'} audit): {len(stream & fills(oms))}/30 "
              f"mid-stream orders filled after restart; audit.recovered {recovered[0]}; verify: {out.stdout.strip()}; "
              f"orders the ATS received with no audit record (the unflushed batch at the kill): {len(lost)}")
        if write_ahead:
            assert lost == [], f"forwarded without an audit record: {lost}"  # never an unaudited forward
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        stack.stop()


# -- 5. the audit trail's filesystem fills up ------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _trade_then_fill_the_disk(stack: Stack, session: str, prefix: str, fs: Path) -> tuple[Any, Any, Path]:
    """Start the stack, fill 5 orders of `session` with the disk still free, then fill the disk:
    (the running FixProxy, the OMS, the filler file to unlink when space should come back)."""
    stack.start()
    assert stack.proxy is not None and stack.proxy.proxy is not None
    oms = stack.oms[session]
    assert oms.wait_logged_on(WAIT)
    wait_filled(oms, send_orders(oms, prefix, 5))
    return stack.proxy.proxy, oms, _fill(fs)


def _fill(path: Path) -> Path:
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def _every_order_at_the_ats_audited(stack: Stack, audit_dir: Path, session: str) -> list[dict[str, Any]]:
    """The trail verifies, and every order the ATS received has a `forwarded` audit record (never
    an unaudited forward). Returns the trail's records."""
    from fixproxy.audit import verify

    result = verify(audit_dir)
    assert result.ok, result.problem
    records = _audit_records(audit_dir)
    forwarded = {row[0] for r in records if r["kind"] == "messages" and r["session"] == session
                 for row in r["messages"] if row[1] == "D" and row[3] == "forwarded"}
    at_ats = {int(m.get(34)) for m in stack.ats[0].messages("D", f"FIX.4.4:ATS->{session}")}  # type: ignore[union-attr]
    assert at_ats <= forwarded, f"forwarded without an audit record: {sorted(at_ats - forwarded)}"
    return records


def test_disk_full_refuses_orders_then_recovers(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs") as fs:
        audit_dir = fs / "audit"
        stack = Stack(tmp_path / "w", ["FLT5"], sessions={"FLT5": {}}, extra=_audit_extra(tmp_path, audit_dir))
        try:
            proxy, oms, filler = _trade_then_fill_the_disk(stack, "FLT5", "F1-", fs)
            # the next writes fail (ENOSPC): the proxy notices and fails closed
            oms.send_new_order("F2-PROBE", "VOD.L", "1", 100, 10.5)
            assert _wait(lambda: proxy.audit_down, 10), "the proxy did not notice the full disk"
            # A small record may still fit in the last page of the trail's file (tmpfs), which
            # makes the trail writable again for a moment: send until an order meets a full disk.
            before = len(oms.rejects)
            for i in range(20):
                _wait(lambda: proxy.audit_down, 5)
                oms.send_new_order(f"F2-REFUSED-{i}", "VOD.L", "1", 100, 10.5)
                if oms.wait_for(lambda: len(oms.rejects) > before, 2):
                    break
            assert len(oms.rejects) > before, [(e.kind, e.reason, e.detail) for e in stack.proxy.events()][-12:]
            assert "Audit trail unavailable" in (oms.rejects[-1].get(58) or "")
            assert any(e.kind == "audit.unavailable" for e in stack.proxy.events())
            assert f"F2-REFUSED-{i}" not in acked(oms)
            # space back: orders flow again
            filler.unlink()
            assert _wait(lambda: not proxy.audit_down)
            wait_filled(oms, send_orders(oms, "F3-", 5))
            stack.proxy.sync(lambda: proxy.audit.flush())
        finally:
            with contextlib.suppress(FileNotFoundError):
                (fs / "filler").unlink()
            stack.stop()
        _every_order_at_the_ats_audited(stack, audit_dir, "FLT5")


def test_disk_full_with_write_ahead_forwards_nothing_unaudited(tmp_path: Path) -> None:
    """`write_ahead = true`: a read whose record cannot be written is not forwarded at all; the
    session is closed (audit_unavailable) and stays down while the disk is full, since even its
    Logon cannot be recorded. When space returns the OMS logs on again, the ATS asks for what it
    missed, the order sent into the full disk is resent and filled, and every order the ATS ever
    received has its audit record."""
    with small_tmpfs(tmp_path / "fs") as fs:
        audit_dir = fs / "audit"
        stack = Stack(tmp_path / "w", ["FLT6"], sessions={"FLT6": {}},
                      extra=_audit_extra(tmp_path, audit_dir, write_ahead=True))
        try:
            proxy, oms, filler = _trade_then_fill_the_disk(stack, "FLT6", "W1-", fs)

            def closed() -> bool:
                return any(e.reason is Reason.AUDIT_UNAVAILABLE and e.outcome is Outcome.DISCONNECTED
                           for e in stack.proxy.events())  # type: ignore[union-attr]

            # The first records may still fit in the file's last page; soon one does not.
            probes: list[str] = []
            while not closed() and len(probes) < 50:
                probes.append(f"W2-{len(probes):03d}")
                oms.send_new_order(probes[-1], "VOD.L", "1", 100, 10.5)
                _wait(closed, 0.3)
            assert closed(), "the session was not closed"
            assert proxy.audit_down
            time.sleep(1.5)  # the OMS's reconnects meanwhile: closed too, nothing crosses
            # (the read whose record failed may be an order, or the ATS's fill: either way it did
            # not cross, which the final check of the trail against the ATS proves)
            filler.unlink()
            assert _wait(lambda: not proxy.audit_down)
            assert oms.wait_logged_on(WAIT)
            wait_filled(oms, set(probes))  # what did not cross is resent on the ATS's ResendRequest
            wait_filled(oms, send_orders(oms, "W3-", 5))
            stack.proxy.sync(lambda: proxy.audit.flush())
        finally:
            with contextlib.suppress(FileNotFoundError):
                (fs / "filler").unlink()
            stack.stop()
        records = _every_order_at_the_ats_audited(stack, audit_dir, "FLT6")
        # The sessions closed for it are in the trail too (written once the disk was back), as is a
        # read that met the failure, if one did: recorded refused, never forwarded.
        closed_for_it = [r for r in records if r["kind"] == "policy.audit_unavailable"
                         and r.get("outcome") == "disconnected" and r.get("session") == "FLT6"]
        assert closed_for_it, "the closes for the unwritable trail are not in the trail"
        for r in records:
            for row in r.get("messages", []) if r["kind"] == "messages" else []:
                assert row[4] != "audit_unavailable" or row[3] == "refused", row
