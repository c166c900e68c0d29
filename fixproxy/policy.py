"""Per-session authorisation: who may log on as what, which messages may pass, how fast.

Plain data and small objects, no I/O. The config loader builds these; the session inspector
applies them; the TLS layer supplies the peer identity they are checked against.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from .reasons import Reason


class Action(StrEnum):
    """What to do with a message a rule refuses."""

    REFUSE = "refuse"  # gap-fill toward the receiver, answer the sender (Reject / BMR / ExecReport)
    SHADOW = "shadow"  # forward it anyway, record the verdict (observe-only roll-out)
    DISCONNECT = "disconnect"  # close both legs


class RejectStyle(StrEnum):
    """How the proxy answers the sender of a refused application message."""

    SESSION_REJECT = "session_reject"  # 35=3 with 45/373/371/58
    BUSINESS_REJECT = "business_reject"  # 35=j with 45/372/380/58
    EXECUTION_REPORT = "execution_report"  # 35=8 OrdStatus=8 Rejected, for orders (D/F/G)


class ValidationMode(StrEnum):
    OFF = "off"
    LENIENT = "lenient"  # unknown (custom) tags allowed
    STRICT = "strict"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Token bucket: `rate` messages/second sustained, `burst` at once. Past the bucket a message
    is refused (RATE_LIMITED); past `disconnect_after` refusals in a row the session is closed
    (FLOOD)."""

    rate: float = 1000.0
    burst: int = 2000
    disconnect_after: int = 1000


@dataclass(frozen=True)
class SessionPolicy:
    """Everything the proxy enforces for one FIX session (SenderCompID -> TargetCompID, as the
    initiator writes them)."""

    name: str
    begin_string: str  # "FIX.4.4", "FIX.4.2", "FIXT.1.1"
    sender_comp_id: str  # the OMS's CompID (49 on messages from the OMS)
    target_comp_id: str  # the ATS's CompID
    validation: ValidationMode = ValidationMode.STRICT
    # None means "any message type the dictionary knows"; session-level types are always allowed.
    allowed_inbound: frozenset[str] | None = None  # OMS -> ATS
    allowed_outbound: frozenset[str] | None = None  # ATS -> OMS
    allowed_sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # empty: any
    # OnBehalfOfCompID (115) / DeliverToCompID (128) values this session may use; None: neither tag allowed
    allowed_on_behalf_of: frozenset[str] | None = None
    rate_limit: RateLimit = field(default_factory=RateLimit)
    max_connections: int = 1
    password_hash: str | None = None  # "pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>"
    reject_style: RejectStyle = RejectStyle.SESSION_REJECT
    actions: dict[Reason, Action] = field(default_factory=dict)  # per reason; default REFUSE
    sending_time_tolerance: float = 120.0  # seconds either way; 0 disables the check
    logon_timeout: float = 10.0
    idle_factor: float = 2.5  # idle timeout = HeartBtInt * idle_factor (+ 1 s)

    @property
    def key(self) -> tuple[str, str]:
        return (self.sender_comp_id, self.target_comp_id)

    def action_for(self, reason: Reason) -> Action:
        return self.actions.get(reason, Action.REFUSE)

    def source_allowed(self, host: str) -> bool:
        if not self.allowed_sources:
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.allowed_sources)


# FIX session-level message types: always allowed, the session cannot run without them.
SESSION_MSG_TYPES = frozenset({b"0", b"1", b"2", b"3", b"4", b"5", b"A"})
ORDER_MSG_TYPES = frozenset({b"D", b"F", b"G"})


@dataclass(frozen=True)
class IdentityBinding:
    """Which certificates may use which CompID pairs.

    A certificate matches by SAN URI (``fix://compid/OMS1``), by subject CN, or by pinned SHA-256
    fingerprint; the session names which of these it accepts.
    """

    session: str  # SessionPolicy.name
    san_uris: frozenset[str] = frozenset()
    common_names: frozenset[str] = frozenset()
    fingerprints: frozenset[str] = frozenset()  # hex, lower case, no colons

    def matches(self, san_uris: Iterable[str], common_name: str | None, fingerprint: str) -> bool:
        if fingerprint and fingerprint.lower() in self.fingerprints:
            return True
        if common_name is not None and common_name in self.common_names:
            return True
        return any(u in self.san_uris for u in san_uris)


def hash_password(password: str, *, salt: bytes, iterations: int = 200_000) -> str:
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def check_password(stored: str, password: bytes) -> bool:
    """Constant-time check of a Logon Password (554) against a salted PBKDF2 hash."""
    try:
        scheme, iterations, salt_hex, hash_hex = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password, bytes.fromhex(salt_hex), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), hash_hex)


class TokenBucket:
    """Refilled once per read batch, not per message: `now` comes from the I/O layer."""

    __slots__ = ("burst", "last", "rate", "refused_in_a_row", "tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.rate = limit.rate
        self.burst = float(limit.burst)
        self.tokens = float(limit.burst)
        self.last = now
        self.refused_in_a_row = 0

    def refill(self, now: float) -> None:
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.last = now

    def take(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.refused_in_a_row = 0
            return True
        self.refused_in_a_row += 1
        return False
