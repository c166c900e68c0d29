"""`make demo`: a matching engine and an OMS (real QuickFIX engines), fixproxy between them with
mutual TLS on both legs, a stream of orders and a few hostile peers. Prints what was delivered and
what was refused, then exits.

`Stack` is also what the end-to-end tests start: every part real, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import tls as tlsmod
from .audit import generate_signing_key, verify
from .certs import DevPki, init_dev_pki
from .config import ProxyConfig, parse_config
from .engines import EngineConfig, MatchingEngine, OrderEntry, free_port
from .proxy import FixProxy
from .rawclient import RawFixClient
from .tlsbridge import TlsBridge

SPECS = Path(__file__).resolve().parent.parent / "specs"


def demo_config_text(
    pki: DevPki,
    *,
    listen_port: int,
    upstream_ports: list[int],
    workdir: Path,
    sessions: dict[str, dict[str, Any]] | None = None,
    rate: float = 500.0,
    burst: int = 200,
    disconnect_after: int = 500,
    extra: str = "",
    workers: int = 1,
) -> str:
    """The proxy config the demo and the tests run: one session per client CompID."""
    sessions = sessions or {c: {} for c in pki.clients}
    endpoints = ", ".join(f'"127.0.0.1:{p}"' for p in upstream_ports)
    out = [
        f"""
[proxy]
instance = "demo"
listen = "127.0.0.1:{listen_port}"
handshake_timeout = 3.0
workers = {workers}

[proxy.tls]
cert = "{pki.proxy_server_cert}"
key = "{pki.proxy_server_key}"
ca = "{pki.ca_cert}"
crl = "{pki.crl}"

[upstream]
endpoints = [{endpoints}]
connect_timeout = 3.0

[upstream.tls]
cert = "{pki.proxy_client_cert}"
key = "{pki.proxy_client_key}"
ca = "{pki.ca_cert}"
server_hostname = "localhost"

[events]
jsonl = "{workdir / "events.jsonl"}"
{extra}
"""
    ]
    for compid, opts in sessions.items():
        inbound = opts.get("allowed_inbound", ["D", "F", "G", "H"])
        out.append(f"""
[[sessions]]
name = "{compid}"
begin_string = "{opts.get("begin_string", "FIX.4.4")}"
sender_comp_id = "{compid}"
target_comp_id = "{opts.get("target", "ATS")}"
validation = "{opts.get("validation", "strict")}"
allowed_inbound = {json.dumps(inbound)}
rate_limit = {{ rate = {opts.get("rate", rate)}, burst = {opts.get("burst", burst)}, \
disconnect_after = {opts.get("disconnect_after", disconnect_after)} }}
reject_style = "{opts.get("reject_style", "session_reject")}"
[sessions.identity]
san_uris = ["fix://compid/{compid}"]
""")
    return "".join(out)


class ProxyThread:
    """fixproxy on its own event loop (uvloop when installed) in a background thread."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.proxy: FixProxy | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fixproxy", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            self.proxy = FixProxy(self.config)
            loop.run_until_complete(self.proxy.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self.proxy.stop())
        loop.close()

    def start(self) -> ProxyThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sync(self, fn: Any, timeout: float = 10.0) -> Any:
        """Run a plain function on the proxy's loop (its state is not thread-safe)."""

        async def wrapper() -> Any:
            return fn()

        return self.call(wrapper(), timeout)

    def events(self) -> list[Any]:
        assert self.proxy is not None
        return self.sync(lambda: (self.proxy.recorder.flush(), list(self.proxy.recorder.recent))[1])

    def stop(self) -> None:
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


class ChildMatchingEngine:
    """A `MatchingEngine` in a child process (a standby ATS: same SessionIDs as the primary).

    Only its logs (``log_dir``) and its store are visible from here; it stops when told to or when
    this process's end closes its stdin.
    """

    def __init__(self, configs: list[EngineConfig]) -> None:
        self.configs = configs
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20.0) -> None:
        spec = json.dumps([{k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(c).items()}
                           for c in self.configs])
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-c", "import fixproxy.demo as d; d._child_ats()", spec],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        ready: list[str] = []
        out = self.proc.stdout
        assert out is not None
        reader = threading.Thread(target=lambda: ready.append(out.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not ready or ready[0].strip() != "ready":
            self.stop()
            raise RuntimeError(f"standby ATS did not start: {ready}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _child_ats() -> None:
    """The child process of `ChildMatchingEngine`: run until stdin closes."""
    paths = {"store_dir", "log_dir", "data_dictionary", "transport_dictionary"}
    configs = [EngineConfig(**{k: Path(v) if k in paths and v is not None else v for k, v in c.items()})
               for c in json.loads(sys.argv[1])]
    engine = MatchingEngine(configs)
    engine.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        engine.stop()


class Stack:
    """ATS engine(s) behind TLS bridges, fixproxy, and OMS engines behind TLS bridges."""

    def __init__(
        self,
        workdir: Path,
        compids: list[str],
        *,
        ats_count: int = 1,
        sessions: dict[str, dict[str, Any]] | None = None,
        begin_string: str = "FIX.4.4",
        heartbeat: int = 30,
        **config_kw: Any,
    ) -> None:
        self.workdir = Path(workdir).resolve()  # the config names files by absolute path
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.compids = compids
        self.begin_string = begin_string
        self.heartbeat = heartbeat
        self.sessions = sessions or {c: {"begin_string": begin_string} for c in compids}
        # A certificate for every session's CompID, and for OMS2 (the usual wrong-certificate peer).
        names = dict.fromkeys([*compids, *self.sessions, "OMS2"])
        self.pki = init_dev_pki(self.workdir / "certs", list(names))
        self.config_kw = config_kw
        self.ats: list[MatchingEngine | ChildMatchingEngine] = []  # [0] in-process, standbys not
        self.ats_bridges: list[TlsBridge] = []
        self.oms: dict[str, OrderEntry] = {}
        self.oms_bridges: dict[str, TlsBridge] = {}
        self.ats_count = ats_count
        self.proxy_port = free_port()
        self.proxy: ProxyThread | None = None
        self.config_path = self.workdir / "fixproxy.toml"

    def _dictionary(self, begin: str) -> Path:
        return SPECS / {"FIX.4.2": "FIX42.xml", "FIX.4.4": "FIX44.xml", "FIXT.1.1": "FIXT11.xml"}[begin]

    def start(self, *, oms: bool = True) -> Stack:
        pki = self.pki
        ats_ctx = tlsmod.server_context(pki.ats_server_cert, pki.ats_server_key, pki.ca_cert)
        upstream_ports = []
        store = self.workdir / "ats-store"  # shared: a standby engine resumes the primary's numbers
        for i in range(self.ats_count):
            plain = free_port()
            configs = [
                EngineConfig(
                    begin_string=opts.get("begin_string", self.begin_string),
                    sender_comp_id="ATS",
                    target_comp_id=c,
                    port=plain,
                    store_dir=store,
                    log_dir=self.workdir / f"ats{i}-log",
                    heartbeat_interval=self.heartbeat,
                    extra_settings={"RefreshOnLogon": "Y"},
                )
                for c, opts in self.sessions.items()
            ]
            # QuickFIX allows one live Session per SessionID per process, and a standby serves the
            # primary's SessionIDs: standbys run in a child process, as they would in production.
            engine: MatchingEngine | ChildMatchingEngine = (
                MatchingEngine(configs) if i == 0 else ChildMatchingEngine(configs)
            )
            engine.start()
            self.ats.append(engine)
            bridge = TlsBridge.server(free_port(), ats_ctx, "127.0.0.1", plain)
            bridge.start()
            self.ats_bridges.append(bridge)
            upstream_ports.append(bridge.port)
        text = demo_config_text(
            pki,
            listen_port=self.proxy_port,
            upstream_ports=upstream_ports,
            workdir=self.workdir,
            sessions=self.sessions,
            **self.config_kw,
        )
        self.config_path.write_text(text)
        config = parse_config(text, self.workdir, str(self.config_path))
        self.proxy = ProxyThread(config).start()
        if oms:
            for compid in self.compids:
                self.start_oms(compid)
        return self

    def client_context(self, compid: str) -> Any:
        cert, key = self.pki.clients[compid]
        return tlsmod.client_context(cert, key, self.pki.ca_cert)

    def start_oms(self, compid: str) -> OrderEntry:
        opts = self.sessions.get(compid, {})
        bridge = TlsBridge.client(free_port(), "127.0.0.1", self.proxy_port, self.client_context(compid))
        bridge.start()
        self.oms_bridges[compid] = bridge
        oms = OrderEntry(
            EngineConfig(
                begin_string=opts.get("begin_string", self.begin_string),
                sender_comp_id=compid,
                target_comp_id=opts.get("target", "ATS"),
                port=bridge.port,
                store_dir=self.workdir / f"oms-{compid}-store",
                log_dir=self.workdir / f"oms-{compid}-log",
                heartbeat_interval=self.heartbeat,
            )
        )
        oms.start()
        self.oms[compid] = oms
        return oms

    def raw_client(self, compid: str, *, sender: str | None = None, **kw: Any) -> RawFixClient:
        return RawFixClient(
            "127.0.0.1",
            self.proxy_port,
            ssl_context=self.client_context(compid),
            sender=sender or compid,
            begin_string=self.begin_string,
            **kw,
        )

    def stop(self) -> None:
        for oms in self.oms.values():
            _quietly(oms.stop)
        for b in self.oms_bridges.values():
            _quietly(b.stop)
        if self.proxy is not None:
            _quietly(self.proxy.stop)
        for b in self.ats_bridges:
            _quietly(b.stop)
        for a in self.ats:
            _quietly(a.stop)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _quietly(fn: Any) -> None:
    try:
        fn()
    except Exception as exc:
        print(f"shutdown: {exc}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------
def run_demo(workdir: Path, orders: int = 20) -> int:
    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    t0 = time.monotonic()
    print(f"fixproxy demo: working in {workdir}")
    workdir.mkdir(parents=True)
    generate_signing_key(workdir / "audit-signing.pem")
    (workdir / "audit").mkdir()
    audit = f"""
[audit]
directory = "{workdir / 'audit'}"
signing_key = "{workdir / 'audit-signing.pem'}"
checkpoint_seconds = 1.0
"""
    stack = Stack(
        workdir, ["OMS1"], sessions={"OMS1": {}, "OMS2": {"rate": 200.0, "burst": 50, "disconnect_after": 300}},
        extra=audit,
    )
    with stack:
        assert stack.proxy is not None and stack.proxy.proxy is not None
        print(
            f"  ATS (QuickFIX acceptor) behind TLS on :{stack.ats_bridges[0].port}; "
            f"fixproxy on :{stack.proxy_port} (mutual TLS 1.3 both legs); OMS1 (QuickFIX initiator)"
        )
        oms = stack.oms["OMS1"]
        if not oms.wait_logged_on(15):
            print("demo: OMS1 did not log on through the proxy", file=sys.stderr)
            return 1
        print("  OMS1 logged on through fixproxy")
        for i in range(orders):
            oms.send_new_order(f"DEMO-{i:04d}", "VOD.L", "1", 100 + i, 10.5)
        all_filled = oms.wait_for(lambda o: sum(1 for r in o.exec_reports if r[1] == "2") >= orders, 15)
        print(
            f"  {orders} orders sent by OMS1, fills received: {sum(1 for r in oms.exec_reports if r[1] == '2')}"
            + ("" if all_filled else " (incomplete!)")
        )

        print("  hostile peers:")
        # 1. a spoofed CompID: OMS2's certificate logging on as OMS1
        spoof = stack.raw_client("OMS2", sender="OMS1")
        spoof.send("A", [(98, 0), (108, 30)])
        print(f"    - OMS2's certificate claiming OMS1: connection closed = {spoof.closed_by_peer(3)}")
        spoof.close()
        # 2. a bad checksum and a bad MsgType on a legitimate OMS2 session
        raw = stack.raw_client("OMS2")
        raw.logon()
        order = [(11, "BAD-CS"), (21, "1"), (55, "X"), (54, "1"), (60, "20260101-00:00:00"), (38, 1), (40, "1")]
        seq = raw.seq
        good = raw.build("D", order)
        raw.send_raw(good[:-4] + b"000\x01")
        raw.send("0")  # a Heartbeat: the next MsgSeqNum shows the ATS the gap
        # The proxy drops it (FIX: ignore a garbled message); the ATS sees the gap and asks for a
        # resend, which passes through and is answered as any OMS would: a PossDup copy.
        asked = raw.wait_for(lambda m: m.msg_type == b"2", 5)
        if asked is not None:
            raw.send("D", order, seq=seq, possdup=True)
        filled = raw.wait_for(lambda m: m.msg_type == b"8" and m.get(b"11") == b"BAD-CS"
                              and m.get(b"39") == b"2", 5)
        print(f"    - bad CheckSum: dropped; ATS asked for a resend = {asked is not None}; "
              f"resent copy filled = {filled is not None}")
        raw.send("B", [(148, "news"), (33, 1), (58, "not allowed")])
        rej = raw.wait_for(lambda m: m.msg_type == b"3", 3)
        print(f"    - MsgType B (News) not allowed for OMS2: Reject 58={rej.get(b'58').decode() if rej else None!r}")
        # 3. a flood above OMS2's rate limit
        burst = b"".join(
            raw.build(
                "D",
                [(11, f"FLOOD-{i}"), (21, "1"), (55, "X"), (54, "1"), (60, "20260101-00:00:00"), (38, 1), (40, "1")],
            )
            for i in range(2000)
        )
        with contextlib.suppress(OSError):
            raw.send_raw(burst)
        print(f"    - flood of 2000 orders: session closed = {raw.closed_by_peer(5)}")
        raw.close()
        time.sleep(0.3)
        events = stack.proxy.events()
        refused = Counter(f"{e.outcome.value}:{e.reason.value}" for e in events if e.reason is not None)
        by_session = Counter(r[2].get(49) for r in stack.ats[0].received if r[1] == "D")
        print(f"  NewOrderSingle delivered to the ATS, by session: {dict(sorted(by_session.items()))} "
              f"(OMS2: the resent order, then its flood up to the rate limit)")
        print("  security events (outcome:reason = count):")
        for k, v in sorted(refused.items()):
            print(f"    {k} = {v}")
        print(f"  events file: {workdir / 'events.jsonl'}")
    result = verify(workdir / "audit", workdir / "audit-signing.pem.pub")
    print(f"  audit trail {workdir / 'audit'}: {'verified' if result.ok else 'BROKEN: ' + str(result.problem)}, "
          f"{result.records} records, {result.checkpoints} signed checkpoints "
          f"(check it yourself: fixproxy audit verify {workdir / 'audit'})")
    print(f"demo finished in {time.monotonic() - t0:.1f} s")
    return 0 if all_filled else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fixproxy-demo", description=__doc__)
    ap.add_argument("--workdir", default="demo-run", type=Path)
    ap.add_argument("--orders", default=20, type=int)
    args = ap.parse_args(argv)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(run_demo, args.workdir, args.orders)
        try:
            return fut.result(timeout=90)
        except concurrent.futures.TimeoutError:
            print("demo: did not finish within 90 s", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
