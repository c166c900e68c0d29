"""Real FIX peers for the end-to-end tests and ``make demo``: a demo ATS and a demo OMS.

Both are QuickFIX engines (the ``quickfix`` PyPI package), so the proxy is exercised by a real,
independent FIX implementation rather than by our own codec talking to itself:

- `MatchingEngine` is the dark pool's matching engine, a QuickFIX acceptor that answers orders.
- `OrderEntry` is the broker's OMS, a QuickFIX initiator that sends them.

Everything either engine receives, sends and logs as a session event is recorded in memory, so a
test can assert on what a real engine saw ("no sequence error", "the Reject carried 373=5").

QuickFIX Python pitfalls this module works around (read these before changing it):

- An exception escaping a Python callback (Application, Log) makes the C++ side call
  ``Py_Exit(1)``: the whole test process dies. Every callback here catches everything and records
  it in ``errors`` instead.
- Sessions live in one process-wide registry keyed by SessionID, and acceptor connections find
  their Session through it. A second engine with the same SessionID is silently not registered
  (its connections reach the first engine's Session), and destroying the old engine later
  unregisters the new one. So `stop()` destroys the C++ engine deterministically, and `start()`
  refuses a SessionID already live in this process. Two ATS engines serving the same CompIDs
  (primary and standby) need two processes; acceptors cannot use a SessionQualifier either.
- ``SocketAcceptor.stop()`` closes its server from the calling thread while the engine thread
  still uses it (QuickFIX 1.16, upstream PR #740): intermittent segfaults. The ATS therefore
  uses ``ThreadedSocketAcceptor``, whose stop closes sockets and then joins its threads.
- A Python `fix.Log` handed to C++ must be ``__disown__``-ed or the interpreter frees it twice.
- ``stop(False)`` polls ``isLoggedOn`` at one-second steps for up to 10 s; we log out ourselves,
  wait for the onLogout callback, then stop with ``force=True``.
- ``Session.logout()`` from a foreign thread is acted on at the engine's next 1 s timer tick, and
  an initiator's thread exits at most 1 s after stop: stopping an OMS takes one to two seconds.
- The acceptor binds INADDR_ANY whatever the host: it cannot be restricted to 127.0.0.1.
- Loading FIX50SP2.xml takes about 1.5 s per engine; FIX42/FIX44 take milliseconds.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import itertools
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import quickfix as fix

SOH = "\x01"

# The dictionaries shipped in the repository (copied from QuickFIX 1.16).
SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"

_DICTIONARY_FOR = {
    "FIX.4.2": "FIX42.xml",
    "FIX.4.4": "FIX44.xml",
    "FIX.5.0SP2": "FIX50SP2.xml",
}

# Header tags a caller of send_raw may set; the session fills 8, 9, 34, 49, 52, 56 and 10 itself.
_HEADER_TAGS = frozenset(
    {35, 43, 50, 57, 90, 91, 97, 115, 116, 122, 128, 129, 142, 143, 144, 145, 212, 213, 347, 369, 627, 1128, 1129, 1156}
)

# QuickFIX event texts (Session.cpp) that mean the session could not continue on sequence numbers.
# "MsgSeqNum too high" is deliberately absent: it is a gap, recovered by a ResendRequest.
_SEQUENCE_ERROR = re.compile(r"MsgSeqNum too low|NextExpectedMsgSeqNum too high")
_SEQUENCE_GAP = re.compile(r"MsgSeqNum too high")


def free_port() -> int:
    """A TCP port that is free on every interface right now.

    Bound on 0.0.0.0 because QuickFIX acceptors always listen on INADDR_ANY: a port that is only
    free on 127.0.0.1 would still fail there. There is a small race until the caller binds it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def default_dictionary(version: str) -> Path:
    """The repository's data dictionary for a FIX version ("FIX.4.4", "FIX.5.0SP2", ...)."""
    return SPECS_DIR / _DICTIONARY_FOR[version]


def utc_timestamp() -> str:
    """A FIX UTCTimestamp with milliseconds, for TransactTime."""
    return datetime.now(UTC).strftime("%Y%m%d-%H:%M:%S.%f")[:-3]


def format_price(value: float) -> str:
    """A FIX float without exponent or trailing zeros (``100`` not ``100.0``, never ``1e-05``)."""
    text = f"{value:.8f}".rstrip("0").rstrip(".")
    return text or "0"


@dataclass(kw_only=True)
class EngineConfig:
    """One FIX session of a QuickFIX engine (keyword-only, so required fields can follow defaults)."""

    begin_string: str = "FIX.4.4"
    sender_comp_id: str
    target_comp_id: str
    host: str = "127.0.0.1"  # initiator: host to connect to (acceptors listen on all interfaces)
    port: int = 0  # acceptor: port to listen on, 0 = pick a free one; initiator: port to connect to
    store_dir: Path
    log_dir: Path | None = None
    heartbeat_interval: int = 30
    # FIX.4.x: the dictionary; FIXT.1.1: the application dictionary (FIX50SP2.xml).
    data_dictionary: Path | None = None
    # FIXT.1.1 only; defaults to FIXT11.xml next to data_dictionary.
    transport_dictionary: Path | None = None
    default_appl_ver_id: str = "FIX.5.0SP2"  # FIXT.1.1 only
    reset_on_logon: bool = False
    reconnect_interval: int = 1
    extra_settings: dict[str, str] = field(default_factory=dict)

    @property
    def session_key(self) -> str:
        """The SessionID as QuickFIX prints it: ``FIX.4.4:SENDER->TARGET``."""
        return f"{self.begin_string}:{self.sender_comp_id}->{self.target_comp_id}"

    def session_id(self) -> fix.SessionID:
        return fix.SessionID(self.begin_string, self.sender_comp_id, self.target_comp_id)

    def settings(self, connection_type: str) -> dict[str, str]:
        """The QuickFIX session settings for this session, extra_settings applied last."""
        values: dict[str, str] = {
            "ConnectionType": connection_type,
            "BeginString": self.begin_string,
            "SenderCompID": self.sender_comp_id,
            "TargetCompID": self.target_comp_id,
            "FileStorePath": str(self.store_dir),
            "HeartBtInt": str(self.heartbeat_interval),
            # The sessions are up all day; NonStopSession also stops QuickFIX resetting the
            # sequence numbers when a run crosses the StartTime boundary.
            "StartTime": "00:00:00",
            "EndTime": "00:00:00",
            "NonStopSession": "Y",
            "ResetOnLogon": "Y" if self.reset_on_logon else "N",
            # Sequence numbers must survive a disconnect so reconnects exercise resend recovery.
            "ResetOnLogout": "N",
            "ResetOnDisconnect": "N",
            "PersistMessages": "Y",
            # Test machines' clocks, and a proxy in the path, must not fail SendingTime checks.
            "CheckLatency": "N",
            # Custom tags (>= 5000) are routine between counterparties; the proxy, not the peer,
            # is the component under test for what may pass.
            "ValidateUserDefinedFields": "N",
            "SocketNodelay": "Y",
            "ReconnectInterval": str(self.reconnect_interval),
            "LogonTimeout": "5",
            "LogoutTimeout": "2",
        }
        if connection_type == "acceptor":
            values["SocketAcceptPort"] = str(self.port)
            values["SocketReuseAddress"] = "Y"
        else:
            values["SocketConnectHost"] = self.host
            values["SocketConnectPort"] = str(self.port)
        if self.begin_string == "FIXT.1.1":
            values["DefaultApplVerID"] = self.default_appl_ver_id
        if self.data_dictionary is None:
            values["UseDataDictionary"] = "N"
        else:
            values["UseDataDictionary"] = "Y"
            if self.begin_string == "FIXT.1.1":
                transport = self.transport_dictionary or self.data_dictionary.parent / "FIXT11.xml"
                values["TransportDataDictionary"] = str(transport)
                values["AppDataDictionary"] = str(self.data_dictionary)
            else:
                values["DataDictionary"] = str(self.data_dictionary)
        values.update(self.extra_settings)
        for key, value in values.items():
            # One line per setting in the generated file: a newline would inject settings.
            if "\n" in key or "\n" in value or "\r" in value:
                raise ValueError(f"setting {key!r} contains a line break")
        return values


class FixMessage(tuple[str, str, dict[int, str]]):
    """A message an engine received or sent: the tuple ``(session, msg_type, fields)``.

    ``fields`` keeps each tag's first value; ``pairs`` keeps every (tag, value) in wire order and
    ``raw`` the message text (SOH-delimited). A tuple so ``r[1] == "D"`` style checks work.
    """

    raw: str
    pairs: tuple[tuple[int, str], ...]
    at: float

    def __new__(cls, session: str, raw: str) -> FixMessage:
        pairs: list[tuple[int, str]] = []
        for part in raw.split(SOH):
            tag, sep, value = part.partition("=")
            if sep and tag.isdigit():
                pairs.append((int(tag), value))
        fields: dict[int, str] = {}
        for tag, value in pairs:
            fields.setdefault(tag, value)
        self = super().__new__(cls, (session, fields.get(35, ""), fields))
        self.raw = raw
        self.pairs = tuple(pairs)
        self.at = time.time()
        return self

    @property
    def session(self) -> str:
        return self[0]

    @property
    def msg_type(self) -> str:
        return self[1]

    @property
    def fields(self) -> dict[int, str]:
        return self[2]

    def get(self, tag: int, default: str | None = None) -> str | None:
        return self[2].get(tag, default)

    def values(self, tag: int) -> list[str]:
        """Every value of a tag, in order (repeating groups)."""
        return [value for t, value in self.pairs if t == tag]

    @property
    def seq_num(self) -> int:
        return int(self[2].get(34, "0"))

    def __str__(self) -> str:
        return self.raw.replace(SOH, "|")


class ExecReport(tuple[str, str, str]):
    """An ExecutionReport as the tuple ``(ClOrdID, OrdStatus, ExecType)``; ``message`` has the rest."""

    message: FixMessage

    def __new__(cls, message: FixMessage) -> ExecReport:
        self = super().__new__(cls, (message.get(11) or "", message.get(39) or "", message.get(150) or ""))
        self.message = message
        return self

    @property
    def cl_ord_id(self) -> str:
        return self[0]

    @property
    def ord_status(self) -> str:
        return self[1]

    @property
    def exec_type(self) -> str:
        return self[2]


@dataclass(frozen=True)
class SessionEvent:
    """One line QuickFIX logged as a session event ("MsgSeqNum too low, ...", "Received logon")."""

    session: str
    text: str
    at: float


class _Journal:
    """What one engine saw, shared by its QuickFIX threads and the test's thread.

    Callbacks only append under the lock; predicates passed to `wait_for` run without it, so a
    predicate that calls back into QuickFIX cannot deadlock against an engine thread that holds
    a session mutex while logging.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self.received: list[FixMessage] = []  # validated by QuickFIX, via fromAdmin/fromApp
        self.incoming: list[FixMessage] = []  # every message read from the socket, via the Log
        self.outgoing: list[FixMessage] = []
        self.events: list[SessionEvent] = []
        self.errors: list[str] = []
        self.logged_on: set[str] = set()

    def _changed(self) -> None:
        self._generation += 1
        self._cond.notify_all()

    def add(self, target: list[Any], item: Any) -> None:
        with self._cond:
            target.append(item)
            self._changed()

    def set_logged_on(self, session: str, value: bool) -> None:
        with self._cond:
            if value:
                self.logged_on.add(session)
            else:
                self.logged_on.discard(session)
            self._changed()

    def snapshot(self, source: list[Any]) -> list[Any]:
        with self._cond:
            return list(source)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                generation = self._generation
            if predicate():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                # Wake on any journal change; the short cap also catches changes made elsewhere
                # (another engine's journal) that the predicate might be looking at.
                self._cond.wait_for(lambda g=generation: self._generation != g, min(remaining, 0.05))


class _RecordingLog(fix.Log):
    """A QuickFIX Log that records into the journal and, when asked, into QuickFIX's FileLog."""

    def __init__(self, journal: _Journal, session: str, file_log: fix.Log | None) -> None:
        super().__init__()
        self._journal: _Journal | None = journal
        self._session = session
        self._file_log = file_log

    def detach(self) -> None:
        # C++ keeps this object after the engine is gone (see _RecordingLogFactory.destroy); drop
        # the references so the journal and the FileLog's open files are released.
        self._journal = None
        self._file_log = None

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:  # an exception here would kill the process from C++
            journal = self._journal
            if journal is not None:
                journal.add(journal.errors, f"log {self._session}: {exc!r}")

    def clear(self) -> None:
        if self._file_log is not None:
            self._guard(self._file_log.clear)

    def backup(self) -> None:
        if self._file_log is not None:
            self._guard(self._file_log.backup)

    def onIncoming(self, value: str) -> None:
        def record() -> None:
            if self._journal is not None:
                self._journal.add(self._journal.incoming, FixMessage(self._session, value))
            if self._file_log is not None:
                self._file_log.onIncoming(value)

        self._guard(record)

    def onOutgoing(self, value: str) -> None:
        def record() -> None:
            if self._journal is not None:
                self._journal.add(self._journal.outgoing, FixMessage(self._session, value))
            if self._file_log is not None:
                self._file_log.onOutgoing(value)

        self._guard(record)

    def onEvent(self, value: str) -> None:
        def record() -> None:
            if self._journal is not None:
                self._journal.add(self._journal.events, SessionEvent(self._session, value, time.time()))
            if self._file_log is not None:
                self._file_log.onEvent(value)

        self._guard(record)


class _RecordingLogFactory(fix.LogFactory):
    def __init__(self, journal: _Journal, log_dirs: Mapping[str, Path]) -> None:
        super().__init__()
        self._journal = journal
        self._log_dirs = log_dirs
        self._logs: list[_RecordingLog] = []

    def create(self, *args: Any) -> fix.Log:
        # create() is the engine's global log, create(sessionID) a session's.
        try:
            session = args[0].toString() if args else "GLOBAL"
            file_log = None
            log_dir = self._log_dirs.get(session) if args else next(iter(self._log_dirs.values()), None)
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
                # Python owns this FileLog and only Python calls it: no cross-language ownership.
                file_log = fix.FileLog(str(log_dir), args[0]) if args else fix.FileLog(str(log_dir))
            log = _RecordingLog(self._journal, session, file_log)
        except Exception as exc:
            self._journal.add(self._journal.errors, f"log factory: {exc!r}")
            log = _RecordingLog(self._journal, "GLOBAL", None)
        self._logs.append(log)
        # Hand ownership to C++; without this the interpreter frees the object a second time.
        return log.__disown__()

    def destroy(self, log: fix.Log) -> None:
        # C++ passes a plain proxy, not our object; deleting the director from inside the engine's
        # destructor is not worth the risk for a few objects per engine. detach_all() releases
        # what they hold.
        return None

    def detach_all(self) -> None:
        for log in self._logs:
            log.detach()
        self._logs.clear()


# SessionIDs of engines alive in this process (see the module docstring) and the engines, so
# nothing is left running when the interpreter exits (a live engine thread aborts at exit).
_live_sessions: set[str] = set()
_live_lock = threading.Lock()
_live_engines: weakref.WeakSet[_FixEngine] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for engine in list(_live_engines):
        with contextlib.suppress(Exception):
            engine.stop(timeout=1.0)


class _FixEngine(fix.Application):
    """What the ATS and the OMS share: settings, lifecycle, recording, waiting."""

    _connection_type = ""

    def __init__(self, sessions: list[EngineConfig]) -> None:
        super().__init__()
        if not sessions:
            raise ValueError("at least one session is required")
        keys = [config.session_key for config in sessions]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate sessions: {keys}")
        self._configs = list(sessions)
        self._journal = _Journal()
        self._lifecycle = threading.RLock()
        self._engine: Any = None
        self._keepalive: list[Any] = []  # objects C++ holds by reference while the engine lives
        self._log_factory: _RecordingLogFactory | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._engine is not None

    def start(self) -> None:
        """Create and start the QuickFIX engine. Idempotent."""
        with self._lifecycle:
            if self._engine is not None:
                return
            keys = {config.session_key for config in self._configs}
            with _live_lock:
                busy = keys & _live_sessions
                if busy:
                    raise RuntimeError(f"sessions already running in this process: {sorted(busy)}")
                _live_sessions.update(keys)
            try:
                self._create_and_start()
            except BaseException:
                with _live_lock:
                    _live_sessions.difference_update(keys)
                raise
            _live_engines.add(self)

    def _settings_text(self) -> str:
        lines = ["[DEFAULT]"]
        for config in self._configs:
            lines.append("[SESSION]")
            lines.extend(f"{k}={v}" for k, v in config.settings(self._connection_type).items())
        return "\n".join(lines) + "\n"

    def _engine_class(self) -> Any:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Resolve anything needed before the settings are generated (acceptor ports)."""

    def _create_and_start(self) -> None:
        self._prepare()
        for config in self._configs:
            Path(config.store_dir).mkdir(parents=True, exist_ok=True)
        settings = fix.SessionSettings()
        settings.setFromString(self._settings_text())
        store_factory = fix.FileStoreFactory(settings)
        log_dirs = {c.session_key: Path(c.log_dir) for c in self._configs if c.log_dir is not None}
        log_factory = _RecordingLogFactory(self._journal, log_dirs)
        engine = self._engine_class()(self, store_factory, settings, log_factory)
        self._keepalive = [settings, store_factory, log_factory]
        self._log_factory = log_factory
        self._engine = engine
        try:
            engine.start()
        except BaseException:
            self._destroy()
            raise

    def stop(self, timeout: float = 3.0) -> None:
        """Log out every logged-on session, stop the engine and free its port. Idempotent."""
        with self._lifecycle:
            if self._engine is None:
                return
            try:
                for key in self.logged_on_sessions():
                    session = self._live_session(key)
                    if session is not None:
                        session.logout("engine stopping")
                # Wait for the Logout handshake so the peer sees a clean logout, not a dropped link.
                self._journal.wait_for(lambda: not self.logged_on_sessions(), timeout)
                self._engine.stop(True)
            finally:
                self._destroy()
                with _live_lock:
                    _live_sessions.difference_update(c.session_key for c in self._configs)
                _live_engines.discard(self)

    def _destroy(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            # Delete the C++ engine now, not whenever the GC gets to it: its Sessions must leave
            # QuickFIX's global registry before an engine with the same SessionIDs starts.
            destroy = getattr(type(engine), "__swig_destroy__", None)
            if destroy is not None and engine.this.own():
                destroy(engine)
        if self._log_factory is not None:
            self._log_factory.detach_all()
        self._log_factory = None
        self._keepalive = []
        with self._journal._cond:
            self._journal.logged_on.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation -------------------------------------------------------------------------------

    def _session_id(self, key: str | None) -> fix.SessionID:
        return self._config(key).session_id()

    def _config(self, key: str | None) -> EngineConfig:
        if key is None:
            return self._configs[0]
        for config in self._configs:
            if config.session_key == key:
                return config
        raise KeyError(f"no session {key!r}; have {[c.session_key for c in self._configs]}")

    @property
    def sessions(self) -> list[str]:
        return [config.session_key for config in self._configs]

    def logged_on_sessions(self) -> set[str]:
        with self._journal._cond:
            return set(self._journal.logged_on)

    def logged_on(self, session: str | None = None) -> bool:
        """Whether `session` (or, when None, any session) is logged on, as QuickFIX reported it."""
        current = self.logged_on_sessions()
        return bool(current) if session is None else session in current

    def wait_logged_on(self, timeout: float = 5.0, session: str | None = None) -> bool:
        return self._journal.wait_for(lambda: self.logged_on(session), timeout)

    def wait_for(self, predicate: Callable[[Self], bool] | Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate` until it is true (True) or `timeout` seconds pass (False).

        The predicate may take this engine as its one argument (``lambda oms: ...``) or nothing.
        It runs on the caller's thread without any engine lock held.
        """
        takes_engine = _takes_argument(predicate)
        return self._journal.wait_for(
            lambda: bool(predicate(self) if takes_engine else predicate()),  # type: ignore[call-arg]
            timeout,
        )

    @property
    def received(self) -> list[FixMessage]:
        """Every message QuickFIX accepted and passed up (admin and application), in order.

        Each is a tuple ``(session, msg_type, fields)``; see `FixMessage`.
        """
        return self._journal.snapshot(self._journal.received)

    def messages(self, msg_type: str | None = None, session: str | None = None) -> list[FixMessage]:
        """`received`, filtered by MsgType and/or session."""
        return [
            m
            for m in self.received
            if (msg_type is None or m.msg_type == msg_type) and (session is None or m.session == session)
        ]

    def incoming(self) -> list[FixMessage]:
        """Every message read from the socket, before validation (QuickFIX's messages log)."""
        return self._journal.snapshot(self._journal.incoming)

    def outgoing(self) -> list[FixMessage]:
        """Every message written to the socket, including resends."""
        return self._journal.snapshot(self._journal.outgoing)

    def events(self, session: str | None = None) -> list[SessionEvent]:
        """QuickFIX's session events (the lines of its event log), in order."""
        return [e for e in self._journal.snapshot(self._journal.events) if session is None or e.session == session]

    def event_texts(self, session: str | None = None) -> list[str]:
        return [e.text for e in self.events(session)]

    def sequence_errors(self) -> list[str]:
        """Fatal sequence problems this engine saw: its own events, and Logouts blaming them.

        Empty when every gap was recovered by a ResendRequest.
        """
        found = [e.text for e in self.events() if _SEQUENCE_ERROR.search(e.text)]
        found += [f"received Logout: {m.get(58)}" for m in self.logouts if _SEQUENCE_ERROR.search(m.get(58) or "")]
        return found

    def sequence_gaps(self) -> list[str]:
        """Gaps detected ("MsgSeqNum too high"): normal after a reconnect, healed by resend."""
        return [e.text for e in self.events() if _SEQUENCE_GAP.search(e.text)]

    @property
    def rejects(self) -> list[FixMessage]:
        """Session-level Rejects (35=3: 45, 373, 58) and BusinessMessageRejects (35=j) received."""
        return [m for m in self.received if m.msg_type in ("3", "j")]

    @property
    def logouts(self) -> list[FixMessage]:
        """Logouts received; ``m.get(58)`` says why."""
        return self.messages("5")

    @property
    def errors(self) -> list[str]:
        """Exceptions raised inside callbacks (they are never allowed to reach QuickFIX)."""
        return self._journal.snapshot(self._journal.errors)

    # -- session control ---------------------------------------------------------------------------

    def _live_session(self, session: str | None) -> fix.Session | None:
        # The engine's own Session object, not the process-wide registry's.
        engine = self._engine
        return engine.getSession(self._session_id(session)) if engine is not None else None

    def logout(self, text: str = "", timeout: float = 5.0, session: str | None = None) -> bool:
        """Send Logout and wait for the session to end; it stays down until `logon()`.

        QuickFIX acts on it at the engine's next timer tick, so this takes up to about a second.
        """
        live = self._live_session(session)
        if live is None:
            return True
        key = self._config(session).session_key
        live.logout(text)
        return self._journal.wait_for(lambda: not self.logged_on(key), timeout)

    def logon(self, session: str | None = None) -> None:
        """Re-enable a session after `logout()`; an initiator reconnects on its next tick."""
        live = self._live_session(session)
        if live is not None:
            live.logon()

    def next_sender_seq_num(self, session: str | None = None) -> int:
        live = self._live_session(session)
        return int(live.getExpectedSenderNum()) if live is not None else 0

    def next_target_seq_num(self, session: str | None = None) -> int:
        live = self._live_session(session)
        return int(live.getExpectedTargetNum()) if live is not None else 0

    # -- sending -----------------------------------------------------------------------------------

    def send_raw(self, fields: Mapping[int, str] | Iterable[tuple[int, str]], session: str | None = None) -> bool:
        """Send an application message built from (tag, value) pairs; 35 is required.

        QuickFIX fills 8, 9, 34, 49, 52, 56 and 10. Repeated tags are kept in the order given but
        repeating groups are not modelled (body fields are ordered by tag number). Returns True
        when the session was logged on; otherwise QuickFIX stored the message and sends it as a
        resend after the next logon.
        """
        pairs = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
        message = build_message(pairs)
        key = self._config(session).session_key
        live = self._live_session(key)
        if live is None:
            raise RuntimeError(f"{key}: engine not started")
        logged_on = self.logged_on(key)
        live.send(message)
        return logged_on

    # -- QuickFIX Application callbacks ------------------------------------------------------------
    # All run on QuickFIX threads. Exceptions are recorded, never propagated (see module doc).

    def _record_error(self, where: str, exc: BaseException) -> None:
        self._journal.add(self._journal.errors, f"{where}: {exc!r}")

    def onCreate(self, sessionID: fix.SessionID) -> None:
        return None

    def onLogon(self, sessionID: fix.SessionID) -> None:
        try:
            self._journal.set_logged_on(sessionID.toString(), True)
        except Exception as exc:
            self._record_error("onLogon", exc)

    def onLogout(self, sessionID: fix.SessionID) -> None:
        try:
            self._journal.set_logged_on(sessionID.toString(), False)
        except Exception as exc:
            self._record_error("onLogout", exc)

    def toAdmin(self, message: fix.Message, sessionID: fix.SessionID) -> None:
        return None

    def toApp(self, message: fix.Message, sessionID: fix.SessionID) -> None:
        return None

    def fromAdmin(self, message: fix.Message, sessionID: fix.SessionID) -> None:
        try:
            self._journal.add(self._journal.received, FixMessage(sessionID.toString(), message.toString()))
        except Exception as exc:
            self._record_error("fromAdmin", exc)

    def fromApp(self, message: fix.Message, sessionID: fix.SessionID) -> None:
        try:
            # The Message is a C++ temporary: copy it to text before the callback returns.
            received = FixMessage(sessionID.toString(), message.toString())
            self._journal.add(self._journal.received, received)
            self._on_application(received, sessionID)
        except Exception as exc:
            self._record_error("fromApp", exc)

    def _on_application(self, message: FixMessage, session_id: fix.SessionID) -> None:
        return None


def _takes_argument(predicate: Callable[..., object]) -> bool:
    """Whether a wait_for predicate wants the engine passed in."""
    try:
        parameters = list(inspect.signature(predicate).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: call them bare
        return False
    required = [
        p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return bool(required) or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def build_message(pairs: Iterable[tuple[int, str]]) -> fix.Message:
    """A generic quickfix.Message from (tag, value) pairs; header tags go to the header."""
    message = fix.Message()
    header = message.getHeader()
    seen: set[int] = set()
    has_type = False
    for tag, value in pairs:
        target = header if tag in _HEADER_TAGS else message
        # setField(field, False) appends a repeated tag instead of overwriting the first one.
        target.setField(fix.StringField(int(tag), str(value)), tag not in seen)
        seen.add(tag)
        has_type = has_type or tag == 35
    if not has_type:
        raise ValueError("MsgType (35) is required")
    return message


# -- the demo ATS ------------------------------------------------------------------------------------


_OPEN = ("0", "1", "5")  # OrdStatus New, Partially filled, Replaced: the order can still trade


@dataclass
class Order:
    """An order as the matching engine holds it."""

    order_id: str
    cl_ord_id: str
    symbol: str
    side: str
    qty: float
    price: float | None
    ord_type: str
    status: str = "0"  # OrdStatus
    cum_qty: float = 0.0
    avg_px: float = 0.0


class MatchingEngine(_FixEngine):
    """The demo ATS: a QuickFIX acceptor that answers orders the way a simple dark pool would.

    - NewOrderSingle (D): ExecutionReport New; then, for a market or limit order and while
      ``auto_fill`` is on, a full fill at the order's price (``market_price`` for market orders).
      Other order types, and all orders with ``auto_fill=False``, rest. A reused ClOrdID is
      rejected (39=8, 103=6).
    - OrderCancelRequest (F): Canceled (39=4) for a resting order; OrderCancelReject (9) with
      102=1 for an unknown order, 102=0 for a filled one.
    - OrderCancelReplaceRequest (G): Replaced (150=5) for a resting order, else 9 with 434=2.
    - OrderStatusRequest (H): a status ExecutionReport (39=8, 103=5 for an unknown order).
    - Any other application message: BusinessMessageReject (35=j, 380=3).

    Messages that fail QuickFIX's own checks (data dictionary, sequence) never reach this code;
    QuickFIX answers them with a session Reject (35=3) or a Logout, which is what a real ATS does.
    """

    _connection_type = "acceptor"

    def __init__(self, sessions: list[EngineConfig], *, auto_fill: bool = True, market_price: float = 100.0) -> None:
        super().__init__(sessions)
        self.auto_fill = auto_fill
        self.market_price = market_price
        self._book_lock = threading.Lock()
        self._orders: dict[tuple[str, str], Order] = {}  # (session, ClOrdID) -> order
        self._ids = itertools.count(1)

    def _engine_class(self) -> Any:
        # Not SocketAcceptor: its stop() races its own thread (see the module docstring).
        return fix.ThreadedSocketAcceptor

    def _prepare(self) -> None:
        # Sessions asking for port 0 share one free port, the way an ATS serves many CompIDs.
        if any(config.port == 0 for config in self._configs):
            port = free_port()
            for config in self._configs:
                if config.port == 0:
                    config.port = port

    def _create_and_start(self) -> None:
        auto = [config for config in self._configs if config.port == 0]
        for attempt in range(3):
            try:
                super()._create_and_start()
                return
            except fix.RuntimeError:
                # Another process took the free port between free_port() and bind: pick again.
                if not auto or attempt == 2:
                    raise
                for config in auto:
                    config.port = 0

    @property
    def port(self) -> int:
        """The port the first session listens on (resolved after start() when it was 0)."""
        return self._configs[0].port

    def orders(self) -> list[Order]:
        with self._book_lock:
            return list(self._orders.values())

    def _on_application(self, message: FixMessage, session_id: fix.SessionID) -> None:
        handlers = {"D": self._new_order, "F": self._cancel, "G": self._replace, "H": self._status}
        handler = handlers.get(message.msg_type, self._unsupported)
        live = self._live_session(message.session)
        for reply in handler(message, session_id.getBeginString().getValue()):
            if live is not None:
                live.send(build_message(reply))

    def _unsupported(self, message: FixMessage, version: str) -> list[list[tuple[int, str]]]:
        # Our own BusinessMessageReject rather than raising UnsupportedMessageType: QuickFIX's
        # FIXT.1.1 version carries DefaultApplVerID (1137), which a FIX50SP2 peer rejects.
        return [
            [
                (35, "j"),
                (45, str(message.seq_num)),
                (372, message.msg_type),
                (380, "3"),  # BusinessRejectReason: unsupported message type
                (58, f"unsupported message type {message.msg_type}"),
            ]
        ]

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def _report(
        self, version: str, order: Order, exec_type: str, *, extra: Iterable[tuple[int, str]] = ()
    ) -> list[tuple[int, str]]:
        fields = [
            (35, "8"),
            (37, order.order_id),
            (11, order.cl_ord_id),
            (17, self._next_id("E")),
            (150, exec_type),
            (39, order.status),
            (55, order.symbol),
            (54, order.side),
            (38, format_price(order.qty)),
            (40, order.ord_type),
            (151, format_price(order.qty - order.cum_qty if order.status in _OPEN else 0)),
            (14, format_price(order.cum_qty)),
            (6, format_price(order.avg_px)),
            (60, utc_timestamp()),
        ]
        if version == "FIX.4.2":
            fields.append((20, "0"))  # ExecTransType: required in 4.2, gone in 4.4
        if order.price is not None:
            fields.append((44, format_price(order.price)))
        fields.extend(extra)
        return fields

    @staticmethod
    def _fill_type(version: str) -> str:
        return "2" if version == "FIX.4.2" else "F"  # ExecType Fill (4.2) became Trade (4.4+)

    def _new_order(self, message: FixMessage, version: str) -> list[list[tuple[int, str]]]:
        cl_ord_id = message.get(11) or ""
        ord_type = message.get(40) or "1"
        price_text = message.get(44)
        order = Order(
            order_id=self._next_id("O"),
            cl_ord_id=cl_ord_id,
            symbol=message.get(55) or "",
            side=message.get(54) or "1",
            qty=float(message.get(38) or 0),
            price=float(price_text) if price_text else None,
            ord_type=ord_type,
        )
        key = (message.session, cl_ord_id)
        with self._book_lock:
            if key in self._orders:
                order.status = "8"
                return [self._report(version, order, "8", extra=[(103, "6"), (58, "duplicate ClOrdID")])]
            self._orders[key] = order
            replies = [self._report(version, order, "0")]
            if self.auto_fill and ord_type in ("1", "2"):
                px = order.price if (ord_type == "2" and order.price is not None) else self.market_price
                order.status, order.cum_qty, order.avg_px = "2", order.qty, px
                replies.append(
                    self._report(
                        version,
                        order,
                        self._fill_type(version),
                        extra=[(32, format_price(order.qty)), (31, format_price(px))],
                    )
                )
            return replies

    def _cancel_reject(
        self, message: FixMessage, order: Order | None, response_to: str, reason: str, text: str
    ) -> list[tuple[int, str]]:
        return [
            (35, "9"),
            (37, order.order_id if order else "NONE"),
            (11, message.get(11) or ""),
            (41, message.get(41) or ""),
            (39, order.status if order else "8"),
            (434, response_to),
            (102, reason),
            (58, text),
        ]

    def _resting(self, message: FixMessage, response_to: str) -> tuple[Order | None, list[tuple[int, str]] | None]:
        """The resting order a cancel/replace refers to, or the OrderCancelReject to send."""
        order = self._orders.get((message.session, message.get(41) or ""))
        if order is None:
            return None, self._cancel_reject(message, None, response_to, "1", "unknown order")
        if order.status not in _OPEN:
            return None, self._cancel_reject(message, order, response_to, "0", "too late: order is done")
        return order, None

    def _cancel(self, message: FixMessage, version: str) -> list[list[tuple[int, str]]]:
        with self._book_lock:
            order, reject = self._resting(message, "1")
            if order is None:
                return [reject] if reject else []
            del self._orders[(message.session, order.cl_ord_id)]
            orig = order.cl_ord_id
            order.cl_ord_id = message.get(11) or ""
            order.status = "4"
            self._orders[(message.session, order.cl_ord_id)] = order
            return [self._report(version, order, "4", extra=[(41, orig)])]

    def _replace(self, message: FixMessage, version: str) -> list[list[tuple[int, str]]]:
        with self._book_lock:
            order, reject = self._resting(message, "2")
            if order is None:
                return [reject] if reject else []
            del self._orders[(message.session, order.cl_ord_id)]
            orig = order.cl_ord_id
            order.cl_ord_id = message.get(11) or ""
            order.qty = float(message.get(38) or order.qty)
            if message.get(44):
                order.price = float(message.fields[44])
            # FIX 4.4 dropped OrdStatus 5 (Replaced): the status is the order's own, here New.
            order.status = "0" if version == "FIX.4.4" else "5"
            self._orders[(message.session, order.cl_ord_id)] = order
            return [self._report(version, order, "5", extra=[(41, orig)])]

    def _status(self, message: FixMessage, version: str) -> list[list[tuple[int, str]]]:
        with self._book_lock:
            order = self._orders.get((message.session, message.get(11) or ""))
            extra: list[tuple[int, str]] = []
            if order is None:
                order = Order(
                    order_id="NONE",
                    cl_ord_id=message.get(11) or "",
                    symbol=message.get(55) or "",
                    side=message.get(54) or "1",
                    qty=0.0,
                    price=None,
                    ord_type="1",
                    status="8",
                )
                extra = [(103, "5"), (58, "unknown order")]
            if version == "FIX.4.2":
                # 4.2 reports status with ExecTransType=3 and ExecType = the current status.
                report = self._report(version, order, order.status, extra=extra)
                return [[(20, "3") if tag == 20 else (tag, value) for tag, value in report]]
            return [self._report(version, order, "I", extra=extra)]


# -- the demo OMS ------------------------------------------------------------------------------------


class OrderEntry(_FixEngine):
    """The demo OMS: a QuickFIX initiator with one session that sends orders and records replies."""

    _connection_type = "initiator"

    def __init__(self, config: EngineConfig) -> None:
        if config.port <= 0:
            raise ValueError("an initiator needs the port to connect to")
        super().__init__([config])
        self.config = config

    def _engine_class(self) -> Any:
        return fix.SocketInitiator

    @property
    def session(self) -> str:
        return self.config.session_key

    def send_new_order(
        self,
        cl_ord_id: str,
        symbol: str,
        side: str,
        qty: float,
        price: float | None,
        *,
        ord_type: str | None = None,
        extra: Iterable[tuple[int, str]] = (),
    ) -> bool:
        """NewOrderSingle: limit when a price is given, market otherwise (unless `ord_type`)."""
        fields = [
            (35, "D"),
            (11, cl_ord_id),
            (21, "1"),  # HandlInst: required by FIX 4.2, harmless later
            (55, symbol),
            (54, side),
            (38, format_price(qty)),
            (40, ord_type or ("2" if price is not None else "1")),
            (60, utc_timestamp()),
        ]
        if price is not None:
            fields.append((44, format_price(price)))
        fields.extend(extra)
        return self.send_raw(fields)

    def send_cancel(self, cl_ord_id: str, orig_cl_ord_id: str, symbol: str, side: str, qty: float) -> bool:
        return self.send_raw(
            [
                (35, "F"),
                (11, cl_ord_id),
                (41, orig_cl_ord_id),
                (55, symbol),
                (54, side),
                (38, format_price(qty)),
                (60, utc_timestamp()),
            ]
        )

    def send_replace(
        self,
        cl_ord_id: str,
        orig_cl_ord_id: str,
        symbol: str,
        side: str,
        qty: float,
        price: float | None,
    ) -> bool:
        fields = [
            (35, "G"),
            (11, cl_ord_id),
            (41, orig_cl_ord_id),
            (21, "1"),
            (55, symbol),
            (54, side),
            (38, format_price(qty)),
            (40, "2" if price is not None else "1"),
            (60, utc_timestamp()),
        ]
        if price is not None:
            fields.append((44, format_price(price)))
        return self.send_raw(fields)

    def send_status(self, cl_ord_id: str, symbol: str, side: str) -> bool:
        return self.send_raw([(35, "H"), (11, cl_ord_id), (55, symbol), (54, side)])

    @property
    def exec_reports(self) -> list[ExecReport]:
        """ExecutionReports received, as ``(ClOrdID, OrdStatus, ExecType)`` tuples."""
        return [ExecReport(m) for m in self.messages("8")]

    def reports_for(self, cl_ord_id: str) -> list[ExecReport]:
        return [r for r in self.exec_reports if r.cl_ord_id == cl_ord_id]

    @property
    def cancel_rejects(self) -> list[FixMessage]:
        """OrderCancelRejects (35=9) received."""
        return self.messages("9")

    def wait_exec(self, cl_ord_id: str, ord_status: str, timeout: float = 5.0) -> bool:
        """Wait for an ExecutionReport for `cl_ord_id` with OrdStatus `ord_status`."""
        return self._journal.wait_for(
            lambda: any(r.ord_status == ord_status for r in self.reports_for(cl_ord_id)), timeout
        )
