"""`fixproxy replay`: capture formats, sessions, the offline "what would we have blocked", live
replays through a real proxy with a real QuickFIX ATS behind it, and the command line.

The sample captures are in tests/data/captures (make_captures.py regenerates them). Only outcomes
are asserted, never timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fixproxy.certs import DevPki
from fixproxy.cli import main
from fixproxy.codec import SOH, decode_one, encode, replace_fields
from fixproxy.config import ProxyConfig, load_config, parse_config
from fixproxy.demo import Stack, demo_config_text
from fixproxy.replay import (
    CapturedMessage,
    CaptureError,
    ReplayError,
    detect_format,
    read_capture,
    read_captures,
    replay_live,
    replay_offline,
    split_sessions,
)

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "tests" / "data" / "captures"
QUICKFIX_LOG = CAPTURES / "FIX.4.4-OMS1-ATS.messages.log"
HOSTILE_TEXT = CAPTURES / "hostile-OMS2.pipe.log"
HOSTILE_RAW = CAPTURES / "hostile-OMS2.raw"

# What the demo configuration refuses in the hostile capture: reason -> (outcome, MsgSeqNum).
HOSTILE_FINDINGS = {
    "bad_checksum": ("dropped", 3),
    "msgtype_not_allowed": ("refused", 5),
    "invalid_value": ("refused", 6),
    "spoofing": ("refused", 7),
}


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "fixproxy.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def demo_config(pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ProxyConfig]:
    """The demo's proxy configuration (sessions OMS1 and OMS2), as a file and parsed."""
    workdir = tmp_path_factory.mktemp("replay-config")
    text = demo_config_text(pki, listen_port=1, upstream_ports=[2], workdir=workdir)
    path = workdir / "fixproxy.toml"
    path.write_text(text)
    return path, parse_config(text, workdir, str(path))


# -- formats ---------------------------------------------------------------------------------------


def test_quickfix_log_is_read_with_times_and_both_directions() -> None:
    assert detect_format(QUICKFIX_LOG.read_bytes()) == "quickfix"
    msgs = read_capture(QUICKFIX_LOG)
    assert msgs and all(m.frame_error is None and m.time is not None for m in msgs)
    assert [m.msg_type for m in msgs[:2]] == ["A", "A"]
    assert (msgs[0].sender, msgs[0].target, msgs[0].seq) == ("OMS1", "ATS", 1)
    sent = [m for m in msgs if m.sender == "OMS1"]
    assert sum(m.msg_type == "D" for m in sent) == 49
    assert sum(m.msg_type == "F" for m in sent) == 1 and sum(m.msg_type == "H" for m in sent) == 1
    assert any(m.sender == "ATS" and m.msg_type == "8" for m in msgs)
    times = [m.time for m in msgs]
    assert times == sorted(times)  # type: ignore[type-var]
    assert msgs[0].where.endswith(":1")


def test_text_and_raw_formats_give_the_same_messages(tmp_path: Path) -> None:
    text = HOSTILE_TEXT.read_bytes()
    caret = tmp_path / "hostile.caret.log"
    caret.write_bytes(text.replace(b"|", b"^A"))
    soh = tmp_path / "hostile.soh.log"
    soh.write_bytes(text.replace(b"|", SOH))
    assert detect_format(text) == "text-pipe"
    assert detect_format(caret.read_bytes()) == "text-caret"
    assert detect_format(soh.read_bytes()) == "text-soh"
    assert detect_format(HOSTILE_RAW.read_bytes()) == "raw"

    pipe = read_capture(HOSTILE_TEXT)
    assert len(pipe) == 25 and all(m.time is not None for m in pipe)
    assert [m.raw for m in read_capture(caret)] == [m.raw for m in pipe]
    assert [m.raw for m in read_capture(soh)] == [m.raw for m in pipe]
    raw = read_capture(HOSTILE_RAW)
    assert [m.raw for m in raw] == [m.raw for m in pipe]
    assert all(m.time is None and m.sending_time is not None for m in raw)
    # The bad CheckSum survives the conversion: it is kept as captured, flagged, not repaired.
    bad = [m for m in pipe if m.frame_error is not None]
    assert [(m.msg_type, m.seq, m.frame_error, m.repaired) for m in bad] == [("D", 3, "bad_checksum", False)]
    assert [(m.seq, m.frame_error) for m in raw if m.frame_error] == [(3, "bad_checksum")]


def test_text_line_prefixes_and_separator_repair(tmp_path: Path) -> None:
    good = encode("FIX.4.4", [(35, "D"), (49, "OMS1"), (56, "ATS"), (34, 2), (52, "20260302-09:30:00.000"),
                              (11, "X1"), (58, "a|b literal pipe")])
    body = b"35=0|49=OMS1|56=ATS|34=3|52=20260302-09:30:01|"
    head = b"8=FIX.4.4|9=%d|" % len(body)
    over_text = head + body + b"10=%03d|" % (sum(head + body) % 256)  # 9/10 computed on the | form
    path = tmp_path / "mixed.log"
    path.write_bytes(b"\n".join([
        b"20260302-09:30:00.000 : " + good.replace(SOH, b"|"),  # the literal | in 58 stays a |
        b"1772443801.5 " + over_text,
        b"",
        b"# a comment",
        over_text.rstrip(b"|"),  # no separator after 10=NNN
    ]) + b"\n")
    msgs = read_capture(path)
    assert len(msgs) == 3
    assert msgs[0].raw == good and msgs[0].get(b"58") == b"a|b literal pipe" and not msgs[0].repaired
    assert msgs[0].time == datetime(2026, 3, 2, 9, 30, tzinfo=UTC).timestamp()
    assert msgs[1].repaired and msgs[1].frame_error is None and msgs[1].time == 1772443801.5
    assert decode_one(msgs[1].raw).get(b"34") == b"3"
    assert msgs[2].repaired and msgs[2].time is None and msgs[2].where.endswith(":5")


def test_a_file_that_is_no_capture_is_one_error_naming_file_and_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    lines = [*HOSTILE_TEXT.read_text().splitlines()[:3], "this is not FIX at all"]
    bad = tmp_path / "bad.log"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(CaptureError) as err:
        read_capture(bad)
    assert err.value.where == f"{bad}:4"
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CaptureError) as err:
        read_capture(garbage)
    assert err.value.line == 1 and "not a FIX capture" in err.value.problem
    assert main(["replay", "--offline", "--config", "unused.toml", str(bad)]) == 2
    line = capsys.readouterr().err.strip()
    assert line == f"fixproxy: line without a FIX message (8=FIX...) ({bad}:4)"
    empty = tmp_path / "GLOBAL.messages.current.log"
    empty.write_bytes(b"")
    assert read_capture(empty) == []
    with pytest.raises(CaptureError):
        read_captures([empty])


def test_sessions_are_split_by_compids_and_initiator() -> None:
    both = read_capture(QUICKFIX_LOG) + read_capture(HOSTILE_TEXT)
    sessions = split_sessions(both)
    assert [(s.name, s.how) for s in sessions] == [("OMS1->ATS", "first Logon"), ("OMS2->ATS", "first Logon")]
    hostile = sessions[1]
    assert len(hostile.initiator_messages) == 11 and len(hostile.acceptor_messages) == 14
    # Without a Logon the first order message decides; --session overrides everything.
    no_logon = [m for m in read_capture(HOSTILE_TEXT) if m.msg_type != "A"]
    assert split_sessions(no_logon)[0].how == "first order message"
    flipped = split_sessions(both, "ATS->OMS2")
    assert [(s.name, s.how) for s in flipped] == [("ATS->OMS2", "--session")]
    with pytest.raises(ReplayError, match="no session OMS9->ATS"):
        split_sessions(both, "OMS9->ATS")


# -- offline -----------------------------------------------------------------------------------------


def _check_hostile(findings: list, session: str = "OMS2") -> None:
    got = {f.reason: (f.outcome, f.seq) for f in findings}
    assert got == HOSTILE_FINDINGS
    assert all(f.direction == "inbound" and f.session == session for f in findings)


def test_offline_hostile_capture_with_the_demo_config(demo_config: tuple[Path, ProxyConfig]) -> None:
    _, config = demo_config
    for path in (HOSTILE_TEXT, HOSTILE_RAW):
        report = replay_offline(read_capture(path), config, files=[str(path)])
        _check_hostile(report.findings)
        assert report.blocked == 4
        assert report.by_reason() == dict.fromkeys(HOSTILE_FINDINGS, 1)
        assert report.counts() == sorted(
            [(r, "inbound", o, 1) for r, (o, _) in HOSTILE_FINDINGS.items()], key=lambda c: c[0])
        (sess,) = report.sessions
        assert sess.policy == "OMS2" and sess.connections == 1
        assert sess.stats["inbound"] == {"received": 11, "forwarded": 7, "refused": 3, "dropped": 1, "shadowed": 0}
        assert sess.stats["outbound"]["refused"] == 0
        ex = report.examples()
        assert "Side" in ex["invalid_value"][0].text and "OMS1" in ex["spoofing"][0].text
        assert "cannot be checked offline" in report.notes[0]
        text = report.text()
        assert "would have blocked 4" in text and "spoofing" in text
        assert json.loads(json.dumps(report.as_dict()))["by_reason"]["bad_checksum"] == 1


def test_offline_without_logon_or_acceptor_side_uses_synthetic_logons(demo_config: tuple[Path, ProxyConfig]) -> None:
    _, config = demo_config
    msgs = read_capture(HOSTILE_TEXT)
    only_oms = [m for m in msgs if m.sender == "OMS2"]
    report = replay_offline(only_oms, config)
    _check_hostile(report.findings)
    assert any("synthetic acceptor Logon" in n for n in report.sessions[0].notes)
    no_logon = [m for m in only_oms if m.msg_type != "A"]
    report = replay_offline(no_logon, config)
    _check_hostile(report.findings)
    assert any("synthetic Logon" in n for n in report.sessions[0].notes)


def renamed(messages: list[CapturedMessage], old: bytes, new: bytes, path: Path) -> list[CapturedMessage]:
    """The valid messages with CompID `old` renamed `new` (9/10 recomputed), as a raw SOH stream."""
    out = []
    for m in messages:
        if m.frame_error is None:
            msg = decode_one(m.raw)
            out.append(replace_fields(msg, {t: new for t in (b"49", b"56") if msg.get(t) == old}))
    path.write_bytes(b"".join(out))
    return read_capture(path)


def test_offline_unknown_session_and_disconnect(demo_config: tuple[Path, ProxyConfig], tmp_path: Path) -> None:
    _, config = demo_config
    msgs = read_capture(HOSTILE_TEXT)
    # A session the configuration does not know: the Logon is refused, nothing else is inspected.
    strangers = renamed(msgs, b"OMS2", b"OMSX", tmp_path / "strangers.raw")
    report = replay_offline(strangers, config)
    assert [(f.reason, f.outcome) for f in report.findings] == [("unknown_session", "connection_refused")]
    assert report.sessions[0].not_inspected == len(strangers) - 1
    # A MsgSeqNum going backwards closes the session; the rest of that connection is not inspected.
    oms = [m for m in msgs if m.sender == "OMS2" and m.frame_error is None]
    report = replay_offline([*oms[:3], oms[1], oms[3]], config)  # Logon, 2, 4, 2 again, 5
    assert [(f.reason, f.outcome, f.seq) for f in report.findings] == [("seqnum_too_low", "disconnected", 2)]
    assert report.sessions[0].not_inspected == 1


def test_offline_quickfix_sample_is_clean(demo_config: tuple[Path, ProxyConfig]) -> None:
    _, config = demo_config
    report = replay_offline(read_capture(QUICKFIX_LOG), config)
    assert report.findings == [] and report.blocked == 0
    (sess,) = report.sessions
    assert sess.stats["inbound"]["forwarded"] == sess.from_initiator == 53
    assert "0 refusals" in report.text()


def test_cli_offline_end_to_end(demo_config: tuple[Path, ProxyConfig], tmp_path: Path) -> None:
    config_path, _ = demo_config
    out = tmp_path / "report.json"
    r = run_cli("replay", "--offline", "--config", str(config_path), str(HOSTILE_TEXT), "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "would have blocked 4" in r.stdout
    for reason in HOSTILE_FINDINGS:
        assert reason in r.stdout
    assert "cannot be checked offline" in r.stdout
    data = json.loads(out.read_text())
    assert data["mode"] == "offline" and data["blocked"] == 4
    assert data["by_reason"] == dict.fromkeys(HOSTILE_FINDINGS, 1)
    assert data["examples"]["spoofing"][0]["seq"] == 7


@pytest.mark.parametrize(("args", "expected"), [
    (["replay", "X"], "replay needs --target HOST:PORT"),
    (["replay", "--offline", "X"], "replay --offline needs --config FILE"),
    (["replay", "--offline", "--config", "c.toml", "--target", "h:1", "X"], "--target cannot be used with it"),
    (["replay", "--target", "h:1", "X"], "replay needs --cert, --key and --ca"),
    (["replay", "--target", "h:1", "--insecure", "--ca", "ca.pem", "X"], "cannot be combined"),
    (["replay", "--target", "nope", "X"], "not HOST:PORT"),
    (["replay", "--target", "h:1", "--insecure", "--session", "OMS1", "X"], "not SENDER->TARGET"),
    (["replay", "--target", "h:1", "--speed", "2", "--original-timing", "X"], "not allowed with"),
])
def test_cli_usage_errors(args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("fixproxy: ") and expected in err, err


def test_replay_of_the_demo_s_own_traffic_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The demo in its own interpreter: QuickFIX allows one live session per SessionID per process,
    # and this module's Stack serves OMS1 too.
    workdir = tmp_path / "demo-run"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "fixproxy.demo", "--workdir", str(workdir)], capture_output=True,
                       text=True, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    logs = sorted((workdir / "oms-OMS1-log").glob("*.messages.current.log"))  # with QuickFIX's empty GLOBAL
    config = workdir / "fixproxy.toml"
    assert main(["replay", "--offline", "--config", str(config), *map(str, logs)]) == 0
    out = capsys.readouterr().out
    assert "would have blocked: nothing (0 refusals)" in out
    report = replay_offline(read_captures(logs), load_config(config))
    assert report.findings == []
    assert report.sessions[0].stats["inbound"]["received"] >= 21  # Logon and the demo's 20 orders


# -- live --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real QuickFIX ATS behind TLS and fixproxy; no OMS: the replayer is the OMS."""
    sessions = {"OMS1": {}, "OMS2": {}, "OMS3": {}, "OMS4": {}}
    s = Stack(tmp_path_factory.mktemp("replay-stack"), list(sessions), sessions=sessions,
              extra="\n[auth]\nbruteforce_threshold = 1000\n")
    try:
        s.start(oms=False)
        yield s
    finally:
        s.stop()


def _ats(stack: Stack, compid: str, msg_type: str) -> list:
    return stack.ats[0].messages(msg_type, f"FIX.4.4:ATS->{compid}")


def test_live_replay_of_the_quickfix_sample(stack: Stack) -> None:
    msgs = read_capture(QUICKFIX_LOG)
    limit_orders = sum(1 for m in msgs if m.sender == "OMS1" and m.msg_type == "D" and m.get(b"40") == b"2")
    report = replay_live(msgs, "127.0.0.1", stack.proxy_port, stack.client_context("OMS1"),
                         refresh_sending_time=True)
    assert report.total == report.sent == 51  # 49 orders, a cancel, a status request
    assert report.refused == 0 and report.dropped == 0 and report.unanswered == 0
    assert report.accepted == report.answered == 51
    assert report.fills == limit_orders == 48  # every limit order filled; the stop order rests...
    assert report.exec_status["4"] == 1  # ...until the captured cancel cancels it
    assert report.renumbered == 0  # a fresh session continues the captured numbers
    assert set(report.latency) == {"p50", "p90", "p99", "max", "count"} and report.latency["count"] == 50
    assert 0 < report.latency["p50"] <= report.latency["p90"] <= report.latency["p99"] <= report.latency["max"]
    assert report.versus_capture["compared"] == 50 and report.versus_capture["different"] == 0
    # What the real ATS saw: every order once, no sequence trouble, no Reject.
    assert len(_ats(stack, "OMS1", "D")) == 49
    assert _ats(stack, "OMS1", "3") == []
    assert not [e for e in stack.ats[0].events("FIX.4.4:ATS->OMS1") if "MsgSeqNum too" in e.text]
    assert "accepted 51" in report.text()


def test_live_replay_of_the_hostile_capture(stack: Stack) -> None:
    report = replay_live(read_capture(HOSTILE_TEXT), "127.0.0.1", stack.proxy_port, stack.client_context("OMS2"),
                         refresh_sending_time=True)
    assert report.total == report.sent == 8
    assert report.refused == 3 and report.dropped == 1 and report.accepted == 4 and report.fills == 4
    by = {(r.msg_type, r.session_reject_reason): (r.text, r.count) for r in report.refusals}
    assert by[("3", 11)] == ("MsgType B not allowed", 1)
    assert by[("3", 5)][0].startswith("Value is incorrect") and by[("3", 5)][1] == 1
    assert by[("3", 99)] == ("OnBehalfOfCompID OMS1 not allowed for this session", 1)
    # The garbled order was dropped by the proxy; the ATS asked for it again and got a GapFill.
    assert report.resend_requests >= 1
    assert report.versus_capture["examples"] == [{"cl_ord_id": "HOST-0005", "captured": "Filled", "now": "refused"}]
    delivered = {m.get(11) for m in _ats(stack, "OMS2", "D")}
    assert delivered == {"HOST-0001", "HOST-0003", "HOST-0006", "HOST-0007"}
    events = stack.proxy.events()  # type: ignore[union-attr]
    seen = {(e.reason.value, e.outcome.value) for e in events if e.reason is not None and e.session == "OMS2"}
    assert seen == {(r, o) for r, (o, _) in HOSTILE_FINDINGS.items()}


def test_cli_live_then_replayed_again_on_a_used_session(stack: Stack, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # The QuickFIX sample as session OMS3, written as a raw SOH stream.
    capture = tmp_path / "oms3.raw"
    renamed(read_capture(QUICKFIX_LOG), b"OMS1", b"OMS3", capture)
    cert, key = stack.pki.clients["OMS3"]
    json_out = tmp_path / "live.json"
    rc = main(["replay", str(capture), "--target", f"127.0.0.1:{stack.proxy_port}", "--cert", str(cert), "--key",
               str(key), "--ca", str(stack.pki.ca_cert), "--refresh-sending-time", "--json", str(json_out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "accepted 51" in stdout and "refused 0" in stdout and "latency send -> first answer" in stdout
    data = json.loads(json_out.read_text())
    assert data["mode"] == "live" and data["sent"] == data["accepted"] == 51 and data["fills"] == 48
    assert data["refused_by"] == {}
    # Again, renumbered: the proxy closes a Logon at a number the session has passed, without a
    # word; the replayer logs on again with ResetSeqNumFlag, and the ATS refuses the reused ClOrdIDs
    # (not the stop order's: its cancel moved it to the cancel's ClOrdID).
    report = replay_live(read_capture(capture), "127.0.0.1", stack.proxy_port, stack.client_context("OMS3"),
                         refresh_sending_time=True, renumber=True)
    assert any("ResetSeqNumFlag" in n for n in report.notes), report.notes
    assert report.sent == 51
    assert report.refused_by() == {"35=8: duplicate ClOrdID": 48}
    assert report.refused == 48 and report.accepted == 3


def test_live_plaintext_straight_to_the_ats_at_the_captured_pace(stack: Stack, tmp_path: Path) -> None:
    """No proxy: the replayer alone keeps a QuickFIX session up (HeartBtInt 1 s, 2.5 s between the
    orders), and on a second run is told "MsgSeqNum too low, expecting N" and logs on at N."""
    t0 = datetime.now(UTC).timestamp() - 60

    def stamp(dt: float) -> str:
        return datetime.fromtimestamp(t0 + dt, UTC).strftime("%Y%m%d-%H:%M:%S.%f")[:-3]

    def msg(seq: int, dt: float, mt: str, *fields: tuple[int, str]) -> bytes:
        raw = encode("FIX.4.4", [(35, mt), (49, "OMS4"), (56, "ATS"), (34, seq), (52, stamp(dt)), *fields])
        return stamp(dt).encode() + b" : " + raw.replace(SOH, b"^A")

    def order(cl: str, dt: float) -> list[tuple[int, str]]:
        return [(11, cl), (21, "1"), (55, "VOD.L"), (54, "1"), (60, stamp(dt)), (38, "10"), (40, "2"), (44, "9")]

    capture = tmp_path / "oms4.caret.log"
    capture.write_bytes(b"\n".join([msg(1, 0, "A", (98, "0"), (108, "1")), msg(2, 0.1, "D", *order("P-1", 0.1)),
                                     msg(3, 1.1, "0"), msg(4, 2.6, "D", *order("P-2", 2.6))]) + b"\n")
    msgs = read_capture(capture)
    report = replay_live(msgs, "127.0.0.1", stack.ats[0].port, None, speed=1.0, refresh_sending_time=True)
    assert not report.tls and report.sent == report.answered == 2 and report.fills == 2
    assert report.heartbeats >= 1  # 2.5 s without an order: the replayer's own Heartbeats
    assert report.refused == 0 and report.notes == []
    again = replay_live(msgs, "127.0.0.1", stack.ats[0].port, None, refresh_sending_time=True)
    assert any("MsgSeqNum too low" in n and "logged on again at 34=" in n for n in again.notes), again.notes
    assert again.renumbered == 2 and again.sent == 2
    assert again.refused_by() == {"35=8: duplicate ClOrdID": 2}
    assert not [e for e in stack.ats[0].events("FIX.4.4:ATS->OMS4") if "MsgSeqNum too high" in e.text]


def test_live_logon_refused_by_the_proxy_is_one_runtime_error(stack: Stack,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # OMS1's certificate for the OMS2 session: the proxy closes the connection at Logon, silently.
    with pytest.raises(ReplayError, match="closed without a Logout"):
        replay_live(read_capture(HOSTILE_TEXT), "127.0.0.1", stack.proxy_port, stack.client_context("OMS1"))
    cert, key = stack.pki.clients["OMS1"]
    rc = main(["replay", str(HOSTILE_TEXT), str(QUICKFIX_LOG), "--target", f"127.0.0.1:{stack.proxy_port}",
               "--cert", str(cert), "--key", str(key), "--ca", str(stack.pki.ca_cert)])
    assert rc == 2  # two sessions in the files: which one is a usage question
    assert "choose one with --session" in capsys.readouterr().err
    rc = main(["replay", str(HOSTILE_TEXT), "--target", f"127.0.0.1:{stack.proxy_port}", "--cert", str(cert),
               "--key", str(key), "--ca", str(stack.pki.ca_cert)])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith("fixproxy: Logon OMS2->ATS refused") and f"(127.0.0.1:{stack.proxy_port})" in err
