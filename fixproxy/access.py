"""Who may log on as what: certificate-to-CompID binding, source addresses, passwords,
connection limits, and blocking sources that keep failing (brute force).

Sans-IO: the proxy passes in the TLS peer identity and the source address it observed.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .codec import Message
from .policy import IdentityBinding, SessionPolicy, check_password
from .reasons import Reason, Refusal
from .session import SessionState


@dataclass(frozen=True, slots=True)
class Peer:
    """What the transport knows about the initiator."""

    source: str  # IP address
    tls: bool
    san_uris: tuple[str, ...] = ()
    common_name: str | None = None
    fingerprint: str = ""


class SourceGuard:
    """Counts refused handshakes and logons per source over a sliding minute; past the threshold
    the source is blocked for a while (KPI: unauthenticated access rate, event auth.bruteforce)."""

    def __init__(self, threshold: int = 5, block_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.block_seconds = block_seconds
        self._clock = clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._blocked: dict[str, float] = {}

    def is_blocked(self, source: str) -> bool:
        until = self._blocked.get(source)
        if until is None:
            return False
        if self._clock() >= until:
            del self._blocked[source]
            return False
        return True

    def failure(self, source: str) -> bool:
        """Record a refusal; True when this one tips the source into a block."""
        now = self._clock()
        q = self._failures[source]
        q.append(now)
        while q and q[0] < now - 60.0:
            q.popleft()
        if len(q) > self.threshold and not self.is_blocked(source):  # an expired block does not count
            self._blocked[source] = now + self.block_seconds
            q.clear()
            return True
        return False

    def block(self, source: str, seconds: float | None = None) -> None:
        self._blocked[source] = self._clock() + (self.block_seconds if seconds is None else seconds)

    def unblock(self, source: str) -> bool:
        return self._blocked.pop(source, None) is not None

    def blocked(self) -> dict[str, float]:
        now = self._clock()
        return {s: until - now for s, until in self._blocked.items() if until > now}


class Authoriser:
    """Decides a Logon. Holds the session policies, their identity bindings and their persistent
    state (sequence translation survives reconnects)."""

    def __init__(self, policies: Iterable[SessionPolicy], bindings: dict[str, IdentityBinding], *,
                 require_identity: bool = True) -> None:
        self.require_identity = require_identity
        self.update(policies, bindings)
        self.states: dict[str, SessionState] = {}

    def update(self, policies: Iterable[SessionPolicy], bindings: dict[str, IdentityBinding]) -> None:
        """Hot reload: new logons use the new policies; live sessions keep theirs until they
        reconnect (or are closed by the reload when no longer allowed)."""
        self.policies = {p.key: p for p in policies}
        self.bindings = dict(bindings)

    def state_for(self, policy: SessionPolicy) -> SessionState:
        st = self.states.get(policy.name)
        if st is None:
            st = self.states[policy.name] = SessionState(policy)
        else:
            st.policy = policy
        return st

    def authorise(self, msg: Message, peer: Peer) -> SessionState | Refusal:
        get = msg.get
        sender = (get(b"49") or b"").decode("latin-1")
        target = (get(b"56") or b"").decode("latin-1")
        policy = self.policies.get((sender, target))
        if policy is None:
            return Refusal(Reason.UNKNOWN_SESSION, f"Unknown session {sender}->{target}", 49)
        if msg.begin_string.decode() != policy.begin_string:
            return Refusal(Reason.UNKNOWN_SESSION,
                           f"Session {policy.name} is {policy.begin_string}, not {msg.begin_string.decode()}")
        if peer.tls or self.require_identity:
            binding = self.bindings.get(policy.name)
            if binding is None or not binding.matches(peer.san_uris, peer.common_name, peer.fingerprint):
                shown = peer.common_name or (peer.san_uris[0] if peer.san_uris else "no certificate")
                return Refusal(Reason.COMPID_NOT_BOUND,
                               f"Certificate {shown} is not bound to {sender}->{target}", 49)
        if not policy.source_allowed(peer.source):
            return Refusal(Reason.SOURCE_NOT_ALLOWED, f"Source {peer.source} not allowed for {policy.name}")
        if policy.password_hash is not None:
            password = get(b"554")
            if password is None or not check_password(policy.password_hash, password):
                return Refusal(Reason.BAD_CREDENTIALS, f"Bad credentials for {policy.name}", 554)
        state = self.state_for(policy)
        if state.connections >= policy.max_connections:
            return Refusal(Reason.TOO_MANY_CONNECTIONS,
                           f"Session {policy.name} already has {state.connections} connection(s)")
        return state
