"""The demo FIX peers (real QuickFIX engines) and the TLS bridge, on real sockets on 127.0.0.1.

These are the peers the end-to-end tests put on either side of fixproxy, so this file proves they
work without the proxy: logon, order flow, resend recovery across reconnects, FIX 4.2/4.4/5.0SP2,
and mutual TLS through a pair of bridges.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from fixproxy import tls
from fixproxy.certs import DevPki
from fixproxy.engines import (
    EngineConfig,
    FixMessage,
    MatchingEngine,
    OrderEntry,
    build_message,
    default_dictionary,
    free_port,
)
from fixproxy.tlsbridge import TlsBridge

WAIT = 10.0  # generous: a loaded CI box must not turn into a flaky failure

_Peer = TypeVar("_Peer", MatchingEngine, OrderEntry, TlsBridge)


class Peers:
    """Builds engines and bridges for one test and stops them all afterwards, newest first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._started: list[MatchingEngine | OrderEntry | TlsBridge] = []

    def _keep(self, thing: _Peer) -> _Peer:
        thing.start()
        self._started.append(thing)
        return thing

    def ats_config(self, begin_string: str = "FIX.4.4", target: str = "OMS", **kw: object) -> EngineConfig:
        return EngineConfig(
            begin_string=begin_string,
            sender_comp_id="ATS",
            target_comp_id=target,
            store_dir=self.root / f"ats-{target}-store",
            log_dir=self.root / "ats-log",
            heartbeat_interval=5,
            **kw,  # type: ignore[arg-type]
        )

    def oms_config(self, port: int, begin_string: str = "FIX.4.4", sender: str = "OMS", **kw: object) -> EngineConfig:
        return EngineConfig(
            begin_string=begin_string,
            sender_comp_id=sender,
            target_comp_id="ATS",
            port=port,
            store_dir=self.root / f"oms-{sender}-store",
            heartbeat_interval=5,
            **kw,  # type: ignore[arg-type]
        )

    def ats(self, *configs: EngineConfig, **kw: bool) -> MatchingEngine:
        return self._keep(MatchingEngine(list(configs), **kw))

    def oms(self, config: EngineConfig) -> OrderEntry:
        return self._keep(OrderEntry(config))

    def bridge(self, bridge: TlsBridge) -> TlsBridge:
        return self._keep(bridge)

    def stop_all(self) -> None:
        for thing in reversed(self._started):
            thing.stop()


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    made = Peers(tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


def assert_clean(*engines: MatchingEngine | OrderEntry) -> None:
    """Neither engine saw a fatal sequence problem, nor a callback error."""
    for engine in engines:
        assert engine.sequence_errors() == [], engine.event_texts()
        assert engine.errors == []


# -- 1. direct, FIX 4.4 ------------------------------------------------------------------------------


def test_orders_fill_and_unknown_cancel_is_rejected(peers: Peers) -> None:
    ats = peers.ats(peers.ats_config(data_dictionary=default_dictionary("FIX.4.4")))
    oms = peers.oms(peers.oms_config(ats.port, data_dictionary=default_dictionary("FIX.4.4")))
    assert oms.wait_logged_on(WAIT)
    assert ats.wait_logged_on(WAIT, session="FIX.4.4:ATS->OMS")

    for i in range(5):
        oms.send_new_order(f"C{i}", "VOD.L", "1", 100 + i, 10.25 if i % 2 else None)
    assert oms.wait_for(lambda o: sum(1 for r in o.exec_reports if r.ord_status == "2") == 5, WAIT)
    for i in range(5):
        statuses = [(r.ord_status, r.exec_type) for r in oms.reports_for(f"C{i}")]
        assert statuses == [("0", "0"), ("2", "F")]
    fill = oms.reports_for("C1")[1].message
    assert (fill.get(31), fill.get(32), fill.get(151)) == ("10.25", "101", "0")
    assert oms.reports_for("C0")[1].message.get(31) == "100"  # market order: the engine's price

    oms.send_cancel("X1", "NO-SUCH-ORDER", "VOD.L", "1", 100)
    assert oms.wait_for(lambda o: len(o.cancel_rejects) == 1, WAIT)
    reject = oms.cancel_rejects[0]
    assert (reject.get(41), reject.get(102), reject.get(434)) == ("NO-SUCH-ORDER", "1", "1")

    assert [m[1] for m in ats.received if m[1] in "DF"] == ["D"] * 5 + ["F"]
    assert oms.rejects == [] and ats.rejects == []

    assert oms.logout("done", WAIT)
    assert ats.wait_for(lambda a: not a.logged_on(), WAIT)
    assert any(m.get(58) == "done" for m in ats.logouts)
    assert_clean(ats, oms)
    assert "Received logout request" in ats.event_texts()
    # The ATS wrote QuickFIX's own FileLog next to the in-memory record.
    assert (peers.root / "ats-log" / "FIX.4.4-ATS-OMS.event.current.log").read_text()


def test_resting_orders_cancel_replace_status_and_business_reject(peers: Peers) -> None:
    ats = peers.ats(peers.ats_config(data_dictionary=default_dictionary("FIX.4.4")), auto_fill=False)
    oms = peers.oms(peers.oms_config(ats.port, data_dictionary=default_dictionary("FIX.4.4")))
    assert oms.wait_logged_on(WAIT)
    oms.send_new_order("A", "VOD.L", "1", 100, 10.0)
    oms.send_new_order("B", "VOD.L", "2", 50, 11.0)
    oms.send_replace("A2", "A", "VOD.L", "1", 200, 10.5)
    oms.send_cancel("B2", "B", "VOD.L", "2", 50)
    oms.send_status("A2", "VOD.L", "1")
    oms.send_raw({35: "BE", 923: "U1", 924: "1", 553: "trader"})  # valid 4.4, not an ATS message
    assert oms.wait_for(lambda o: len(o.exec_reports) == 5 and len(o.rejects) == 1, WAIT)
    assert [tuple(r) for r in oms.exec_reports] == [
        ("A", "0", "0"),
        ("B", "0", "0"),
        ("A2", "0", "5"),  # FIX 4.4 has no OrdStatus Replaced: the order is New again
        ("B2", "4", "4"),
        ("A2", "0", "I"),
    ]
    assert oms.exec_reports[2].message.get(38) == "200"
    business = oms.rejects[0]
    assert (business.msg_type, business.get(372), business.get(380)) == ("j", "BE", "3")
    assert {o.cl_ord_id: o.status for o in ats.orders()} == {"A2": "0", "B2": "4"}
    assert_clean(ats, oms)


def test_a_malformed_order_draws_a_session_reject(peers: Peers) -> None:
    ats = peers.ats(peers.ats_config(data_dictionary=default_dictionary("FIX.4.4")))
    oms = peers.oms(peers.oms_config(ats.port))
    assert oms.wait_logged_on(WAIT)
    oms.send_raw([(35, "D"), (11, "BAD"), (55, "VOD.L"), (54, "1"), (38, "1"), (40, "Z"), (60, "20260101-00:00:00")])
    assert oms.wait_for(lambda o: len(o.rejects) == 1, WAIT)
    reject = oms.rejects[0]
    assert (reject.msg_type, reject.get(371), reject.get(373)) == ("3", "40", "5")  # value out of range
    assert reject.get(45) == str(next(m.seq_num for m in oms.outgoing() if m.get(11) == "BAD"))
    assert ats.messages("D") == []
    assert_clean(ats, oms)


# -- 2. through a pair of TLS bridges, mutual TLS ---------------------------------------------------------


def _bridged_pair(peers: Peers, pki: DevPki, client_ctx: ssl.SSLContext) -> tuple[TlsBridge, TlsBridge]:
    ats = peers.ats(peers.ats_config())
    server_ctx = tls.server_context(pki.ats_server_cert, pki.ats_server_key, pki.ca_cert)
    server = peers.bridge(TlsBridge.server(0, server_ctx, "127.0.0.1", ats.port))
    client = peers.bridge(TlsBridge.client(0, "127.0.0.1", server.port, client_ctx))
    return client, server


def test_orders_flow_through_mutual_tls_bridges(peers: Peers, pki: DevPki) -> None:
    cert, key = pki.clients["OMS1"]
    client, server = _bridged_pair(peers, pki, tls.client_context(cert, key, pki.ca_cert))
    oms = peers.oms(peers.oms_config(client.port, sender="OMS"))
    assert oms.wait_logged_on(WAIT)
    for i in range(3):
        oms.send_new_order(f"T{i}", "VOD.L", "2", 10, 99.5)
    assert oms.wait_for(lambda o: sum(1 for r in o.exec_reports if r[1] == "2") == 3, WAIT)
    assert client.connections == 1 and server.connections == 1
    assert server.peer_subjects and "OMS1" in server.peer_subjects[0]
    assert client.errors == [] and server.errors == []
    assert_clean(oms)


def test_server_bridge_refuses_a_client_without_certificate(peers: Peers, pki: DevPki) -> None:
    client, server = _bridged_pair(peers, pki, tls.client_context(None, None, pki.ca_cert))
    oms = peers.oms(peers.oms_config(client.port))
    assert oms.wait_for(lambda: server.errors != [], WAIT), "the handshake failure is recorded"
    assert "TLS handshake" in server.errors[0]
    assert not oms.logged_on()


def test_bridges_pump_bytes_and_propagate_close(pki: DevPki) -> None:
    """Plain echo server behind a bridge pair: bytes both ways; closing one end closes the other."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        seen_eof = threading.Event()

        def echo() -> None:
            conn, _ = listener.accept()
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)
                seen_eof.set()

        worker = threading.Thread(target=echo, daemon=True)
        worker.start()
        cert, key = pki.clients["OMS1"]
        server_ctx = tls.server_context(pki.ats_server_cert, pki.ats_server_key, pki.ca_cert)
        with (
            TlsBridge.server(0, server_ctx, "127.0.0.1", listener.getsockname()[1]) as server,
            TlsBridge.client(0, "127.0.0.1", server.port, tls.client_context(cert, key, pki.ca_cert)) as client,
        ):
            payload = bytes(range(256)) * 1024  # larger than one chunk: backpressure path
            with socket.create_connection(("127.0.0.1", client.port)) as conn:
                conn.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = conn.recv(65536)
                    assert chunk
                    got += chunk
                assert got == payload
            assert seen_eof.wait(WAIT), "closing the client side reached the server"
            worker.join(WAIT)
            assert client.errors == [] and server.errors == []
        assert client.active == 0 and server.active == 0


# -- 3. reconnects: persisted sequence numbers, resend recovery -------------------------------------------


def _resent(messages: list[FixMessage], predicate: Callable[[FixMessage], bool]) -> list[FixMessage]:
    return [m for m in messages if m.get(43) == "Y" and predicate(m)]


def test_reconnects_resume_sequence_numbers_and_recover_gaps(peers: Peers) -> None:
    ats_config = peers.ats_config()
    ats = peers.ats(ats_config)
    oms_config = peers.oms_config(ats.port)
    oms = peers.oms(oms_config)
    assert oms.wait_logged_on(WAIT)
    oms.send_new_order("R0", "VOD.L", "1", 10, 5.0)
    assert oms.wait_exec("R0", "2", WAIT)

    # A. The OMS goes away; the ATS reports while it is gone, then the OMS comes back.
    oms.stop()
    assert ats.wait_for(lambda a: not a.logged_on(), WAIT)
    stored = ats.send_raw(
        [
            (35, "8"),
            (37, "O-UNSOLICITED"),
            (11, "R0"),
            (17, "E-LATE"),
            (150, "3"),
            (39, "3"),
            (55, "VOD.L"),
            (54, "1"),
            (151, "0"),
            (14, "10"),
            (6, "5"),
        ],
        session=ats_config.session_key,
    )
    assert stored is False  # not sent now: kept in the store for the resend
    oms = peers.oms(oms_config)  # same store: continues its sequence numbers
    assert oms.wait_logged_on(WAIT)
    assert oms.wait_for(lambda o: _resent(o.messages("8"), lambda m: m.get(17) == "E-LATE"), WAIT)
    assert any("Sent ResendRequest" in t for t in oms.event_texts())
    assert any("Received ResendRequest" in t for t in ats.event_texts())
    assert [m.seq_num for m in ats.messages("A")][-1] > 1, "the OMS did not start again from 1"

    # B. The ATS goes away; the OMS sends while it is gone; the ATS comes back on the same port.
    ats.stop()
    assert oms.wait_for(lambda o: not o.logged_on(), WAIT)
    assert oms.send_new_order("R1", "VOD.L", "1", 20, 6.0) is False
    assert oms.send_new_order("R2", "VOD.L", "2", 30, None) is False
    ats = peers.ats(ats_config)
    assert oms.wait_logged_on(WAIT)  # the initiator reconnects by itself (ReconnectInterval=1)
    assert oms.wait_exec("R1", "2", WAIT) and oms.wait_exec("R2", "2", WAIT)
    assert len(_resent(ats.messages("D"), lambda m: m.get(11) in ("R1", "R2"))) == 2
    assert any("MsgSeqNum too high" in t for t in ats.event_texts()), "the ATS saw the gap ..."
    assert ats.sequence_gaps() and any("Received ResendRequest" in t for t in oms.event_texts())  # ... and healed it
    assert_clean(ats, oms)
    assert not any("MsgSeqNum too low" in (m.get(58) or "") for m in oms.logouts + ats.logouts)


# -- 4. FIX 4.2 and FIXT.1.1 / FIX 5.0SP2 ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("begin_string", "dictionary", "fill_exec_type"),
    [("FIX.4.2", "FIX.4.2", "2"), ("FIXT.1.1", "FIX.5.0SP2", "F")],
)
def test_other_versions_log_on_and_trade(peers: Peers, begin_string: str, dictionary: str, fill_exec_type: str) -> None:
    ats = peers.ats(peers.ats_config(begin_string, data_dictionary=default_dictionary(dictionary)))
    oms = peers.oms(peers.oms_config(ats.port, begin_string, data_dictionary=default_dictionary(dictionary)))
    assert oms.wait_logged_on(WAIT)
    oms.send_new_order("V1", "VOD.L", "1", 100, 12.5)
    assert oms.wait_exec("V1", "2", WAIT)
    assert [tuple(r) for r in oms.exec_reports] == [("V1", "0", "0"), ("V1", "2", fill_exec_type)]
    assert oms.rejects == [] and ats.rejects == []
    if begin_string == "FIXT.1.1":
        assert ats.messages("A")[0].get(1137) == "9"  # DefaultApplVerID FIX.5.0SP2
    assert_clean(ats, oms)


# -- small pieces ------------------------------------------------------------------------------------------


def test_one_session_id_per_process(peers: Peers) -> None:
    config = peers.ats_config()
    peers.ats(config)
    twin = MatchingEngine([peers.ats_config()])
    with pytest.raises(RuntimeError, match="already running"):
        twin.start()


def test_settings_for_fixt_and_message_building(tmp_path: Path) -> None:
    config = EngineConfig(
        begin_string="FIXT.1.1",
        sender_comp_id="A",
        target_comp_id="B",
        port=free_port(),
        store_dir=tmp_path,
        data_dictionary=default_dictionary("FIX.5.0SP2"),
    )
    settings = config.settings("initiator")
    assert settings["DefaultApplVerID"] == "FIX.5.0SP2"
    assert settings["TransportDataDictionary"].endswith("FIXT11.xml")
    assert settings["AppDataDictionary"].endswith("FIX50SP2.xml")
    assert settings["ResetOnLogon"] == "N" and settings["SocketConnectPort"] == str(config.port)
    with pytest.raises(ValueError, match="line break"):
        EngineConfig(sender_comp_id="A", target_comp_id="B\nX=1", store_dir=tmp_path).settings("acceptor")

    text = build_message([(35, "D"), (97, "Y"), (11, "X"), (448, "P1"), (448, "P2")]).toString()
    parsed = FixMessage("s", text)
    assert parsed[1] == "D" and parsed.get(97) == "Y" and parsed.values(448) == ["P1", "P2"]
    assert text.index("97=Y") < text.index("11=X")  # a header tag went to the header
