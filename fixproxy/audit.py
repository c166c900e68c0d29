"""A tamper-evident, append-only audit trail: hash-chained JSON lines, sealed by signed checkpoints.

Files and records
-----------------
A trail is a directory of ``audit-000001.jsonl``, ``audit-000002.jsonl``, ... (a new file when one
passes ``max_file_bytes``), plus ``HEAD.json``. Each line is one record::

    {"kind":"session.logon","prev":"<64 hex>","seq":7,"session":"OMS1","time":1795...,"hash":"<64 hex>"}

- ``seq`` is contiguous from 1 across all files: a gap is a deleted record.
- ``prev`` is the ``hash`` of the record before it (64 zeros for seq 1).
- ``hash`` is the SHA-256 of the record's canonical JSON (sorted keys, no spaces, ASCII) *without*
  the ``hash`` member: exactly the line's bytes with ``,"hash":"…"`` removed. So any edited byte
  shows as a hash mismatch on that very record, and a record edited *with* its hash recomputed
  breaks the ``prev`` of the next one.
- Every ``checkpoint_every`` records or ``checkpoint_seconds`` since the last checkpoint (whichever
  first, checked in :meth:`AuditTrail.flush`; a checkpoint follows the flush that reaches the count)
  a ``checkpoint`` record seals the chain: it carries the head (``head_seq``, ``head_hash``: the
  record before it), the signer's Ed25519 public key (``pubkey``) and an Ed25519 signature
  (``sig``) over its seq, time, head and key. Forging one needs the private signing key.
- Each time a trail is opened it writes ``audit.opened`` (pid, settings, key) and seals it with a
  checkpoint at once; :meth:`AuditTrail.close` seals whatever is left.
- ``HEAD.json`` holds a copy of the latest checkpoint, replaced atomically after the checkpoint is on
  disk. If the files are cut below that checkpoint, :func:`verify` says so. The same checkpoint goes
  to ``on_checkpoint`` (the proxy publishes it as an event) so that a copy lives off the box.

Records after the last checkpoint are **unsealed**: they are chained and hash-checked, but anyone
who can write the files could cut them off, or rewrite them consistently, without a trace until the
next checkpoint seals them. ``verify`` reports their number and does not call it an error;
``checkpoint_seconds`` bounds how long a record stays unsealed (while ``flush`` is called). Nor is
an incomplete last line (no newline) at the very end of the trail an error: it is a write in
progress when verifying a live trail, or a write torn by a crash; it is reported, not counted.

What verify proves: without ``pubkey`` it checks the trail against the key embedded in its first
checkpoint (internal consistency: someone who rewrites the whole trail and re-signs it with a key
of their own is not caught); with ``pubkey`` (kept apart from the box) every checkpoint must be
signed by that key. One trail directory is signed by one key; a new key means a new directory.
A trail rolled back completely (files and HEAD.json replaced by an older, genuine state) can only
be detected against the off-box copy of the latest checkpoint.

A ``messages`` record (one socket read, or the ``reads`` reads of one session and direction between
two flushes) carries ``session``, ``direction``, ``received_at`` (of its first read),
``count`` and ``messages``: one array per message, ``[msg_seq_num, msg_type, length, outcome,
reason, sha256]`` (:data:`MESSAGE_COLUMNS`; arrays rather than objects halve the cost of writing
them). With ``store_messages`` it also carries the bytes: ``data`` (base64) or, encrypted, ``enc``;
``length`` splits them into messages, and ``sha256`` (over the bytes, concatenated) checks them.
(Records written before 2026-11-23 carry ``sha256`` without the bytes too: one more digest over
the same bytes as the rows', dropped as it cost a second SHA-256 per message and proved nothing more.)

The FIX path
------------
:meth:`AuditTrail.append_messages` is called once per socket read and only appends a tuple to a
list: the hashing (one SHA-256 per message; with stored bytes, one over them all), JSON, encryption
and I/O
happen in :meth:`AuditTrail.flush`, off the FIX path. The trail is not thread-safe: call all its
methods from one thread (the event loop). ``flush`` does blocking I/O (and ``fsync`` per policy).

Durability (``fsync``): ``"always"`` fsyncs every flush, ``"batch"`` at every checkpoint (and at
rotation and close), ``"never"`` leaves it to the OS (no guarantee after a power loss). After a
crash, :meth:`AuditTrail.open_or_resume` cuts a torn last line away (keeping the cut bytes in
``<file>.torn.N``), resumes the chain from the last intact record, and writes an ``audit.recovered``
record saying what it cut, as the first new record.

Encryption at rest (optional, with ``store_messages``): the bytes of one read are encrypted with
AES-256-GCM, a random 12-byte nonce per record and the record's seq (ASCII decimal) as AAD, stored
base64 in ``enc``. The per-message SHA-256 digests stay in clear (they let a holder of a message
prove it was in the trail; for low-entropy messages they also confirm a guess).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .codec import Message, _speedups

log = logging.getLogger("fixproxy.audit")

FSYNC_POLICIES = ("always", "batch", "never")
ZERO_HASH = "0" * 64
HEAD_FILE = "HEAD.json"
LOCK_FILE = ".lock"
CHECKPOINT = "checkpoint"  # kind of the signed checkpoint records (written by the trail only)
MESSAGES = "messages"  # kind of the records append_messages writes
PROBE = "audit.probe"  # written when the trail is writable again after a failure (see flush)
MAX_RECORD_MESSAGES = 1024  # messages per ``messages`` record at most (a session's reads coalesce up to it)
MESSAGE_COLUMNS = ("msg_seq_num", "msg_type", "length", "outcome", "reason", "sha256")  # a messages entry
RESERVED_FIELDS = frozenset({"seq", "time", "kind", "prev", "hash"})
_FILE_NAME = re.compile(r"audit-(\d{6,})\.jsonl")
_LINE = re.compile(rb'(\{.*),"hash":"([0-9a-f]{64})"\}\n', re.S)
_SIGNATURE_CONTEXT = b"fixproxy-audit-checkpoint/1\n"
_KEY_BYTES = 32  # AES-256


class AuditError(Exception):
    """The trail cannot be opened, written, or exported."""


class AuditVerifyError(AuditError):
    """The trail failed verification (export refuses a broken trail)."""

    def __init__(self, result: VerifyResult) -> None:
        super().__init__(result.error_line())
        self.result = result


@dataclass(frozen=True)
class AuditConfig:
    """The [audit] table of the configuration (its keys are these fields) and the defaults of
    :class:`AuditTrail`."""

    directory: Path
    signing_key: Path  # Ed25519 private key, PEM (`fixproxy audit keygen PATH`)
    checkpoint_every: int = 1000  # records
    checkpoint_seconds: float = 5.0
    fsync: str = "batch"  # one of FSYNC_POLICIES
    encryption_key: Path | None = None  # 32 raw bytes: AES-256-GCM for the stored message bytes
    store_messages: bool = False  # keep the message bytes, not only their digests
    # When the trail cannot be written, new orders are refused with a clear Reject (the proxy
    # implements this; the trail only carries the setting).
    fail_closed: bool = True
    # Each read's record is written (to the kernel: it survives the proxy's own death, SIGKILL
    # included) before any of its messages is forwarded; a read whose record cannot be written is
    # not forwarded at all. Costs one write per read on the FIX path (see the README).
    write_ahead: bool = False

    def open_trail(self, **kwargs: Any) -> AuditTrail:
        """:meth:`AuditTrail.open_or_resume` with these settings (``kwargs``: on_checkpoint, clock, ...)."""
        return AuditTrail.open_or_resume(
            self.directory, self.signing_key, checkpoint_every=self.checkpoint_every,
            checkpoint_seconds=self.checkpoint_seconds, fsync=self.fsync, encryption_key=self.encryption_key,
            store_messages=self.store_messages, **kwargs)


_D = AuditConfig  # the defaults, defined once (class attributes of the dataclass)

# -- keys ------------------------------------------------------------------------------------------


def _create_private(path: Path, data: bytes) -> None:
    """Write a new secret file, mode 0600; never overwrite one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def public_key_path(signing_key: Path) -> Path:
    return Path(f"{signing_key}.pub")


def generate_signing_key(path: Path) -> Path:
    """A new Ed25519 signing key at ``path`` (PEM, mode 0600) and its public key at ``<path>.pub``.
    Refuses to overwrite either. Returns the public key's path."""
    path = Path(path)
    pub_path = public_key_path(path)
    if pub_path.exists():
        raise FileExistsError(errno.EEXIST, "already exists", str(pub_path))
    key = Ed25519PrivateKey.generate()
    _create_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub_path


def generate_encryption_key(path: Path) -> Path:
    """A new random AES-256 key (32 raw bytes, mode 0600) at ``path``; refuses to overwrite."""
    _create_private(Path(path), os.urandom(_KEY_BYTES))
    return Path(path)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise AuditError(f"cannot read the signing key {path}: {exc.strerror or exc}") from None
    except (TypeError, ValueError) as exc:
        raise AuditError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path} is not an Ed25519 key (make one with `fixproxy audit keygen PATH`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM public key (``<key>.pub``) or private key file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read the public key {path}: {exc.strerror or exc}") from None
    key: Any
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (TypeError, ValueError):
            raise AuditError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path} is not an Ed25519 public key")
    return key


def load_encryption_key(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read the encryption key {path}: {exc.strerror or exc}") from None
    if len(data) != _KEY_BYTES:
        raise AuditError(f"{path} must hold exactly {_KEY_BYTES} raw bytes (AES-256), it has {len(data)} "
                         "(make one with `fixproxy audit keygen --encryption PATH`)")
    return data


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# -- encoding --------------------------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)  # Path, datetime, exceptions, ...


_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_default).encode


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# Stands for a messages record's rows while the record is serialised; replaced by the rows' JSON,
# rendered by _record (no other value of such a record can hold a NUL: names, enums, hex, base64).
_ROWS_PLACEHOLDER = "\x00rows"
_ROWS_PLACEHOLDER_JSON = '"\\u0000rows"'


_mt_json: dict[Any, str] = {}  # MsgType -> its JSON string (bounded: an attacker's types are not kept)
_str_json: dict[str, str] = {}  # outcome / reason code -> its JSON string


def _render_msg_type(msg_type: bytes | str) -> str:
    text = json.dumps(msg_type.decode("latin-1") if isinstance(msg_type, bytes) else msg_type, ensure_ascii=True)
    if len(_mt_json) < 256:
        _mt_json[msg_type] = text
    return text


def _json_text(value: str) -> str:
    text = _str_json.get(value)
    if text is None:
        text = json.dumps(value, ensure_ascii=True)
        if len(_str_json) < 256:
            _str_json[value] = text
    return text


# The C rendering of _rows (fixproxy/_speedups.c, when built against OpenSSL), else None.
_audit_rows = getattr(_speedups, "audit_rows", None)


def _as_tuple(item: Item) -> tuple[int | bytes | None, bytes, bytes, str, str | None]:
    """An item as its 5-tuple: a Message stands for (its MsgSeqNum, MsgType, raw, forwarded)."""
    if type(item) is Message:
        return (item.get(b"34"), item.msg_type, item.raw, "forwarded", None)
    return item  # type: ignore[return-value]


def _row(item: Item) -> str:
    """One row of a messages record as JSON text (what json would write, ~40 % cheaper per
    message): [msg_seq_num, msg_type, length, outcome, reason, sha256]."""
    msg_seq_num, msg_type, raw, outcome, reason = _as_tuple(item)
    mt = _mt_json.get(msg_type)
    if mt is None:
        mt = _render_msg_type(msg_type)
    # msg_seq_num: an int, or the digits as received (bytes; anything else is no number)
    if msg_seq_num is None or (type(msg_seq_num) is bytes and not msg_seq_num.isdigit()):
        num: Any = "null"
    else:
        num = int(msg_seq_num)
    return (f'[{num},{mt},{len(raw)},{_json_text(outcome)},'
            f'{"null" if reason is None else _json_text(reason)},"{hashlib.sha256(raw).hexdigest()}"]')


def _rows(items: list[Item]) -> str:
    """The rows of a messages record as one JSON array (_speedups.audit_rows does the same in C)."""
    return "[" + ",".join(map(_row, items)) + "]"


def _seal(rec: dict[str, Any], rows: str | None = None) -> tuple[bytes, str]:
    """A record's line (its canonical JSON with ``hash`` appended as the last member) and hash.
    ``rows``: the JSON of ``rec["messages"]``, when _record rendered it (see _ROWS_PLACEHOLDER)."""
    text = _dumps(rec)
    if rows is not None:
        text = text.replace(_ROWS_PLACEHOLDER_JSON, rows, 1)
    body = text.encode("ascii")
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"hash":"' + digest.encode("ascii") + b'"}\n', digest


def _checkpoint_payload(rec: dict[str, Any]) -> bytes:
    """What a checkpoint's signature covers: its own seq and time, the head it seals, the key."""
    signed = {k: rec.get(k) for k in ("seq", "time", "head_seq", "head_hash", "pubkey")}
    return _SIGNATURE_CONTEXT + _dumps(signed).encode("ascii")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trail_files(directory: Path) -> list[Path]:
    """The trail's files, in order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = sorted((int(m[1]), n) for n in names if (m := _FILE_NAME.fullmatch(n)))
    return [Path(directory) / n for _, n in found]


def _file_name(index: int) -> str:
    return f"audit-{index:06d}.jsonl"


# -- the writer ------------------------------------------------------------------------------------

# msg_seq_num (an int, or the digits as received), msg_type, raw, outcome, reason; or a Message
# that was forwarded (its MsgSeqNum as received: what the proxy passes for every forwarded message)
Item = tuple[int | bytes | None, bytes, bytes, str, str | None] | Message


def _slice_end(pending: list[tuple[Any, ...]], max_messages: int) -> int:
    """How many of the oldest pending records hold at least ``max_messages`` messages (at least 1;
    a record that is not a messages record counts as one message)."""
    n = 0
    for k, entry in enumerate(pending, 1):
        n += len(entry[5]) if len(entry) == 7 else 1
        if n >= max_messages:
            return k
    return len(pending)


class AuditTrail:
    """The writer. ``AuditTrail(...)`` starts a new trail in an empty (or new) directory;
    :meth:`open_or_resume` also continues an existing one (what the proxy uses)."""

    def __init__(self, directory: Path, signing_key: Path, *, checkpoint_every: int = _D.checkpoint_every,
                 checkpoint_seconds: float = _D.checkpoint_seconds, fsync: str = _D.fsync,
                 encryption_key: Path | None = _D.encryption_key, store_messages: bool = _D.store_messages,
                 max_file_bytes: int = 64 << 20, on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.time, background_sync: bool = False,
                 _resume: bool = False) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        if checkpoint_every < 1 or not checkpoint_seconds > 0 or max_file_bytes < 1:
            raise ValueError("checkpoint_every, checkpoint_seconds and max_file_bytes must be positive")
        self.directory = Path(directory)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.fsync = fsync
        self.store_messages = store_messages
        self.max_file_bytes = max_file_bytes
        self.on_checkpoint = on_checkpoint
        self._clock = clock
        self._key = load_signing_key(signing_key)
        self._pub_b64 = _b64(_raw_public(self._key.public_key()))
        self._aead = AESGCM(load_encryption_key(encryption_key)) if encryption_key is not None else None
        self._pending: list[tuple[Any, ...]] = []
        # (session, direction) -> its messages record still pending: later reads join it
        self._open: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._seq = 0  # last seq handed out (written or pending)
        self._written = 0  # last seq on disk
        self._head = ZERO_HASH  # hash of record self._written
        self._last_checkpoint = 0
        self._checkpoint_time = clock()
        self._force_checkpoint = True  # seal what was found (or the opening record) at once
        self._fd = -1
        self._file: Path | None = None
        self._file_size = 0
        self._file_lines = 0
        self._broken: str | None = None  # a write failed and its bytes could not be taken back
        self._closed = False
        self.error: BaseException | None = None  # the last flush failure; None once a flush succeeds
        # background_sync: the fsyncs and HEAD.json of each checkpoint (and fsync="always") run in
        # a thread of their own, in order, so that the caller's thread (the event loop) never waits
        # on the disk; a failure there is raised by the next flush.
        self._sync: concurrent.futures.ThreadPoolExecutor | None = None
        self._sync_jobs: list[concurrent.futures.Future[None]] = []

        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise AuditError(f"{self.directory}: another process is writing this audit trail") from None
        try:
            files = trail_files(self.directory)
            recovered: dict[str, Any] | None = None
            if files and not _resume:
                raise AuditError(f"{self.directory} already holds an audit trail: use AuditTrail.open_or_resume")
            if files:
                recovered = self._resume(files)
            elif (self.directory / HEAD_FILE).exists():
                raise AuditError(f"{self.directory} has a HEAD.json but no audit files: the trail was removed? "
                                 "(start a new trail in a new directory)")
            else:
                self._open_file(self.directory / _file_name(1), new=True)
            if recovered:
                self.append("audit.recovered", **recovered)
            self.append("audit.opened", pid=os.getpid(), resumed=bool(files), fsync=fsync,
                        store_messages=store_messages, encrypted=self._aead is not None, pubkey=self._pub_b64)
            self.flush()
        except BaseException:
            self._release()
            raise
        if background_sync:
            self._sync = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit-sync")

    @classmethod
    def open_or_resume(cls, directory: Path, signing_key: Path, **kwargs: Any) -> AuditTrail:
        """Start a trail, or continue the one in ``directory`` after a restart or a crash: the last
        file's records are checked (hashes, seqs, chain, checkpoint signatures against this key), a
        torn or garbled tail (what a crash leaves) is cut away and reported in an
        ``audit.recovered`` record, and the chain resumes from the last intact record. Damage that
        a crash cannot cause (a bad record followed by good ones, a broken chain, another key,
        files cut below HEAD.json) raises :class:`AuditError`: verify the trail and start a new
        directory."""
        return cls(directory, signing_key, _resume=True, **kwargs)

    # -- the FIX path --------------------------------------------------------------------------------

    def append_messages(self, session: str, direction: str, received_at: float, items: list[Item]) -> int:
        """The messages of one socket read: ``items`` = (msg_seq_num, msg_type, raw, outcome,
        reason) per message, or the Message itself for one forwarded. O(1): digests and I/O happen
        in :meth:`flush`. ``items`` and the bytes in it are kept until then: do not mutate them
        (pass bytes, not a reused buffer).

        The reads of one session and direction that arrive before the next flush share one record
        (up to :data:`MAX_RECORD_MESSAGES` messages; ``reads`` counts them), whatever other
        sessions' reads come between: at one message per read, a record per read cost ~10 µs per
        message in JSON and hashing alone, and a flush of 50 such records held the event loop for
        0.35 ms (the p99 at 10k msg/s over 4 sessions)."""
        key = (session, direction)
        entry = self._open.get(key)
        if entry is not None and len(entry[5]) + len(items) <= MAX_RECORD_MESSAGES:
            entry[5].extend(items)
            entry[6][0] += 1
            return entry[0]
        self._seq = seq = self._seq + 1
        entry = (seq, self._clock(), session, direction, received_at, list(items), [1])
        self._pending.append(entry)
        self._open[key] = entry
        return seq

    def unforward(self, seq: int, count: int, reason: str) -> int:
        """The last ``count`` messages appended under ``seq`` (still pending) were not forwarded
        after all (write-ahead, and their record could not be written): those recorded as
        forwarded become refused with ``reason``. The record stays pending, to be written once
        the trail can be. Returns how many changed."""
        entry = next((e for e in reversed(self._pending) if e[0] == seq), None)
        if entry is None or len(entry) != 7 or len(entry[5]) < count:
            raise AuditError(f"unforward: record {seq} is not a pending messages record")
        items = entry[5]
        changed = 0
        for i in range(len(items) - count, len(items)):
            msg_seq_num, msg_type, raw, outcome, _ = _as_tuple(items[i])
            if outcome == "forwarded":
                items[i] = (msg_seq_num, msg_type, raw, "refused", reason)
                changed += 1
        return changed

    def append(self, kind: str, **fields: Any) -> int:
        """One record (``session.logon``, ``refusal``, ``admin``, ``config.reload``, ...); returns
        its seq. ``fields`` must not use seq, time, kind, prev or hash."""
        if not isinstance(kind, str) or not kind or kind in (CHECKPOINT, MESSAGES):
            raise ValueError(f"invalid audit record kind {kind!r}")
        clash = RESERVED_FIELDS.intersection(fields)
        if clash:
            raise ValueError(f"reserved audit record field(s): {', '.join(sorted(clash))}")
        self._seq = seq = self._seq + 1
        self._pending.append((seq, self._clock(), kind, fields))
        return seq

    def record_events(self, events: Iterable[Any]) -> None:
        """A recorder sink: one record per :class:`fixproxy.events.SecurityEvent` (kind = its kind)."""
        for ev in events:
            d = ev.to_dict()
            kind = d.pop("kind")
            d["event_time"] = d.pop("time")
            self.append(kind, **d)

    @property
    def last_seq(self) -> int:
        """The seq of the last record appended (written or pending)."""
        return self._seq

    @property
    def pending(self) -> int:
        """Records appended but not yet written."""
        return len(self._pending)

    @property
    def written(self) -> int:
        """The seq of the last record written to the file (= records in the trail)."""
        return self._written

    @property
    def last_checkpoint_seq(self) -> int:
        return self._last_checkpoint

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    # -- off the FIX path -----------------------------------------------------------------------------

    def flush(self, max_messages: int | None = None) -> None:
        """Serialise the pending records as JSON lines, write them (fsync per policy), and write a
        checkpoint when one is due. On failure the records stay pending, ``error`` is set and
        :class:`AuditError` is raised; the next flush retries.

        ``max_messages``: write only the oldest pending records, whole ones, until they hold at
        least that many messages (at least one record): a slice of the work, so that a caller on an
        event loop can let reads in between slices. A checkpoint is only written once nothing is
        pending.

        ``error`` is cleared only by a write that succeeds: a flush with nothing to write proves
        nothing. While it is set and nothing is pending, an ``audit.probe`` record is appended, so
        that the next flush does try a write (and, once one succeeds, the trail shows when)."""
        if self._closed:
            raise AuditError("the audit trail is closed")
        try:
            if self._broken is not None:
                raise AuditError(f"the audit trail needs recovery: {self._broken}")
            self._sync_errors()
            if self.error is not None and not self._pending:
                self.append(PROBE, after=f"{type(self.error).__name__}: {self.error}"[:300])
            if self._pending:
                k = len(self._pending) if max_messages is None else _slice_end(self._pending, max_messages)
                batch, self._pending = self._pending[:k], self._pending[k:]
                if self._pending:  # records left pending may still take reads; those written may not
                    for entry in batch:
                        if len(entry) == 7 and self._open.get((entry[2], entry[3])) is entry:
                            del self._open[(entry[2], entry[3])]
                else:
                    self._open.clear()  # new reads start new records (a batch put back is not extended)
                before = self._written
                try:
                    self._write_batch(batch)
                finally:
                    done = self._written - before
                    if done < len(batch):  # put back what is not on disk, in front of newer records
                        self._pending[:0] = batch[done:]
                if self.fsync == "always":
                    self._durable(self._fd, None)
            if not self._pending and self._written > self._last_checkpoint and (
                    self._force_checkpoint or self._written - self._last_checkpoint >= self.checkpoint_every
                    or self._clock() - self._checkpoint_time >= self.checkpoint_seconds):
                self._checkpoint()
        except OSError as exc:
            self.error = exc
            raise AuditError(f"cannot write the audit trail in {self.directory}: {exc.strerror or exc}") from exc
        except AuditError as exc:
            self.error = exc
            raise
        self.error = None

    def close(self) -> None:
        """Flush, seal with a final checkpoint, and release the directory."""
        if self._closed:
            return
        try:
            self._force_checkpoint = True  # seal everything written
            self.flush()
            self._stop_sync()  # the last HEAD.json written before we go
            if self.fsync != "never":
                os.fsync(self._fd)
        finally:
            with contextlib.suppress(Exception):  # after a failure above: still wait for the thread
                self._stop_sync()
            self._closed = True
            self._release()

    def __enter__(self) -> AuditTrail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- records ---------------------------------------------------------------------------------------

    def _record(self, entry: tuple[Any, ...]) -> tuple[dict[str, Any], str | None]:
        """The record of a pending entry, and the JSON of its message rows (messages records)."""
        if len(entry) == 4:
            seq, t, kind, fields = entry
            rec = {**fields, "seq": seq, "time": t, "kind": kind}
            try:
                _dumps(rec)
            except (TypeError, ValueError) as exc:  # a circular structure: keep what can be kept
                rec = {"seq": seq, "time": t, "kind": kind, "unserialisable": f"{exc}: {fields!r}"[:4096]}
            return rec, None
        seq, t, session, direction, received_at, items, (reads,) = entry
        rows_json = _audit_rows(items, _row) if _audit_rows is not None else _rows(items)  # same text
        rec = {"seq": seq, "time": t, "kind": MESSAGES, "session": session, "direction": direction,
               "received_at": received_at, "count": len(items), "messages": _ROWS_PLACEHOLDER}
        if reads > 1:
            rec["reads"] = reads
        if self.store_messages:
            data = b"".join(bytes(_as_tuple(item)[2]) for item in items)
            # the digest of the stored bytes checks them when they are read back (each row has its
            # message's own digest either way)
            rec["sha256"] = hashlib.sha256(data).hexdigest()
            if self._aead is not None:
                nonce = os.urandom(12)
                ct = self._aead.encrypt(nonce, data, str(seq).encode("ascii"))
                rec["enc"] = {"alg": "AES-256-GCM", "nonce": _b64(nonce), "ct": _b64(ct)}
            else:
                rec["data"] = _b64(data)
        return rec, rows_json

    def _write_batch(self, batch: list[tuple[Any, ...]]) -> None:
        """Write the batch, rotating files as they fill. The chain state advances with each chunk
        written, so after a failure ``self._written`` tells how much of the batch is on disk."""
        head, written = self._head, self._written
        chunk: list[bytes] = []
        size = 0
        for entry in batch:
            rec, rows = self._record(entry)
            if rec["seq"] != written + 1:
                raise AuditError(f"audit seq {rec['seq']} after {written}: appended from two threads?")
            rec["prev"] = head
            line, digest = _seal(rec, rows)
            if self._file_size + size + len(line) > self.max_file_bytes and self._file_size + size > 0:
                self._write_chunk(chunk, written, head)
                chunk, size = [], 0
                self._rotate()
            chunk.append(line)
            size += len(line)
            written, head = written + 1, digest
        self._write_chunk(chunk, written, head)

    def _write_chunk(self, lines: list[bytes], written: int, head: str) -> None:
        """Append lines to the current file, then advance the chain state to (written, head), the
        last of them. A failed write is taken back (ftruncate): the file never keeps half a batch."""
        if not lines:
            return
        data = b"".join(lines)
        before = self._file_size
        try:
            self._write(self._fd, data)
        except BaseException:
            try:
                os.ftruncate(self._fd, before)
            except OSError as exc:
                self._broken = f"a failed write could not be taken back ({exc}); reopen with open_or_resume"
            raise
        self._file_size += len(data)
        self._file_lines += len(lines)
        self._written, self._head = written, head

    def _write(self, fd: int, data: bytes) -> None:
        _write_all(fd, data)

    def _checkpoint(self) -> None:
        seq = self._seq + 1
        if self._pending or self._written != self._seq:
            raise AuditError("checkpoint with records pending")
        rec: dict[str, Any] = {"seq": seq, "time": self._clock(), "kind": CHECKPOINT, "prev": self._head,
                               "head_seq": self._written, "head_hash": self._head, "pubkey": self._pub_b64}
        rec["sig"] = _b64(self._key.sign(_checkpoint_payload(rec)))
        line, digest = _seal(rec)
        if self._file_size > 0 and self._file_size + len(line) > self.max_file_bytes:
            self._rotate()
        self._write_chunk([line], seq, digest)
        self._seq = seq
        self._last_checkpoint = seq
        self._checkpoint_time = self._clock()
        self._force_checkpoint = False
        sealed = {**rec, "hash": digest}
        assert self._file is not None
        self._durable(self._fd, {"checkpoint": sealed, "file": self._file.name, "line": self._file_lines})
        if self.on_checkpoint is not None:
            try:
                self.on_checkpoint(dict(sealed))
            except Exception:  # publishing the copy must not stop the trail
                log.exception("audit on_checkpoint callback failed")

    def _durable(self, fd: int, head: dict[str, Any] | None) -> None:
        """fsync the trail file (per policy), then write HEAD.json when ``head`` is given: here, or
        in the sync thread with a duplicate of the descriptor (the file may rotate meanwhile)."""
        if self._sync is None:
            if self.fsync != "never":
                os.fsync(fd)
            if head is not None:
                self._write_head(head)
            return
        dup = os.dup(fd) if self.fsync != "never" else -1
        try:
            self._sync_jobs.append(self._sync.submit(self._durable_job, dup, head))
        except BaseException:
            if dup >= 0:
                os.close(dup)
            raise

    def _durable_job(self, fd: int, head: dict[str, Any] | None) -> None:
        try:
            if fd >= 0:
                os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)
        if head is not None:
            self._write_head(head)

    def _stop_sync(self) -> None:
        """Wait for the sync thread's jobs and stop it; raise the first failure among them."""
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.shutdown(wait=True)
            self._sync_errors(wait=True)

    def _sync_errors(self, wait: bool = False) -> None:
        """Raise the first failure of the sync thread's finished jobs (all of them with ``wait``)."""
        jobs, self._sync_jobs = self._sync_jobs, []
        failure: BaseException | None = None
        for job in jobs:
            if not wait and not job.done():
                self._sync_jobs.append(job)
                continue
            exc = job.exception()
            if exc is not None and failure is None:
                failure = exc
        if failure is not None:
            raise failure

    def _write_head(self, head: dict[str, Any]) -> None:
        tmp = self.directory / f".{HEAD_FILE}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, json.dumps(head, sort_keys=True, indent=1).encode("ascii") + b"\n")
            if self.fsync != "never":
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / HEAD_FILE)
        if self.fsync != "never":
            _fsync_dir(self.directory)

    # -- files -----------------------------------------------------------------------------------------

    def _open_file(self, path: Path, *, new: bool) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if new else 0)
        fd = os.open(path, flags, 0o600)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._file = fd, path
        self._file_size = os.fstat(fd).st_size
        if new:
            self._file_lines = 0
            if self.fsync != "never":
                _fsync_dir(self.directory)

    def _rotate(self) -> None:
        assert self._file is not None
        if self.fsync != "never":
            os.fsync(self._fd)
        index = int(_FILE_NAME.fullmatch(self._file.name)[1]) + 1  # type: ignore[index]
        self._open_file(self.directory / _file_name(index), new=True)

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    # -- resume ------------------------------------------------------------------------------------------

    def _resume(self, files: list[Path]) -> dict[str, Any] | None:
        pub = self._key.public_key()
        head = _read_head(self.directory)
        if isinstance(head, str):
            raise AuditError(f"{self.directory / HEAD_FILE}: {head}; verify the trail")
        cp = head["checkpoint"] if head is not None else None
        if cp is not None:
            problem = _check_checkpoint_signature(cp, pub)
            if problem:
                raise AuditError(f"{self.directory / HEAD_FILE}: {problem}: this trail was not written with "
                                 "this signing key (a new key needs a new directory)")
        recovered: dict[str, Any] = {}
        last: _Tail | None = None
        for path in reversed(files):  # the newest file with an intact record holds the chain head
            # Only the newest file can have a torn tail: a file is rotated after a complete write.
            tail = _check_tail(path, pub, want_seq=cp["seq"] if cp else None, may_cut=path == files[-1])
            if tail.cut_offset is not None:
                recovered.update(self._cut(path, tail))
            if tail.last_seq:
                last = tail
                break
        self._open_file(files[-1], new=False)
        self._file_lines = _count_lines(files[-1])
        if last is not None:
            self._seq = self._written = last.last_seq
            self._head = last.last_hash
            self._last_checkpoint = last.last_checkpoint
        if cp is not None:
            if cp["seq"] > self._written:
                raise AuditError(f"{self.directory}: HEAD.json holds the checkpoint at seq {cp['seq']} but the "
                                 f"trail ends at seq {self._written}: records were cut below the last checkpoint")
            if last is not None and last.wanted_hash is not None and last.wanted_hash != cp["hash"]:
                raise AuditError(f"{self.directory}: record {cp['seq']} differs from the checkpoint in HEAD.json")
            self._last_checkpoint = max(self._last_checkpoint, cp["seq"])
        elif self._written:
            recovered["head_missing"] = True  # rebuilt by the checkpoint written at once
        if recovered:
            recovered.update(last_intact_seq=self._written, last_intact_hash=self._head)
        return recovered or None

    def _cut(self, path: Path, tail: _Tail) -> dict[str, Any]:
        assert tail.cut_offset is not None
        with path.open("rb") as f:
            f.seek(tail.cut_offset)
            cut = f.read()
        n = 1
        while (saved := path.with_name(f"{path.name}.torn.{n}")).exists():
            n += 1
        _create_private(saved, cut)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, tail.cut_offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning("audit trail %s: cut %d bytes of a torn tail at offset %d (kept in %s)",
                    path, len(cut), tail.cut_offset, saved.name)
        return {"file": path.name, "offset": tail.cut_offset, "bytes": len(cut),
                "sha256": hashlib.sha256(cut).hexdigest(), "saved_as": saved.name, "problem": tail.problem}


@dataclass
class _Tail:
    last_seq: int = 0
    last_hash: str = ZERO_HASH
    last_checkpoint: int = 0
    cut_offset: int | None = None
    problem: str | None = None
    wanted_hash: str | None = None  # the hash of record want_seq, if in this file


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _parse_line(raw: bytes) -> tuple[dict[str, Any], str] | str:
    """(record, hash) of an intact line, or what is wrong with it."""
    if not raw.endswith(b"\n"):
        return "incomplete line (a torn write)"
    m = _LINE.fullmatch(raw)
    if m is None:
        return "not an audit record (malformed line)"
    body = m[1] + b"}"
    digest = m[2].decode("ascii")
    if hashlib.sha256(body).hexdigest() != digest:
        return "hash mismatch: the record was modified"
    try:
        rec = json.loads(body)
    except ValueError:
        return "not valid JSON"
    if (not isinstance(rec, dict) or type(rec.get("seq")) is not int or not isinstance(rec.get("prev"), str)
            or not isinstance(rec.get("kind"), str) or not isinstance(rec.get("time"), int | float)):
        return "not an audit record (seq, time, kind or prev missing)"
    return rec, digest


def _check_tail(path: Path, pub: Ed25519PublicKey, *, want_seq: int | None, may_cut: bool) -> _Tail:
    """Check one file for resuming. A damaged tail made only of unparseable lines (what a crash
    leaves) is marked for cutting; anything else raises."""
    tail = _Tail()
    offset = 0
    bad_at: tuple[int, int, str] | None = None  # offset, line, problem
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            parsed = _parse_line(raw)
            if bad_at is not None:
                if not isinstance(parsed, str):
                    raise AuditError(f"{path.name}:{bad_at[1]}: {bad_at[2]}, followed by intact records: not "
                                     "what a crash leaves; verify the trail")
            elif isinstance(parsed, str):
                bad_at = (offset, lineno, parsed)
            else:
                rec, digest = parsed
                where = f"{path.name}:{lineno}: record {rec['seq']}"
                if tail.last_seq and (rec["seq"] != tail.last_seq + 1 or rec["prev"] != tail.last_hash):
                    raise AuditError(f"{where}: does not follow record {tail.last_seq}; verify the trail")
                if rec["kind"] == CHECKPOINT:
                    problem = _check_checkpoint(rec, pub)
                    if problem:
                        raise AuditError(f"{where}: {problem} (a new key needs a new directory); verify the trail")
                    tail.last_checkpoint = rec["seq"]
                tail.last_seq, tail.last_hash = rec["seq"], digest
                if rec["seq"] == want_seq:
                    tail.wanted_hash = digest
            offset += len(raw)
    if bad_at is not None:
        if not may_cut:
            raise AuditError(f"{path.name}:{bad_at[1]}: {bad_at[2]}, in a file that is not the newest: not what a "
                             "crash leaves; verify the trail")
        tail.cut_offset, tail.problem = bad_at[0], f"line {bad_at[1]}: {bad_at[2]}"
    return tail


def _check_checkpoint_signature(rec: dict[str, Any], pub: Ed25519PublicKey) -> str | None:
    try:
        embedded = base64.b64decode(rec.get("pubkey", ""), validate=True)
        sig = base64.b64decode(rec.get("sig", ""), validate=True)
    except (ValueError, TypeError):
        return "checkpoint pubkey or sig is not base64"
    if embedded != _raw_public(pub):
        return "checkpoint signed with another key"
    try:
        pub.verify(sig, _checkpoint_payload(rec))
    except InvalidSignature:
        return "checkpoint signature invalid (forged checkpoint)"
    return None


def _check_checkpoint(rec: dict[str, Any], pub: Ed25519PublicKey) -> str | None:
    if rec.get("head_seq") != rec["seq"] - 1 or rec.get("head_hash") != rec["prev"]:
        return "checkpoint does not seal the record before it (head_seq/head_hash)"
    return _check_checkpoint_signature(rec, pub)


def _read_head(directory: Path) -> dict[str, Any] | str | None:
    """HEAD.json's content, None if there is none, or what is wrong with it."""
    try:
        data = json.loads((Path(directory) / HEAD_FILE).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    cp = data.get("checkpoint") if isinstance(data, dict) else None
    if (not isinstance(cp, dict) or type(cp.get("seq")) is not int or not isinstance(cp.get("hash"), str)
            or cp.get("kind") != CHECKPOINT):
        return "not a checkpoint copy"
    if _seal({k: v for k, v in cp.items() if k != "hash"})[1] != cp["hash"]:
        return "hash mismatch: the checkpoint copy was modified"
    return data


# -- verification -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadRecord:
    file: str  # a trail file's name (or HEAD.json)
    line: int
    seq: int  # the record's seq, or the seq expected at that place


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int  # records checked (all of them when ok)
    checkpoints: int
    last_checkpoint_seq: int  # 0: none yet
    unsealed: int  # records after the last checkpoint: chained, but not yet signed (not an error)
    first_bad: BadRecord | None = None
    problem: str | None = None
    files: int = 0
    last_seq: int = 0
    # The last file ends in a line without its newline: a write in progress (verifying a live
    # trail) or torn by a crash (open_or_resume cuts it). Not counted, and not an error: only the
    # last write can be incomplete, and it was unsealed anyway.
    incomplete_tail: bool = False

    def summary(self) -> str:
        tail = ", and an incomplete last line (being written, or torn by a crash)" if self.incomplete_tail else ""
        return (f"ok: {self.records} records, {self.checkpoints} checkpoints, last checkpoint seq "
                f"{self.last_checkpoint_seq}, {self.unsealed} unsealed{tail}")

    def error_line(self) -> str:
        if self.first_bad is None:
            return self.problem or "ok"
        b = self.first_bad
        return f"record {b.seq} ({b.file}:{b.line}): {self.problem}"


class _Stop(Exception):
    def __init__(self, file: str, line: int, seq: int, problem: str) -> None:
        super().__init__(problem)
        self.bad = BadRecord(file, line, seq)
        self.problem = problem


def _seq_later(lines: Iterator[bytes], later_files: list[Path], seq: int) -> bool:
    """Does a record with this seq come later in the trail? (tells reordering from deletion)"""
    def rest() -> Iterator[bytes]:
        yield from lines
        for p in later_files:
            with p.open("rb") as f:
                yield from f
    for raw in rest():
        parsed = _parse_line(raw)
        if not isinstance(parsed, str) and parsed[0]["seq"] == seq:
            return True
    return False


def _scan(directory: Path, pubkey: Ed25519PublicKey | Path | None,
          visit: Callable[[bytes, dict[str, Any]], None] | None = None) -> VerifyResult:
    directory = Path(directory)
    if pubkey is not None and not isinstance(pubkey, Ed25519PublicKey):
        pubkey = load_public_key(pubkey)
    if not directory.is_dir():
        return VerifyResult(False, 0, 0, 0, 0, problem=f"{directory}: not a directory")
    files = trail_files(directory)
    if not files:
        return VerifyResult(False, 0, 0, 0, 0, problem=f"{directory}: no audit trail (no audit-*.jsonl files)")
    head = _read_head(directory)
    expected, prev = 1, ZERO_HASH
    checkpoints, last_cp = 0, 0
    last_cp_at: tuple[str, int] | None = None
    trail_key: Ed25519PublicKey | None = pubkey if isinstance(pubkey, Ed25519PublicKey) else None
    first_cp_seq = 0
    position = ("", 0)
    incomplete_tail = False
    try:
        if isinstance(head, str):
            raise _Stop(HEAD_FILE, 1, 0, f"HEAD.json {head}")
        for n, path in enumerate(files):
            position = (path.name, 0)
            with path.open("rb") as f:
                lines = iter(f)
                for lineno, raw in enumerate(lines, 1):
                    position = (path.name, lineno)
                    parsed = _parse_line(raw)
                    if isinstance(parsed, str):
                        if not raw.endswith(b"\n") and n == len(files) - 1:
                            incomplete_tail = True
                            position = (path.name, lineno - 1)
                            break
                        raise _Stop(path.name, lineno, expected, parsed)
                    rec, digest = parsed
                    seq = rec["seq"]
                    if seq != expected:
                        if seq < expected:
                            why = f"out of order: seq {seq} after seq {expected - 1} (records reordered or duplicated)"
                        elif _seq_later(lines, files[n + 1:], expected):
                            why = f"out of order: seq {seq} where seq {expected} was expected (records reordered)"
                        else:
                            missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
                            why = f"gap: record(s) {missing} missing (deleted)"
                        raise _Stop(path.name, lineno, seq, why)
                    if rec["prev"] != prev:
                        raise _Stop(path.name, lineno, seq,
                                    f"prev does not match the hash of record {seq - 1} (a record before it was "
                                    "rewritten, or records were removed or inserted)")
                    if rec["kind"] == CHECKPOINT:
                        if trail_key is None:
                            try:
                                trail_key = Ed25519PublicKey.from_public_bytes(
                                    base64.b64decode(rec.get("pubkey", ""), validate=True))
                            except (ValueError, TypeError):
                                raise _Stop(path.name, lineno, seq, "checkpoint pubkey is not an Ed25519 key") \
                                    from None
                            first_cp_seq = seq
                        problem = _check_checkpoint(rec, trail_key)
                        if problem == "checkpoint signed with another key":
                            problem = ("checkpoint signed with another key than --pubkey" if pubkey is not None
                                       else f"checkpoint signed with another key than checkpoint {first_cp_seq}")
                        if problem:
                            raise _Stop(path.name, lineno, seq, problem)
                        checkpoints, last_cp, last_cp_at = checkpoints + 1, seq, (path.name, lineno)
                    if isinstance(head, dict) and seq == head["checkpoint"]["seq"] \
                            and digest != head["checkpoint"]["hash"]:
                        raise _Stop(path.name, lineno, seq, "differs from the checkpoint kept in HEAD.json")
                    if visit is not None:
                        visit(raw, rec)
                    expected, prev = seq + 1, digest
        last_seq = expected - 1
        if isinstance(head, dict):
            cp = head["checkpoint"]
            key = trail_key or pubkey
            if key is None:  # HEAD.json names a checkpoint, yet the files hold none
                raise _Stop(*position, last_seq + 1, f"missing: the trail ends at seq {last_seq} but HEAD.json "
                            f"holds the checkpoint at seq {cp['seq']} (truncated below the last checkpoint)")
            assert isinstance(key, Ed25519PublicKey)
            problem = _check_checkpoint_signature(cp, key)
            if problem:
                raise _Stop(HEAD_FILE, 1, cp["seq"], f"HEAD.json: {problem}")
            if cp["seq"] > last_seq:
                raise _Stop(position[0], position[1] + 1, last_seq + 1,
                            f"missing: the trail ends at seq {last_seq} but HEAD.json holds the checkpoint at "
                            f"seq {cp['seq']} (truncated below the last checkpoint)")
        elif checkpoints:
            assert last_cp_at is not None
            raise _Stop(*last_cp_at, last_cp, "HEAD.json is missing: records after this checkpoint may have been "
                        "cut (AuditTrail.open_or_resume rebuilds it after a crash)")
    except _Stop as stop:
        return VerifyResult(False, expected - 1, checkpoints, last_cp, 0, stop.bad, stop.problem, len(files),
                            expected - 1)
    return VerifyResult(True, last_seq, checkpoints, last_cp, last_seq - last_cp, None, None, len(files), last_seq,
                        incomplete_tail)


def verify(directory: Path, pubkey: Path | Ed25519PublicKey | None = None) -> VerifyResult:
    """Check the whole trail: every record's hash, contiguous seqs, the prev chain, every
    checkpoint's signature (against ``pubkey`` if given, else the key of the first checkpoint), and
    that the files reach the checkpoint kept in HEAD.json. Stops at the first bad record."""
    return _scan(directory, pubkey)


def export(directory: Path, out: Path, *, session: str | None = None, start: float | None = None,
           end: float | None = None, pubkey: Path | Ed25519PublicKey | None = None,
           decrypt_key: Path | None = None) -> int:
    """Write the records matching ``session`` (its ``session`` field) and ``start <= time < end``
    to ``out`` as JSON lines, verifying the whole trail as it goes (one pass); a broken trail raises
    :class:`AuditVerifyError` and leaves no output. Records are copied byte-exact (each keeps its
    hash), unless ``decrypt_key`` is given: then encrypted message bytes are decrypted into
    ``data`` (base64) and checked against the record's digest. Returns the number of records."""
    out = Path(out)
    aead = AESGCM(load_encryption_key(decrypt_key)) if decrypt_key is not None else None
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    count = 0
    undecryptable: AuditError | None = None  # raised once the trail is known to verify
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:

            def visit(raw: bytes, rec: dict[str, Any]) -> None:
                nonlocal count, undecryptable
                if session is not None and rec.get("session") != session:
                    return
                if (start is not None and rec["time"] < start) or (end is not None and rec["time"] >= end):
                    return
                if aead is not None and isinstance(rec.get("enc"), dict):
                    try:
                        raw = _decrypted(aead, raw, rec)
                    except AuditError as exc:
                        undecryptable = undecryptable or exc
                f.write(raw)
                count += 1

            result = _scan(directory, pubkey, visit)
            if not result.ok:
                raise AuditVerifyError(result)
            if undecryptable is not None:
                raise undecryptable
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return count


def _decrypted(aead: AESGCM, raw: bytes, rec: dict[str, Any]) -> bytes:
    m = _LINE.fullmatch(raw)
    assert m is not None
    enc = rec.pop("enc")
    try:
        data = aead.decrypt(base64.b64decode(enc["nonce"]), base64.b64decode(enc["ct"]),
                            str(rec["seq"]).encode("ascii"))
    except (InvalidTag, KeyError, ValueError):
        raise AuditError(f"record {rec['seq']}: cannot decrypt (wrong decryption key?)") from None
    if hashlib.sha256(data).hexdigest() != rec.get("sha256"):
        raise AuditError(f"record {rec['seq']}: decrypted bytes do not match the record's sha256")
    rec["data"] = _b64(data)
    rec["decrypted"] = True
    rec["hash"] = m[2].decode("ascii")  # the stored record's hash (of its encrypted form)
    return _dumps(rec).encode("ascii") + b"\n"
