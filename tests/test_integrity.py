"""Unauthorised modification alerts (KPI catalogue, integrity): a forwarded message whose bytes
differ from what was received beyond the sequence translation, and audit-chain verification
failures of a running proxy's trail."""

from __future__ import annotations

import json
import time

import pytest

from fixproxy import metrics as m
from fixproxy import session as session_mod
from fixproxy.audit import generate_signing_key
from fixproxy.codec import Decoder, Message, encode
from fixproxy.demo import Stack
from fixproxy.policy import SessionPolicy, ValidationMode
from fixproxy.session import SessionInspector, SessionState, utc_timestamp


def _msg(sender: str, target: str, seq: int, mt: str, *fields: tuple[int, object]) -> bytes:
    return encode("FIX.4.4", [(35, mt), (49, sender), (56, target), (34, seq), (52, utc_timestamp()), *fields])


def _translating_inspector() -> SessionInspector:
    """Logged on, with one refusal behind it so later messages are renumbered."""
    policy = SessionPolicy(name="OMS1", begin_string="FIX.4.4", sender_comp_id="OMS1", target_comp_id="ATS",
                           validation=ValidationMode.OFF, allowed_inbound=frozenset({"D"}))
    state = SessionState(policy)
    insp = SessionInspector(lambda _m: state)
    insp.from_initiator(_msg("OMS1", "ATS", 1, "A", (98, 0), (108, 30)))
    insp.from_acceptor(_msg("ATS", "OMS1", 1, "A", (98, 0), (108, 30)))
    res = insp.from_initiator(_msg("OMS1", "ATS", 2, "H", (11, "X")))  # refused: a Reject takes seq 2 back
    assert res.refused and res.to_initiator
    return insp


def test_an_honest_rewrite_is_not_flagged() -> None:
    insp = _translating_inspector()
    res = insp.from_acceptor(_msg("ATS", "OMS1", 2, "8", (11, "A"), (39, "0")))
    out = Decoder().feed(res.to_initiator[0])[0]
    assert isinstance(out, Message) and out.get(b"34") == b"3"  # renumbered past the proxy's Reject
    assert insp.stats[session_mod.OUTBOUND].modified == 0
    assert not [e for e in res.events if e.kind == "integrity.modified_forward"]


def test_a_rewrite_that_changes_more_than_the_numbers_is_counted_and_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection (it cannot happen otherwise): the rewrite also alters the ClOrdID."""
    insp = _translating_inspector()
    real = session_mod.replace_fields
    monkeypatch.setattr(session_mod, "replace_fields", lambda msg, changes: real(msg, {**changes, b"11": b"EVIL"}))
    res = insp.from_acceptor(_msg("ATS", "OMS1", 2, "8", (11, "A"), (39, "0")))
    assert insp.stats[session_mod.OUTBOUND].modified == 1
    ev = next(e for e in res.events if e.kind == "integrity.modified_forward")
    assert "MsgSeqNum 2" in ev.detail and ev.session == "OMS1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("integrity")
    key = work / "audit.pem"
    generate_signing_key(key)
    (work / "audit").mkdir()
    extra = f'\n[audit]\ndirectory = "{work / "audit"}"\nsigning_key = "{key}"\ncheckpoint_every = 20\n'
    s = Stack(work, ["INT1"], extra=extra)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _sample(stack: Stack, name: str, labels: dict[str, str] | None = None) -> float:
    proxy = stack.proxy.proxy  # type: ignore[union-attr]
    v = stack.proxy.sync(lambda: proxy.registry.get_sample_value(name, labels))  # type: ignore[union-attr]
    return 0.0 if v is None else v


def test_a_tampered_audit_trail_fails_verification_and_raises_the_alert(stack: Stack) -> None:
    oms = stack.oms["INT1"]
    assert oms.wait_logged_on(20)
    for i in range(5):
        oms.send_new_order(f"INT-{i}", "VOD.L", "1", 100, 10.5)
    assert oms.wait_for(lambda o: sum(1 for r in o.exec_reports if r[1] == "2") >= 5, 15)
    pt = stack.proxy
    assert pt is not None and pt.proxy is not None
    proxy = pt.proxy
    pt.sync(lambda: proxy.audit.flush())
    runs = m.AUDIT_VERIFICATIONS + "_total"
    ok_before = _sample(stack, runs, {"result": "ok"})
    assert pt.call(proxy.verify_audit()) is True
    assert _sample(stack, m.AUDIT_VERIFY_FAILURES + "_total") == 0
    # every run is counted by result (the start-up run 1 s after start may add one more "ok")
    assert _sample(stack, runs, {"result": "ok"}) >= ok_before + 1
    assert _sample(stack, runs, {"result": "failed"}) == 0
    # an insider edits one message record on disk: the quantity of an order
    trail = sorted((stack.workdir / "audit").glob("audit-*.jsonl"))[0]
    original = trail.read_text()
    lines = original.splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if json.loads(line)["kind"] == "messages")
    record = json.loads(lines[i])
    record["messages"][0][2] += 1  # the length of the first message
    lines[i] = json.dumps(record, separators=(",", ":")) + "\n"
    trail.write_text("".join(lines))
    assert pt.call(proxy.verify_audit()) is False
    assert _sample(stack, m.AUDIT_VERIFY_FAILURES + "_total") == 1
    assert _sample(stack, runs, {"result": "failed"}) == 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(e.kind == "audit.verification_failed" for e in pt.events()):
        time.sleep(0.05)
    ev = next(e for e in pt.events() if e.kind == "audit.verification_failed")
    assert f"record {record['seq']}" in ev.detail
    # a deleted record (the edit undone) is a sequence gap: counted as such too
    lines = original.splitlines(keepends=True)
    del lines[i]
    trail.write_text("".join(lines))
    assert _sample(stack, m.AUDIT_SEQUENCE_GAPS + "_total") == 0
    assert pt.call(proxy.verify_audit()) is False
    assert _sample(stack, m.AUDIT_VERIFY_FAILURES + "_total") == 2
    assert _sample(stack, m.AUDIT_SEQUENCE_GAPS + "_total") == 1
