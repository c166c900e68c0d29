"""Who may log on as what: `Authoriser` (session, certificate binding, source, password,
connection limit) and `SourceGuard` (blocking sources that keep failing). Sans-IO: the peer is a
`Peer` value, the Logon is bytes, the clock is fake."""

from __future__ import annotations

import ipaddress

import pytest

from fixproxy.access import Authoriser, Peer, SourceGuard
from fixproxy.codec import Message, decode_one, encode
from fixproxy.events import Outcome
from fixproxy.policy import IdentityBinding, SessionPolicy, ValidationMode, check_password, hash_password
from fixproxy.reasons import Reason, Refusal
from fixproxy.session import SessionInspector, SessionState

FP_OMS1 = "9f" * 32  # a SHA-256 fingerprint: lower-case hex, no colons
FP_OTHER = "3c" * 32
SALT = bytes(range(16))
PASSWORD_HASH = hash_password("s3cret-pass", salt=SALT, iterations=1000)  # few iterations: fast tests


def policy(name: str = "OMS1", sender: str = "OMS1", **kw: object) -> SessionPolicy:
    base: dict[str, object] = {"name": name, "begin_string": "FIX.4.4", "sender_comp_id": sender,
                               "target_comp_id": "ATS", "validation": ValidationMode.OFF,
                               "sending_time_tolerance": 0}
    base.update(kw)
    return SessionPolicy(**base)  # type: ignore[arg-type]


BINDINGS = {
    "OMS1": IdentityBinding("OMS1", san_uris=frozenset({"fix://compid/OMS1"}), common_names=frozenset({"oms1.desk"}),
                            fingerprints=frozenset({FP_OMS1})),
    "OMS2": IdentityBinding("OMS2", san_uris=frozenset({"fix://compid/OMS2"})),
}


def authoriser(*policies: SessionPolicy, require_identity: bool = True) -> Authoriser:
    return Authoriser(policies or (policy(), policy("OMS2", "OMS2")), BINDINGS, require_identity=require_identity)


def logon(sender: str = "OMS1", target: str = "ATS", *, begin: str = "FIX.4.4", password: bytes | None = None,
          seq: int = 1) -> Message:
    fields: list[tuple[object, object]] = [(35, "A"), (49, sender), (56, target), (34, seq),
                                           (52, "20240315-13:45:30.000"), (98, 0), (108, 30)]
    if password is not None:
        fields.append((554, password))
    return decode_one(encode(begin, fields))  # type: ignore[arg-type]


def peer(*, san: tuple[str, ...] = ("fix://compid/OMS1",), cn: str | None = None, fp: str = "",
         source: str = "10.1.2.3", tls: bool = True) -> Peer:
    return Peer(source=source, tls=tls, san_uris=san, common_name=cn, fingerprint=fp)


def refused(result: SessionState | Refusal, reason: Reason) -> Refusal:
    assert isinstance(result, Refusal), result
    assert result.reason is reason, result
    return result


# --------------------------------------------------------------------------------------------------
# Authoriser
# --------------------------------------------------------------------------------------------------
def test_known_session_with_bound_certificate_passes() -> None:
    a = authoriser()
    st = a.authorise(logon(), peer())
    assert isinstance(st, SessionState) and st.policy.name == "OMS1"
    assert a.authorise(logon(), peer()) is st  # one persistent state per session


def test_unknown_session() -> None:
    a = authoriser()
    r = refused(a.authorise(logon("OMS9"), peer(san=("fix://compid/OMS9",))), Reason.UNKNOWN_SESSION)
    assert r.tag == 49 and "OMS9->ATS" in r.text
    refused(a.authorise(logon("OMS1", "OTHER-ATS"), peer()), Reason.UNKNOWN_SESSION)
    # The right CompIDs on another FIX version are another session.
    refused(a.authorise(logon(begin="FIX.4.2"), peer()), Reason.UNKNOWN_SESSION)


def test_certificate_of_another_compid_is_not_bound() -> None:
    a = authoriser()
    r = refused(a.authorise(logon("OMS1"), peer(san=("fix://compid/OMS2",))), Reason.COMPID_NOT_BOUND)
    assert r.tag == 49 and "fix://compid/OMS2" in r.text
    # ...and that certificate is good for its own session.
    assert isinstance(a.authorise(logon("OMS2"), peer(san=("fix://compid/OMS2",))), SessionState)


def test_any_of_several_san_uris_may_match() -> None:
    a = authoriser()
    assert isinstance(a.authorise(logon(), peer(san=("fix://compid/X", "fix://compid/OMS1"))), SessionState)


def test_fingerprint_pin() -> None:
    a = authoriser()
    assert isinstance(a.authorise(logon(), peer(san=(), fp=FP_OMS1)), SessionState)
    assert isinstance(a.authorise(logon(), peer(san=(), fp=FP_OMS1.upper())), SessionState)  # case-blind
    refused(a.authorise(logon(), peer(san=(), fp=FP_OTHER)), Reason.COMPID_NOT_BOUND)
    # OMS2's binding pins nothing: an empty fingerprint matches no pin.
    refused(a.authorise(logon("OMS2"), peer(san=(), fp="")), Reason.COMPID_NOT_BOUND)


def test_common_name_binding() -> None:
    a = authoriser()
    assert isinstance(a.authorise(logon(), peer(san=(), cn="oms1.desk")), SessionState)
    r = refused(a.authorise(logon(), peer(san=(), cn="oms2.desk")), Reason.COMPID_NOT_BOUND)
    assert "oms2.desk" in r.text
    refused(a.authorise(logon("OMS2"), peer(san=(), cn="oms1.desk")), Reason.COMPID_NOT_BOUND)


def test_identity_required_without_tls() -> None:
    a = authoriser()
    r = refused(a.authorise(logon(), peer(san=(), tls=False)), Reason.COMPID_NOT_BOUND)
    assert "no certificate" in r.text
    # Insecure mode (require_identity=False): plain TCP passes on CompIDs alone...
    lax = authoriser(require_identity=False)
    assert isinstance(lax.authorise(logon(), peer(san=(), tls=False)), SessionState)
    # ...but a TLS peer's certificate is still checked.
    refused(lax.authorise(logon(), peer(san=("fix://compid/OMS2",))), Reason.COMPID_NOT_BOUND)


def test_session_without_binding_is_refused() -> None:
    a = Authoriser([policy("OMS3", "OMS3")], {}, require_identity=True)
    refused(a.authorise(logon("OMS3"), peer(san=("fix://compid/OMS3",))), Reason.COMPID_NOT_BOUND)


def test_allowed_sources() -> None:
    nets = (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("2001:db8::/32"))
    a = authoriser(policy(allowed_sources=nets))
    assert isinstance(a.authorise(logon(), peer(source="10.1.2.3")), SessionState)
    assert isinstance(a.authorise(logon(), peer(source="2001:db8::7")), SessionState)
    r = refused(a.authorise(logon(), peer(source="10.2.0.1")), Reason.SOURCE_NOT_ALLOWED)
    assert "10.2.0.1" in r.text
    refused(a.authorise(logon(), peer(source="not-an-ip")), Reason.SOURCE_NOT_ALLOWED)
    # Identity is checked before the source: a stranger learns nothing about the source list.
    refused(a.authorise(logon(), peer(source="10.2.0.1", san=("fix://compid/OMS2",))), Reason.COMPID_NOT_BOUND)


def test_password() -> None:
    assert check_password(PASSWORD_HASH, b"s3cret-pass")
    a = authoriser(policy(password_hash=PASSWORD_HASH))
    r = refused(a.authorise(logon(password=b"wrong"), peer()), Reason.BAD_CREDENTIALS)
    assert r.tag == 554 and "wrong" not in r.text
    refused(a.authorise(logon(), peer()), Reason.BAD_CREDENTIALS)  # 554 missing
    assert isinstance(a.authorise(logon(password=b"s3cret-pass"), peer()), SessionState)
    # A malformed stored hash refuses rather than raising.
    bad = authoriser(policy(password_hash="pbkdf2_sha256$x$zz$00"))
    refused(bad.authorise(logon(password=b"s3cret-pass"), peer()), Reason.BAD_CREDENTIALS)
    other = authoriser(policy(password_hash="md5$1$00$00"))
    refused(other.authorise(logon(password=b"s3cret-pass"), peer()), Reason.BAD_CREDENTIALS)


def test_no_password_configured_ignores_554() -> None:
    a = authoriser()
    assert isinstance(a.authorise(logon(password=b"anything"), peer()), SessionState)


def test_max_connections_through_the_inspector() -> None:
    """The connection count is the inspector's (one per accepted Logon); the authoriser refuses
    the Logon that would exceed it."""
    a = authoriser(policy(max_connections=1))
    p = peer()
    first = SessionInspector(lambda m: a.authorise(m, p))
    res = first.from_initiator(logon().raw)
    assert res.logon is not None and res.close is None
    assert a.states["OMS1"].connections == 1
    second = SessionInspector(lambda m: a.authorise(m, p))
    res = second.from_initiator(logon(seq=2).raw)
    assert res.close is not None and res.close.reason is Reason.TOO_MANY_CONNECTIONS
    assert res.to_acceptor == [] and res.events[0].outcome is Outcome.CONNECTION_REFUSED
    # When the first goes (the proxy decrements on close), a new Logon is accepted.
    a.states["OMS1"].connections -= 1
    third = SessionInspector(lambda m: a.authorise(m, p))
    assert third.from_initiator(logon(seq=2).raw).logon is a.states["OMS1"]


def test_max_connections_two() -> None:
    a = authoriser(policy(max_connections=2))
    st = a.authorise(logon(), peer())
    assert isinstance(st, SessionState)
    st.connections = 2
    r = refused(a.authorise(logon(), peer()), Reason.TOO_MANY_CONNECTIONS)
    assert "2 connection" in r.text


def test_hot_reload_keeps_state_and_takes_new_policy() -> None:
    a = authoriser()
    st = a.authorise(logon(), peer())
    assert isinstance(st, SessionState)
    newer = policy(password_hash=PASSWORD_HASH)
    a.update([newer, policy("OMS2", "OMS2")], BINDINGS)
    refused(a.authorise(logon(), peer()), Reason.BAD_CREDENTIALS)
    again = a.authorise(logon(password=b"s3cret-pass"), peer())
    assert again is st and st.policy is newer  # same translation state, new policy
    # A session removed by the reload is unknown from then on.
    a.update([policy("OMS2", "OMS2")], BINDINGS)
    refused(a.authorise(logon(), peer()), Reason.UNKNOWN_SESSION)


def test_check_order_is_identity_then_source_then_password() -> None:
    nets = (ipaddress.ip_network("10.1.0.0/16"),)
    a = authoriser(policy(allowed_sources=nets, password_hash=PASSWORD_HASH))
    refused(a.authorise(logon(password=b"x"), peer(source="192.0.2.1", san=())), Reason.COMPID_NOT_BOUND)
    refused(a.authorise(logon(password=b"x"), peer(source="192.0.2.1")), Reason.SOURCE_NOT_ALLOWED)
    refused(a.authorise(logon(password=b"x"), peer()), Reason.BAD_CREDENTIALS)


# --------------------------------------------------------------------------------------------------
# SourceGuard
# --------------------------------------------------------------------------------------------------
class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_guard_blocks_after_threshold_plus_one_failures() -> None:
    clock = Clock()
    g = SourceGuard(threshold=5, block_seconds=300, clock=clock)
    for _ in range(5):
        assert g.failure("192.0.2.9") is False
        clock.t += 1
    assert not g.is_blocked("192.0.2.9")
    assert g.failure("192.0.2.9") is True  # the 6th within a minute tips it
    assert g.is_blocked("192.0.2.9")
    assert not g.is_blocked("192.0.2.10")  # per source
    assert g.blocked() == {"192.0.2.9": pytest.approx(300)}
    assert g.failure("192.0.2.9") is False  # already blocked: reported once
    clock.t += 299.9
    assert g.is_blocked("192.0.2.9")
    clock.t += 0.1
    assert not g.is_blocked("192.0.2.9")
    assert g.blocked() == {}


def test_guard_counts_over_a_sliding_minute() -> None:
    clock = Clock()
    g = SourceGuard(threshold=3, block_seconds=60, clock=clock)
    for _ in range(3):
        assert not g.failure("a")
        clock.t += 25  # 0, 25, 50, then 75: the first has left the minute
    assert not g.failure("a")
    assert not g.is_blocked("a")
    clock.t += 1
    assert g.failure("a")  # 25, 50, 75, 76


def test_guard_blocks_again_after_an_expired_block() -> None:
    """A source whose block has run out is blocked again by a new burst, whether or not anyone
    asked `is_blocked` in between (the proxy records TLS failures without asking)."""
    clock = Clock()
    g = SourceGuard(threshold=2, block_seconds=10, clock=clock)
    for _ in range(3):
        g.failure("x")
    assert g.is_blocked("x")
    clock.t += 100
    results = [g.failure("x") for _ in range(3)]
    assert results == [False, False, True]
    assert g.is_blocked("x")


def test_guard_manual_block_and_unblock() -> None:
    clock = Clock()
    g = SourceGuard(threshold=5, block_seconds=300, clock=clock)
    g.block("198.51.100.1", 30)
    assert g.is_blocked("198.51.100.1")
    assert g.blocked() == {"198.51.100.1": pytest.approx(30)}
    assert g.unblock("198.51.100.1") is True
    assert g.unblock("198.51.100.1") is False
    assert not g.is_blocked("198.51.100.1")
    g.block("198.51.100.2")
    clock.t += 299
    assert g.is_blocked("198.51.100.2")
    clock.t += 1
    assert not g.is_blocked("198.51.100.2")
