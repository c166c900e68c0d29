"""Security events: one shape for every security decision the proxy takes.

The sans-IO core creates them; the I/O layer hands them to the recorder (metrics, event sinks,
audit), off the FIX path.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

from .reasons import Category, Reason


class Direction(StrEnum):
    INBOUND = "inbound"  # OMS -> ATS
    OUTBOUND = "outbound"  # ATS -> OMS


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Outcome(StrEnum):
    """What the proxy did about it."""

    DROPPED = "dropped"  # framing error: ignored, recovered by resend (FIX rule)
    REFUSED = "refused"  # gap-filled toward the receiver, answered toward the sender
    SHADOWED = "shadowed"  # forwarded anyway (shadow mode), flagged
    DISCONNECTED = "disconnected"  # both legs closed
    CONNECTION_REFUSED = "connection_refused"  # TLS or Logon refused: closed, ATS never contacted
    INFO = "info"  # session lifecycle, admin action


_SEVERITY = {
    Outcome.DROPPED: Severity.WARNING,
    Outcome.REFUSED: Severity.WARNING,
    Outcome.SHADOWED: Severity.INFO,
    Outcome.DISCONNECTED: Severity.CRITICAL,
    Outcome.CONNECTION_REFUSED: Severity.WARNING,
    Outcome.INFO: Severity.INFO,
}


class SecurityEvent:
    """A security decision. `kind` is the MQTT topic leaf: the reason's category, or a lifecycle
    kind such as ``session.logon``."""

    __slots__ = ("detail", "direction", "kind", "msg_seq_num", "msg_type", "outcome", "reason",
                 "received_at", "session", "source", "time")

    def __init__(self, reason: Reason | None, outcome: Outcome, detail: str, *, session: str | None,
                 direction: Direction | None = None, source: str | None = None,
                 msg_type: bytes | None = None, msg_seq_num: int | None = None,
                 received_at: float | None = None, kind: str | None = None) -> None:
        self.reason = reason
        self.outcome = outcome
        self.detail = detail
        self.session = session
        self.direction = direction
        self.source = source
        self.msg_type = msg_type
        self.msg_seq_num = msg_seq_num
        self.time = time.time()
        # Monotonic time the offending bytes were read: time-to-detect is measured from it.
        self.received_at = received_at
        self.kind = kind or (f"{reason.category.value}.{reason.value}" if reason else "info")

    @property
    def category(self) -> Category | None:
        return self.reason.category if self.reason else None

    @property
    def severity(self) -> Severity:
        return _SEVERITY[self.outcome]

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "kind": self.kind,
            "severity": self.severity.value,
            "outcome": self.outcome.value,
            "reason": self.reason.value if self.reason else None,
            "category": self.reason.category.value if self.reason else None,
            "session": self.session,
            "direction": self.direction.value if self.direction else None,
            "source": self.source,
            "msg_type": self.msg_type.decode("latin-1") if self.msg_type is not None else None,
            "msg_seq_num": self.msg_seq_num,
            "detail": self.detail,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    def __repr__(self) -> str:
        return f"SecurityEvent({self.kind}, {self.outcome.value}, {self.detail!r})"
