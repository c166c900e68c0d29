"""fixproxy.audit: the tamper-evident trail against real files: round trips, every kind of
tampering named at the right record, crash recovery (torn lines, SIGKILL of a writer), encryption
at rest, export, the `fixproxy audit` commands and the [audit] configuration table."""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import inspect
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixproxy import audit as audit_mod
from fixproxy.audit import (
    AuditConfig,
    AuditError,
    AuditTrail,
    AuditVerifyError,
    export,
    generate_encryption_key,
    generate_signing_key,
    verify,
)
from fixproxy.cli import main
from fixproxy.config import AUDIT, ConfigError, parse_config

ROOT = Path(__file__).resolve().parent.parent
FILE1 = "audit-000001.jsonl"
NOS = (b"8=FIX.4.4\x019=49\x0135=D\x0134=2\x0149=OMS1\x0152=20250102-10:00:00\x0156=ATS\x01"
       b"11=ORDER-SECRET-1\x0110=123\x01")
ER = b"8=FIX.4.4\x019=40\x0135=8\x0134=3\x0149=ATS\x0156=OMS1\x0137=EXEC-77\x0139=0\x0110=045\x01"


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_signing_key(d / "signing.pem")
    generate_signing_key(d / "other.pem")
    generate_encryption_key(d / "aes.key")
    generate_encryption_key(d / "other-aes.key")
    return {"signing": d / "signing.pem", "pub": d / "signing.pem.pub", "other": d / "other.pem",
            "other_pub": d / "other.pem.pub", "aes": d / "aes.key", "other_aes": d / "other-aes.key"}


class Clock:
    def __init__(self, t: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.t = t

    def __call__(self) -> float:
        return self.t


def open_trail(d: Path, keys: dict[str, Path], **kw: Any) -> AuditTrail:
    return AuditTrail.open_or_resume(d, keys["signing"], **kw)


def read_lines(d: Path, name: str = FILE1) -> list[bytes]:
    return (d / name).read_bytes().splitlines(keepends=True)


def write_lines(d: Path, lines: list[bytes], name: str = FILE1) -> None:
    (d / name).write_bytes(b"".join(lines))


def parse(line: bytes) -> dict[str, Any]:
    rec = json.loads(line)
    rec.pop("hash")
    return rec


def records(d: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for p in audit_mod.trail_files(d) for line in p.read_bytes().splitlines()]


def seal(rec: dict[str, Any]) -> tuple[bytes, str]:
    return audit_mod._seal(rec)


def sign(rec: dict[str, Any], key: Ed25519PrivateKey) -> None:
    rec["pubkey"] = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    rec["sig"] = base64.b64encode(key.sign(audit_mod._checkpoint_payload(rec))).decode()


def rechain(lines: list[bytes], start: int, key: Ed25519PrivateKey | None = None) -> list[bytes]:
    """What a careful forger does after changing line ``start - 1``: recompute every later prev and
    hash (and, holding a signing key, re-sign the checkpoints). Returns the new lines."""
    out = list(lines)
    prev = json.loads(out[start - 1])["hash"]
    for i in range(start, len(out)):
        rec = parse(out[i])
        rec["prev"] = prev
        if rec["kind"] == "checkpoint":
            rec["head_hash"] = prev
            if key is not None:
                sign(rec, key)
        out[i], prev = seal(rec)
    return out


def sample_trail(d: Path, keys: dict[str, Path], n: int = 20, **kw: Any) -> AuditTrail:
    """opened(1), checkpoint(2), then n records with a checkpoint after every 5, closed."""
    clock = kw.pop("clock", Clock())
    t = open_trail(d, keys, checkpoint_every=5, clock=clock, **kw)
    for i in range(n):
        clock.t += 1
        if i % 2:
            t.append("session.logon", session="OMS1" if i % 4 == 1 else "OMS2", n=i)
        else:
            t.append_messages("OMS1", "inbound", 100.0 + i, [(i, b"D", NOS, "forwarded", None),
                                                             (i + 1, b"D", NOS, "refused", "rate_limited")])
        t.flush()
    t.close()
    return t


def load_head(d: Path) -> dict[str, Any]:
    return json.loads((d / "HEAD.json").read_text())


def checkpoint_lines(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines) if parse(line)["kind"] == "checkpoint"]


def bad(result: Any) -> tuple[int, str, int]:
    assert not result.ok
    assert result.first_bad is not None, result
    return result.first_bad.seq, result.first_bad.file, result.first_bad.line


# -- round trip ------------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path, keys: dict[str, Path]) -> None:
    clock = Clock()
    seen: list[dict[str, Any]] = []
    t = open_trail(tmp_path, keys, checkpoint_every=1000, clock=clock, on_checkpoint=seen.append)
    assert (t.last_seq, t.written, t.pending, t.last_checkpoint_seq) == (2, 2, 0, 2)  # opened + checkpoint
    seq = t.append_messages("OMS1", "inbound", 12.5, [(2, b"D", NOS, "forwarded", None),
                                                      (None, b"8", ER, "refused", "msgtype_not_allowed")])
    assert seq == 3 and t.pending == 1 and t.written == 2
    assert t.append("admin", operation="kill", session="OMS1", operator={"uid": 0}) == 4
    t.flush()
    assert (t.pending, t.written) == (0, 4)
    t.close()
    result = verify(tmp_path)
    assert result.ok and result.summary() == "ok: 5 records, 2 checkpoints, last checkpoint seq 5, 0 unsealed"
    assert verify(tmp_path, keys["pub"]).ok
    recs = records(tmp_path)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert [r["kind"] for r in recs] == ["audit.opened", "checkpoint", "messages", "admin", "checkpoint"]
    assert recs[0]["prev"] == "0" * 64
    for a, b in itertools.pairwise(recs):
        assert b["prev"] == a["hash"]
    m = recs[2]
    assert m["session"] == "OMS1" and m["direction"] == "inbound" and m["received_at"] == 12.5
    assert m["count"] == 2 and "sha256" not in m  # the bytes are not stored: each row has its digest
    assert [dict(zip(audit_mod.MESSAGE_COLUMNS, row, strict=True)) for row in m["messages"]] == [
        {"msg_seq_num": 2, "msg_type": "D", "length": len(NOS), "outcome": "forwarded", "reason": None,
         "sha256": hashlib.sha256(NOS).hexdigest()},
        {"msg_seq_num": None, "msg_type": "8", "length": len(ER), "outcome": "refused",
         "reason": "msgtype_not_allowed", "sha256": hashlib.sha256(ER).hexdigest()},
    ]
    assert "data" not in m and "enc" not in m  # digests only by default
    assert recs[3]["operator"] == {"uid": 0} and recs[3]["time"] == clock.t
    # the record hash is SHA-256 over its canonical JSON without the hash member
    for line in read_lines(tmp_path):
        rec = json.loads(line)
        digest = rec.pop("hash")
        assert hashlib.sha256(json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()).hexdigest() == digest
    # the checkpoints went to on_checkpoint and the latest one to HEAD.json
    assert [c["seq"] for c in seen] == [2, 5] and seen[-1] == recs[4]
    assert load_head(tmp_path)["checkpoint"] == recs[4]
    assert oct(tmp_path.stat().st_mode & 0o777) == "0o700" and (tmp_path / FILE1).stat().st_mode & 0o077 == 0


def test_reserved_fields_and_kinds(tmp_path: Path, keys: dict[str, Path]) -> None:
    with open_trail(tmp_path, keys) as t:
        for kind, fields in (("x", {"seq": 1}), ("x", {"hash": "h"}), ("checkpoint", {}), ("messages", {}),
                             ("", {})):
            with pytest.raises(ValueError):
                t.append(kind, **fields)
        t.append("odd", blob=b"\x01\xff", path=Path("/x"), items={3, 1}, obj=object.__new__(Clock))
    assert verify(tmp_path).ok
    odd = records(tmp_path)[2]
    assert odd["blob"] == "\x01\xff" and odd["path"] == "/x" and odd["items"] == [1, 3]


def test_security_events_sink_and_callback_failure(tmp_path: Path, keys: dict[str, Path]) -> None:
    from fixproxy.events import Direction, Outcome, SecurityEvent
    from fixproxy.reasons import Reason

    def broken_publisher(checkpoint: dict[str, Any]) -> None:
        raise RuntimeError("broker down")

    t = open_trail(tmp_path, keys, on_checkpoint=broken_publisher)  # a failing publisher stops nothing
    ev = SecurityEvent(Reason.MSGTYPE_NOT_ALLOWED, Outcome.REFUSED, "MsgType B not allowed", session="OMS2",
                       direction=Direction.INBOUND, source="127.0.0.1", msg_type=b"B", msg_seq_num=3)
    t.record_events([ev])
    t.close()
    with pytest.raises(AuditError, match="closed"):
        t.flush()
    rec = records(tmp_path)[2]
    assert rec["kind"] == "policy.msgtype_not_allowed" and rec["reason"] == "msgtype_not_allowed"
    assert rec["msg_type"] == "B" and rec["session"] == "OMS2" and rec["event_time"] == ev.time
    assert verify(tmp_path).ok


def test_defaults_are_audit_config_defaults() -> None:
    """AuditTrail's keyword defaults are AuditConfig's: defined once."""
    params = inspect.signature(AuditTrail.__init__).parameters
    for f in dataclasses.fields(AuditConfig):
        if f.default is not dataclasses.MISSING and f.name in params:
            assert params[f.name].default == f.default, f.name


def test_checkpoints_by_count_and_by_time(tmp_path: Path, keys: dict[str, Path]) -> None:
    clock = Clock()
    t = open_trail(tmp_path, keys, checkpoint_every=10, checkpoint_seconds=5.0, clock=clock)
    for _ in range(9):
        t.append("x")
    t.flush()
    assert t.last_checkpoint_seq == 2  # 9 records: not yet
    t.append("x")
    t.flush()
    assert t.last_checkpoint_seq == 13  # the 10th record: checkpoint at 13
    t.append("x")
    t.flush()
    assert t.last_checkpoint_seq == 13
    clock.t += 5.0
    t.flush()  # nothing pending, but the time is up and record 14 is unsealed
    assert t.last_checkpoint_seq == 15
    clock.t += 60
    t.flush()  # nothing unsealed: no empty checkpoint
    assert t.last_checkpoint_seq == 15 and t.last_seq == 15
    t.append("x")
    t.flush()  # more than checkpoint_seconds since the last one: sealed at once
    assert t.last_checkpoint_seq == 17
    t.append("x")
    t.flush()
    t._release()  # "crash": no close, so record 18 stays unsealed
    result = verify(tmp_path)
    assert result.ok and (result.records, result.checkpoints, result.unsealed) == (18, 4, 1)
    assert result.summary() == "ok: 18 records, 4 checkpoints, last checkpoint seq 17, 1 unsealed"


def test_rotation_across_files(tmp_path: Path, keys: dict[str, Path]) -> None:
    t = open_trail(tmp_path, keys, checkpoint_every=7, max_file_bytes=2000)
    for i in range(60):
        t.append_messages("OMS1", "outbound", float(i), [(i, b"8", ER, "forwarded", None)])
        if i % 3 == 0:
            t.flush()
    t.close()
    files = audit_mod.trail_files(tmp_path)
    assert len(files) > 5
    assert all(p.stat().st_size <= 2000 for p in files)
    result = verify(tmp_path, keys["pub"])
    assert result.ok and result.files == len(files) and result.unsealed == 0
    assert [r["seq"] for r in records(tmp_path)] == list(range(1, result.records + 1))
    # a whole file removed from the middle: a gap at the first record of the next file
    middle = files[2]
    first_after = json.loads(read_lines(tmp_path, files[3].name)[0])["seq"]
    first_missing = json.loads(read_lines(tmp_path, middle.name)[0])["seq"]
    middle.unlink()
    assert bad(verify(tmp_path)) == (first_after, files[3].name, 1)
    assert f"record(s) {first_missing}..{first_after - 1} missing" in verify(tmp_path).problem


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("msgs"), st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=5)),
    st.tuples(st.just("rec"), st.dictionaries(st.sampled_from(["a", "session", "detail", "n"]),
                                              st.one_of(st.integers(), st.text(max_size=20), st.none()))),
    st.tuples(st.just("flush"), st.none() | st.integers(1, 6)),  # an int: a slice (the proxy's flusher)
    st.tuples(st.just("tick"), st.floats(min_value=0, max_value=10)),
), max_size=60), every=st.integers(1, 8), max_bytes=st.integers(200, 3000), store=st.booleans(),
       fsync=st.sampled_from(audit_mod.FSYNC_POLICIES), background=st.booleans())
def test_property_any_sequence_verifies(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path],
                                        ops: list[tuple[str, Any]], every: int, max_bytes: int, store: bool,
                                        fsync: str, background: bool) -> None:
    d = tmp_path_factory.mktemp("prop")
    clock = Clock()
    t = open_trail(d, keys, checkpoint_every=every, checkpoint_seconds=3.0, max_file_bytes=max_bytes, clock=clock,
                   store_messages=store, encryption_key=keys["aes"] if store else None, fsync=fsync,
                   background_sync=background)
    appended: list[int] = []
    for k, (op, arg) in enumerate(ops):
        if op == "msgs":
            appended.append(t.append_messages("S" if k % 3 else "T", "inbound", clock.t,
                                              [(i, b"D", raw, "forwarded", None) for i, raw in enumerate(arg)]))
        elif op == "rec":
            appended.append(t.append("event", **arg))
        elif op == "flush":
            t.flush(arg)
        else:
            clock.t += arg
    t.close()
    result = verify(d, keys["pub"])
    assert result.ok, result
    assert result.records == t.last_seq == t.written and result.unsealed == 0
    recs = records(d)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert result.checkpoints == sum(r["kind"] == "checkpoint" for r in recs)
    # every appended record is in the trail under the seq append returned; the rest are the trail's own
    by_seq = {r["seq"]: r["kind"] for r in recs}
    assert [by_seq[s] for s in appended] == ["messages" if op == "msgs" else "event" for op, _ in ops
                                             if op in ("msgs", "rec")]
    assert set(by_seq.values()) - {"messages", "event"} <= {"checkpoint", "audit.opened"}


# -- tampering -------------------------------------------------------------------------------------


@pytest.fixture
def trail(tmp_path: Path, keys: dict[str, Path]) -> Path:
    d = tmp_path / "trail"
    sample_trail(d, keys)
    assert verify(d, keys["pub"]).ok
    return d


def test_edited_field_is_the_first_bad_record(trail: Path) -> None:
    lines = read_lines(trail)
    assert b'"session":"OMS2"' in lines[5]
    lines[5] = lines[5].replace(b'"session":"OMS2"', b'"session":"OMS9"')
    write_lines(trail, lines)
    result = verify(trail)
    assert bad(result) == (6, FILE1, 6)
    assert result.problem == "hash mismatch: the record was modified" and result.records == 5
    assert result.error_line() == f"record 6 ({FILE1}:6): hash mismatch: the record was modified"


def test_every_single_byte_edit_is_detected(trail: Path) -> None:
    original = (trail / FILE1).read_bytes()
    rng = random.Random(7)
    for pos in rng.sample(range(len(original)), 40):
        data = bytearray(original)
        data[pos] = (data[pos] + rng.randrange(1, 255)) % 256
        (trail / FILE1).write_bytes(bytes(data))
        assert not verify(trail).ok, pos
    (trail / FILE1).write_bytes(original)
    assert verify(trail).ok


def test_edit_with_recomputed_hash_breaks_the_next_prev(trail: Path) -> None:
    lines = read_lines(trail)
    rec = parse(lines[5])
    rec["n"] = 999
    lines[5], _ = seal(rec)
    write_lines(trail, lines)
    result = verify(trail)
    assert bad(result) == (7, FILE1, 7)
    assert result.problem.startswith("prev does not match the hash of record 6")


def test_rewritten_chain_is_caught_by_the_checkpoint_signature(trail: Path) -> None:
    lines = read_lines(trail)
    rec = parse(lines[5])
    rec["n"] = 999
    lines[5], _ = seal(rec)
    lines = rechain(lines, 6)  # prev and hash fixed everywhere; checkpoints cannot be re-signed
    write_lines(trail, lines)
    first_cp_after = next(i for i in checkpoint_lines(lines) if i > 5)
    result = verify(trail)
    assert bad(result) == (first_cp_after + 1, FILE1, first_cp_after + 1)
    assert result.problem == "checkpoint signature invalid (forged checkpoint)"


def test_deleted_record(trail: Path) -> None:
    lines = read_lines(trail)
    del lines[6]  # seq 7
    write_lines(trail, lines)
    result = verify(trail)
    assert bad(result) == (8, FILE1, 7)
    assert result.problem == "gap: record(s) 7 missing (deleted)"


def test_deleted_records_renumbered_and_rechained(trail: Path) -> None:
    """Records 7 and 8 removed, the rest renumbered and re-chained without a gap: the next
    checkpoint's signature (over its seq and head) gives it away."""
    lines = read_lines(trail)
    kept = lines[:6] + lines[8:]
    for i in range(6, len(kept)):
        rec = parse(kept[i])
        rec["seq"] -= 2
        if rec["kind"] == "checkpoint":
            rec["head_seq"] -= 2
        kept[i], _ = seal(rec)
    write_lines(trail, rechain(kept, 6))
    first_cp = next(i for i in checkpoint_lines(kept) if i >= 6)
    result = verify(trail)
    assert bad(result) == (first_cp + 1, FILE1, first_cp + 1)
    assert result.problem == "checkpoint signature invalid (forged checkpoint)"


def test_swapped_records(trail: Path) -> None:
    lines = read_lines(trail)
    lines[6], lines[7] = lines[7], lines[6]  # seq 7 and 8
    write_lines(trail, lines)
    result = verify(trail)
    assert bad(result) == (8, FILE1, 7)
    assert result.problem == "out of order: seq 8 where seq 7 was expected (records reordered)"


def test_moved_record(trail: Path) -> None:
    lines = read_lines(trail)
    lines.insert(12, lines.pop(3))  # seq 4 moved down
    write_lines(trail, lines)
    result = verify(trail)
    assert bad(result) == (5, FILE1, 4)
    assert "records reordered" in result.problem


def test_truncated_below_the_last_checkpoint(trail: Path) -> None:
    lines = read_lines(trail)
    cps = checkpoint_lines(lines)
    assert cps[-1] == len(lines) - 1  # close() sealed everything
    cut = cps[-2] + 1  # keep up to and including the previous checkpoint
    write_lines(trail, lines[:cut])
    result = verify(trail)
    assert bad(result) == (cut + 1, FILE1, cut + 1)
    assert result.problem == (f"missing: the trail ends at seq {cut} but HEAD.json holds the checkpoint at seq "
                              f"{len(lines)} (truncated below the last checkpoint)")
    # cut in the middle of a line: the same
    write_lines(trail, [*lines[:cut], lines[cut][:30]])
    assert bad(verify(trail)) == (cut + 1, FILE1, cut + 1)
    assert verify(trail).problem.startswith(f"missing: the trail ends at seq {cut} ")


def test_truncated_unsealed_records_are_not_detectable(tmp_path: Path, keys: dict[str, Path]) -> None:
    """The documented limit: records after the last checkpoint are unsealed until the next one."""
    t = open_trail(tmp_path, keys, checkpoint_every=1000)
    for i in range(5):
        t.append("x", n=i)
    t.flush()
    t._release()
    assert verify(tmp_path).unsealed == 5
    write_lines(tmp_path, read_lines(tmp_path)[:-2])
    result = verify(tmp_path)
    assert result.ok and result.unsealed == 3


def test_head_json_deleted_or_edited(trail: Path, keys: dict[str, Path]) -> None:
    head = (trail / "HEAD.json").read_text()
    (trail / "HEAD.json").unlink()
    result = verify(trail)
    n = len(read_lines(trail))
    assert bad(result) == (n, FILE1, n) and result.problem.startswith("HEAD.json is missing")
    edited = json.loads(head)
    edited["checkpoint"]["head_seq"] -= 1
    (trail / "HEAD.json").write_text(json.dumps(edited))
    assert bad(verify(trail)) == (0, "HEAD.json", 1)
    assert "hash mismatch" in verify(trail).problem
    # resealed but then its signature fails
    cp = {k: v for k, v in edited["checkpoint"].items() if k != "hash"}
    edited["checkpoint"]["hash"] = seal(cp)[1]
    (trail / "HEAD.json").write_text(json.dumps(edited))
    result = verify(trail)
    assert not result.ok and result.problem in ("differs from the checkpoint kept in HEAD.json",
                                                "HEAD.json: checkpoint signature invalid (forged checkpoint)")


def test_forged_checkpoint_signature(trail: Path) -> None:
    lines = read_lines(trail)
    i = checkpoint_lines(lines)[1]
    rec = parse(lines[i])
    sig = bytearray(base64.b64decode(rec["sig"]))
    sig[0] ^= 1
    rec["sig"] = base64.b64encode(bytes(sig)).decode()
    lines[i], _ = seal(rec)
    write_lines(trail, rechain(lines, i + 1))
    result = verify(trail)
    assert bad(result) == (i + 1, FILE1, i + 1)
    assert result.problem == "checkpoint signature invalid (forged checkpoint)"


def test_checkpoint_not_sealing_its_head(trail: Path) -> None:
    lines = read_lines(trail)
    i = checkpoint_lines(lines)[1]
    rec = parse(lines[i])
    rec["head_seq"] -= 1
    lines[i], _ = seal(rec)
    write_lines(trail, rechain(lines, i + 1))
    assert bad(verify(trail)) == (i + 1, FILE1, i + 1)
    assert "does not seal the record before it" in verify(trail).problem


def test_trail_resigned_with_another_key(trail: Path, keys: dict[str, Path]) -> None:
    """A forger holding a key of their own rewrites everything consistently: only --pubkey catches it."""
    other = audit_mod.load_signing_key(keys["other"])
    lines = read_lines(trail)
    rec = parse(lines[5])
    rec["n"] = 999
    lines[5], _ = seal(rec)
    lines = rechain(lines, 1, key=other)
    write_lines(trail, lines)
    cp = json.loads(lines[-1])
    (trail / "HEAD.json").write_text(json.dumps({"checkpoint": cp, "file": FILE1, "line": len(lines)}))
    assert verify(trail).ok  # internally consistent: the documented limit without --pubkey
    assert verify(trail, keys["other_pub"]).ok
    result = verify(trail, keys["pub"])
    assert bad(result) == (2, FILE1, 2)
    assert result.problem == "checkpoint signed with another key than --pubkey"


def test_one_checkpoint_signed_with_another_key(trail: Path, keys: dict[str, Path]) -> None:
    other = audit_mod.load_signing_key(keys["other"])
    lines = read_lines(trail)
    i = checkpoint_lines(lines)[2]
    rec = parse(lines[i])
    sign(rec, other)
    lines[i], _ = seal(rec)
    write_lines(trail, rechain(lines, i + 1))
    result = verify(trail)
    assert bad(result) == (i + 1, FILE1, i + 1)
    assert result.problem == "checkpoint signed with another key than checkpoint 2"
    assert verify(trail, keys["pub"]).problem == "checkpoint signed with another key than --pubkey"


def test_record_appended_after_tampering(trail: Path, keys: dict[str, Path]) -> None:
    lines = read_lines(trail)
    assert b'"n":3' in lines[5]
    lines[5] = lines[5].replace(b'"n":3', b'"n":4')
    last = json.loads(lines[-1])
    extra, _ = seal({"seq": last["seq"] + 1, "time": last["time"], "kind": "admin", "prev": last["hash"],
                     "operation": "cover-up"})
    write_lines(trail, [*lines, extra])
    assert bad(verify(trail)) == (6, FILE1, 6)
    # and the writer refuses to continue a tampered trail
    with pytest.raises(AuditError, match="followed by intact records"):
        open_trail(trail, keys)


def test_append_by_a_forger_after_the_last_checkpoint_is_unsealed(trail: Path) -> None:
    lines = read_lines(trail)
    last = json.loads(lines[-1])
    extra, _ = seal({"seq": last["seq"] + 1, "time": last["time"], "kind": "admin", "prev": last["hash"]})
    write_lines(trail, [*lines, extra])
    result = verify(trail)
    assert result.ok and result.unsealed == 1  # reported, sealed (or exposed) by the next checkpoint


def test_garbage_and_missing_first_file(trail: Path) -> None:
    lines = read_lines(trail)
    write_lines(trail, [*lines[:3], b"hello\n", *lines[3:]])
    assert bad(verify(trail)) == (4, FILE1, 4)
    assert verify(trail).problem == "not an audit record (malformed line)"
    (trail / FILE1).unlink()
    result = verify(trail)
    assert not result.ok and result.first_bad is None and "no audit trail" in result.problem


# -- recovery --------------------------------------------------------------------------------------


def test_resume_after_torn_last_line(tmp_path: Path, keys: dict[str, Path]) -> None:
    t = open_trail(tmp_path, keys, checkpoint_every=1000)
    for i in range(6):
        t.append("x", n=i)
    t.flush()
    t._release()  # the process died: no close, records 3..8 unsealed
    lines = read_lines(tmp_path)
    torn = lines[-1][: len(lines[-1]) // 2]
    write_lines(tmp_path, [*lines[:-1], torn])  # the last write was cut in the middle of a line
    result = verify(tmp_path)  # what a live trail being written can look like too: not an error
    assert result.ok and result.incomplete_tail and (result.records, result.unsealed) == (7, 5)
    assert result.summary() == ("ok: 7 records, 1 checkpoints, last checkpoint seq 2, 5 unsealed, and an "
                                "incomplete last line (being written, or torn by a crash)")
    # ...but an incomplete line that is not the very end is
    (tmp_path / "audit-000002.jsonl").touch()
    assert bad(verify(tmp_path)) == (8, FILE1, 8) and verify(tmp_path).problem == "incomplete line (a torn write)"
    (tmp_path / "audit-000002.jsonl").unlink()

    t2 = open_trail(tmp_path, keys, checkpoint_every=1000)
    assert t2.written == 10  # 7 intact + recovered + opened + checkpoint
    recs = records(tmp_path)
    recovered = recs[7]
    assert recovered["seq"] == 8 and recovered["kind"] == "audit.recovered"
    assert recovered["bytes"] == len(torn) and recovered["sha256"] == hashlib.sha256(torn).hexdigest()
    assert recovered["offset"] == sum(map(len, lines[:-1])) and recovered["last_intact_seq"] == 7
    assert recovered["problem"] == "line 8: incomplete line (a torn write)"
    assert (tmp_path / recovered["saved_as"]).read_bytes() == torn  # nothing destroyed
    assert [r["kind"] for r in recs[8:]] == ["audit.opened", "checkpoint"]
    assert recs[8]["resumed"] is True
    t2.append("after", n=1)
    t2.close()
    result = verify(tmp_path, keys["pub"])
    assert result.ok and result.unsealed == 0 and result.records == 12


def test_resume_after_truncated_last_line_and_garbage(tmp_path: Path, keys: dict[str, Path]) -> None:
    """A power loss can leave zeros after the last good line: cut as well."""
    t = open_trail(tmp_path, keys, checkpoint_every=1000)
    t.append("x")
    t.flush()
    t._release()
    with (tmp_path / FILE1).open("ab") as f:
        f.write(b'{"kind":"x","pr')
        f.write(b"\n\0\0\0\0\n\0\0")
    t2 = open_trail(tmp_path, keys)
    assert records(tmp_path)[3]["kind"] == "audit.recovered"
    t2.close()
    assert verify(tmp_path).ok


def test_resume_clean_and_with_a_new_file(tmp_path: Path, keys: dict[str, Path]) -> None:
    sample_trail(tmp_path, keys, n=4)
    t = open_trail(tmp_path, keys)
    assert [r["kind"] for r in records(tmp_path)[-2:]] == ["audit.opened", "checkpoint"]  # no audit.recovered
    t._release()
    # a crash right after a rotation leaves an empty newest file: the chain comes from the previous one
    (tmp_path / "audit-000002.jsonl").touch()
    t = open_trail(tmp_path, keys)
    t.append("y")
    t.close()
    assert verify(tmp_path, keys["pub"]).ok
    assert json.loads(read_lines(tmp_path, "audit-000002.jsonl")[0])["kind"] == "audit.opened"


def test_resume_refuses_damage_a_crash_cannot_cause(tmp_path: Path, keys: dict[str, Path]) -> None:
    sample_trail(tmp_path, keys, n=12)
    lines = read_lines(tmp_path)
    cps = checkpoint_lines(lines)
    write_lines(tmp_path, lines[: cps[-2] + 1])  # cut below HEAD.json's checkpoint
    with pytest.raises(AuditError, match="cut below the last checkpoint"):
        open_trail(tmp_path, keys)
    write_lines(tmp_path, lines)
    with pytest.raises(AuditError, match="another key"):  # one trail, one key
        AuditTrail.open_or_resume(tmp_path, keys["other"])
    write_lines(tmp_path, [*lines[:3], *lines[4:]])
    with pytest.raises(AuditError, match="does not follow record 3"):
        open_trail(tmp_path, keys)


def test_fresh_trail_refuses_an_existing_one(tmp_path: Path, keys: dict[str, Path]) -> None:
    sample_trail(tmp_path, keys, n=1)
    with pytest.raises(AuditError, match="open_or_resume"):
        AuditTrail(tmp_path, keys["signing"])
    (tmp_path / FILE1).unlink()  # files gone, HEAD.json left: not a fresh directory
    with pytest.raises(AuditError, match=r"HEAD\.json but no audit files"):
        open_trail(tmp_path, keys)


def test_one_writer_per_directory(tmp_path: Path, keys: dict[str, Path]) -> None:
    t = open_trail(tmp_path, keys)
    with pytest.raises(AuditError, match="another process is writing"):
        open_trail(tmp_path, keys)
    t.close()
    open_trail(tmp_path, keys).close()


def test_failed_write_is_taken_back_and_retried(tmp_path: Path, keys: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    t = open_trail(tmp_path, keys, checkpoint_every=1000)
    size = (tmp_path / FILE1).stat().st_size

    def half_then_enospc(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(t, "_write", half_then_enospc)
    for i in range(3):
        t.append("x", n=i)
    with pytest.raises(AuditError, match="No space left on device"):
        t.flush()
    assert t.error is not None and t.pending == 3 and t.written == 2
    assert (tmp_path / FILE1).stat().st_size == size  # the half batch was taken back
    t.append("y")
    monkeypatch.undo()
    t.flush()
    assert t.error is None and t.pending == 0 and t.written == 6
    t.close()
    assert verify(tmp_path).ok
    assert [r.get("n") for r in records(tmp_path)[2:6]] == [0, 1, 2, None]


CHILD = r"""
import os, sys, time
from pathlib import Path
from fixproxy.audit import AuditTrail

class SlowWriter(AuditTrail):
    def _write(self, fd, data):  # slow small writes: a SIGKILL lands mid-batch, mid-line
        for i in range(0, len(data), 13):
            os.write(fd, data[i:i + 13])
            time.sleep(0.0002)

t = SlowWriter.open_or_resume(Path(sys.argv[1]), Path(sys.argv[2]), checkpoint_every=4, fsync=sys.argv[3])
raw = b"8=FIX.4.4\x019=5\x0135=D\x0110=000\x01"
print("ready", flush=True)
i = 0
while True:
    i += 1
    t.append_messages("OMS1", "inbound", time.monotonic(), [(i, b"D", raw, "forwarded", None)] * 3)
    if i % 7 == 0:
        t.flush()
"""


def test_resume_after_sigkill_of_a_writer(tmp_path: Path, keys: dict[str, Path]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = random.Random(1)
    torn = 0
    for attempt in range(6):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(keys["signing"]),
                                  "never" if attempt % 2 else "batch"], stdout=subprocess.PIPE, env=env)
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.05, 0.25))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        before = verify(tmp_path)
        assert before.ok, before
        torn += before.incomplete_tail
        open_trail(tmp_path, keys).close()  # resume (cutting a torn tail), seal, release
        after = verify(tmp_path, keys["pub"])
        assert after.ok, after
    kinds = [r["kind"] for r in records(tmp_path)]
    print(f"\nSIGKILL x6: {torn} torn tails recovered, {len(kinds)} records, "
          f"{kinds.count('checkpoint')} checkpoints, {kinds.count('audit.recovered')} audit.recovered")
    assert kinds.count("audit.recovered") == torn >= 1


# -- encryption ------------------------------------------------------------------------------------


def test_encryption_round_trip(tmp_path: Path, keys: dict[str, Path]) -> None:
    d = tmp_path / "trail"
    with open_trail(d, keys, store_messages=True, encryption_key=keys["aes"]) as t:
        t.append_messages("OMS1", "inbound", 1.0, [(2, b"D", NOS, "forwarded", None),
                                                   (3, b"8", ER, "forwarded", None)])
    stored = (d / FILE1).read_bytes()
    for secret in (NOS, ER, b"ORDER-SECRET-1", base64.b64encode(NOS), base64.b64encode(NOS + ER),
                   base64.b64encode(b"ORDER-SECRET-1")):
        assert secret not in stored
    rec = records(d)[2]
    assert "data" not in rec and rec["enc"]["alg"] == "AES-256-GCM"
    assert len(base64.b64decode(rec["enc"]["nonce"])) == 12
    assert verify(d, keys["pub"]).ok  # verification needs no key

    out = tmp_path / "out.jsonl"
    assert export(d, out, decrypt_key=keys["aes"]) == 4
    dec = [json.loads(line) for line in out.read_text().splitlines()][2]
    assert base64.b64decode(dec["data"]) == NOS + ER and dec["decrypted"] is True and "enc" not in dec
    assert dec["hash"] == rec["hash"]
    with pytest.raises(AuditError, match="cannot decrypt"):
        export(d, out, decrypt_key=keys["other_aes"])
    # without the key the export is the stored records, byte-exact
    assert export(d, out) == 4 and out.read_bytes() == stored


def test_ciphertext_is_bound_to_its_record(tmp_path: Path, keys: dict[str, Path]) -> None:
    """AAD = seq: ciphertext moved to another record (and the chain rebuilt) does not decrypt."""
    d = tmp_path / "trail"
    with open_trail(d, keys, store_messages=True, encryption_key=keys["aes"], checkpoint_every=1000) as t:
        t.append_messages("OMS1", "inbound", 1.0, [(2, b"D", NOS, "forwarded", None)])
        t.append_messages("OMS1", "inbound", 2.0, [(3, b"D", NOS, "forwarded", None)])
    lines = read_lines(d)
    a, b = parse(lines[2]), parse(lines[3])
    b["enc"] = a["enc"]
    lines[3], _ = seal(b)
    write_lines(d, rechain(lines, 4))
    with pytest.raises(AuditVerifyError):  # the checkpoint catches the rewrite...
        export(d, tmp_path / "o.jsonl", decrypt_key=keys["aes"])
    aead = audit_mod.AESGCM(keys["aes"].read_bytes())
    with pytest.raises(audit_mod.InvalidTag):  # ...and the AAD alone would too
        aead.decrypt(base64.b64decode(a["enc"]["nonce"]), base64.b64decode(a["enc"]["ct"]), b"4")


def test_store_messages_without_encryption(tmp_path: Path, keys: dict[str, Path]) -> None:
    with open_trail(tmp_path, keys, store_messages=True) as t:
        t.append_messages("OMS1", "inbound", 1.0, [(2, b"D", NOS, "forwarded", None), (3, b"8", ER, "refused", "x")])
    rec = records(tmp_path)[2]
    assert base64.b64decode(rec["data"]) == NOS + ER and rec["sha256"] == hashlib.sha256(NOS + ER).hexdigest()


def test_bad_encryption_key(tmp_path: Path, keys: dict[str, Path]) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 16)
    with pytest.raises(AuditError, match="exactly 32 raw bytes"):
        open_trail(tmp_path / "t", keys, store_messages=True, encryption_key=short)


# -- export ----------------------------------------------------------------------------------------


@pytest.fixture
def day_trail(tmp_path: Path, keys: dict[str, Path]) -> tuple[Path, float]:
    """Two sessions over two days, one record per hour each."""
    d = tmp_path / "trail"
    start = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    clock = Clock(start - 60)
    with open_trail(d, keys, clock=clock, checkpoint_every=10) as t:
        for hour in range(48):
            clock.t = start + hour * 3600
            t.append_messages("OMS1", "inbound", clock.t, [(hour, b"D", NOS, "forwarded", None)])
            t.append("session.logon", session="OMS2", hour=hour)
            t.flush()
    return d, start


def test_export_by_session_and_time(day_trail: tuple[Path, float], tmp_path: Path) -> None:
    d, start = day_trail
    out = tmp_path / "oms1.jsonl"
    n = export(d, out, session="OMS1", start=start + 86400, end=start + 2 * 86400)
    lines = out.read_bytes().splitlines(keepends=True)
    assert n == len(lines) == 24
    recs = [json.loads(line) for line in lines]
    assert all(r["session"] == "OMS1" and start + 86400 <= r["time"] < start + 2 * 86400 for r in recs)
    assert [r["messages"][0][0] for r in recs] == list(range(24, 48))
    trail_lines = set(b"".join(p.read_bytes() for p in audit_mod.trail_files(d)).splitlines(keepends=True))
    assert set(lines) <= trail_lines  # byte-exact copies, each with its hash
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert export(d, out, session="OMS2") == 48
    assert export(d, out, start=start, end=start + 3600) == 3  # hour 0, without a session: its checkpoint too
    assert [json.loads(line)["kind"] for line in out.read_text().splitlines()] == \
        ["messages", "session.logon", "checkpoint"]
    assert export(d, out) == verify(d).records


def test_export_refuses_a_broken_trail(day_trail: tuple[Path, float], tmp_path: Path) -> None:
    d, _ = day_trail
    lines = read_lines(d)
    del lines[30]
    write_lines(d, lines)
    out = tmp_path / "x.jsonl"
    with pytest.raises(AuditVerifyError) as info:
        export(d, out, session="OMS1")
    assert info.value.result.first_bad is not None and info.value.result.first_bad.line == 31
    assert not out.exists() and not list(tmp_path.glob(".x.jsonl.*"))


# -- the CLI ---------------------------------------------------------------------------------------


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fixproxy: ") and "Traceback" not in stderr
    return lines[0]


def test_cli_verify(trail: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    n = len(read_lines(trail))
    assert main(["audit", "verify", str(trail)]) == 0
    assert capsys.readouterr().out == f"ok: {n} records, 5 checkpoints, last checkpoint seq {n}, 0 unsealed\n"
    assert main(["audit", "verify", str(trail), "--pubkey", str(keys["pub"])]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", str(trail), "--pubkey", str(keys["other_pub"])]) == 1
    assert one_error_line(capsys.readouterr().err) == \
        f"fixproxy: audit verify: record 2 ({FILE1}:2): checkpoint signed with another key than --pubkey"
    assert main(["audit", "verify", str(trail), "--pubkey", str(keys["aes"])]) == 2
    assert "is not a PEM public key" in one_error_line(capsys.readouterr().err)
    lines = read_lines(trail)
    lines[5] = lines[5].replace(b'"n":3', b'"n":4')
    write_lines(trail, lines)
    assert main(["audit", "verify", str(trail)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert one_error_line(err) == \
        f"fixproxy: audit verify: record 6 ({FILE1}:6): hash mismatch: the record was modified"
    assert main(["audit", "verify", str(trail.parent / "nowhere")]) == 1
    assert one_error_line(capsys.readouterr().err).endswith("nowhere: not a directory")


def test_cli_export(day_trail: tuple[Path, float], tmp_path: Path, keys: dict[str, Path],
                    capsys: pytest.CaptureFixture[str]) -> None:
    d, _ = day_trail
    out = tmp_path / "day.jsonl"
    argv = ["audit", "export", str(d), "--out", str(out), "--session", "OMS1", "--from", "2026-01-02",
            "--to", "2026-01-02T12:00:00+00:00", "--pubkey", str(keys["pub"])]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"exported 12 records to {out} in ") and printed.endswith(" s (trail verified)\n")
    assert len(out.read_text().splitlines()) == 12
    assert main(["audit", "export", str(d), "--out", str(out), "--from", "1767225600", "--to", "1767229200"]) == 0
    assert capsys.readouterr().out.startswith("exported 3 records")
    assert main(["audit", "export", str(d), "--out", str(out), "--from", "yesterday"]) == 2
    assert "not an ISO 8601 time or epoch seconds" in one_error_line(capsys.readouterr().err)
    assert main(["audit", "export", str(d), "--out", str(out), "--from", "2026-01-02", "--to", "2026-01-01"]) == 2
    assert "--to must be later than --from" in one_error_line(capsys.readouterr().err)
    lines = read_lines(d)
    i = next(i for i, line in enumerate(lines) if i > 8 and b'"session":"OMS2"' in line)
    lines[i] = lines[i].replace(b"OMS2", b"OMS3")
    write_lines(d, lines)
    out.unlink()
    assert main(["audit", "export", str(d), "--out", str(out)]) == 1
    assert one_error_line(capsys.readouterr().err) == (
        f"fixproxy: audit export: refused, the trail does not verify: record {i + 1} ({FILE1}:{i + 1}): "
        "hash mismatch: the record was modified")
    assert not out.exists()


def test_cli_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k.pem"
    assert main(["audit", "keygen", str(key)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"signing key: {key} (Ed25519, mode 0600)"
    assert key.stat().st_mode & 0o777 == 0o600
    assert isinstance(audit_mod.load_public_key(Path(f"{key}.pub")), type(audit_mod.load_public_key(key)))
    assert main(["audit", "keygen", str(key)]) == 2
    assert one_error_line(capsys.readouterr().err) == \
        f"fixproxy: audit keygen: {key}.pub already exists (keys are never overwritten)"
    aes = tmp_path / "aes.key"
    assert main(["audit", "keygen", "--encryption", str(aes)]) == 0
    assert len(aes.read_bytes()) == 32 and aes.stat().st_mode & 0o777 == 0o600
    assert main(["audit"]) == 2
    capsys.readouterr()


def test_cli_in_a_real_process(trail: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fixproxy.cli", *args], capture_output=True, text=True,
                              env=env, timeout=30, check=False)

    ok = run("audit", "verify", str(trail))
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ") and ok.stderr == ""
    lines = read_lines(trail)
    del lines[3]
    write_lines(trail, lines)
    broken = run("audit", "verify", str(trail))
    assert broken.returncode == 1 and broken.stdout == ""
    assert one_error_line(broken.stderr) == \
        f"fixproxy: audit verify: record 5 ({FILE1}:4): gap: record(s) 4 missing (deleted)"


# -- the [audit] configuration table ---------------------------------------------------------------


BASE = """
[proxy]
listen = "127.0.0.1:0"
insecure = true
[upstream]
endpoints = ["127.0.0.1:9880"]
insecure = true
[[sessions]]
name = "OMS1"
begin_string = "FIX.4.4"
sender_comp_id = "OMS1"
target_comp_id = "ATS"
"""


@pytest.fixture
def conf_dir(tmp_path: Path, keys: dict[str, Path]) -> Path:
    generate_signing_key(tmp_path / "sign.pem")
    generate_encryption_key(tmp_path / "aes.key")
    return tmp_path


def parse_audit(conf_dir: Path, table: str) -> Any:
    return parse_config(BASE + "[audit]\n" + table, conf_dir, "fixproxy.toml")


def audit_error(conf_dir: Path, table: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_audit(conf_dir, table)
    return str(info.value)


def test_config_audit_table(conf_dir: Path) -> None:
    assert parse_config(BASE, conf_dir, "f.toml").audit is None
    cfg = parse_audit(conf_dir, 'directory = "audit"\nsigning_key = "sign.pem"\n')
    assert cfg.audit == AuditConfig(conf_dir / "audit", conf_dir / "sign.pem")
    assert (cfg.audit.checkpoint_every, cfg.audit.checkpoint_seconds, cfg.audit.fsync, cfg.audit.encryption_key,
            cfg.audit.store_messages, cfg.audit.fail_closed) == (1000, 5.0, "batch", None, False, True)
    full = parse_audit(conf_dir, 'directory = "audit"\nsigning_key = "sign.pem"\ncheckpoint_every = 10\n'
                                 'checkpoint_seconds = 0.5\nfsync = "always"\nencryption_key = "aes.key"\n'
                                 'store_messages = true\nfail_closed = false\n').audit
    assert full == AuditConfig(conf_dir / "audit", conf_dir / "sign.pem", 10, 0.5, "always", conf_dir / "aes.key",
                               True, False)
    with full.open_trail() as t:  # the settings open a working trail
        t.append("config.reload", detail="ok")
    assert verify(conf_dir / "audit", Path(f"{conf_dir / 'sign.pem'}.pub")).ok


def test_config_audit_keys_are_the_audit_config_fields() -> None:
    assert set(AUDIT) == {f.name for f in dataclasses.fields(AuditConfig)}


@pytest.mark.parametrize(("table", "expected"), [
    ('signing_key = "sign.pem"\n', "fixproxy.toml: audit.directory: missing (a required key)"),
    ('directory = "audit"\n', "fixproxy.toml: audit.signing_key: missing (a required key)"),
    ('directory = "audit"\nsigning_key = "sign.pem"\nfsync = "sometimes"\n',
     'fixproxy.toml: audit.fsync: must be one of "always", "batch", "never", got "sometimes"'),
    ('directory = "audit"\nsigning_key = "sign.pem"\ncheckpoint_every = 0\n',
     "fixproxy.toml: audit.checkpoint_every: must be a positive integer, got 0"),
    ('directory = "audit"\nsigning_key = "sign.pem"\ncheckpoint_seconds = -1\n',
     "fixproxy.toml: audit.checkpoint_seconds: must be a positive number, got -1"),
    ('directory = "audit"\nsigning_key = "sign.pem"\nstore_messages = "yes"\n',
     'fixproxy.toml: audit.store_messages: must be true or false, got "yes"'),
    ('directory = "audit"\nsigning_key = "sign.pem"\nfail_closed = 1\n',
     "fixproxy.toml: audit.fail_closed: must be true or false, got 1"),
    ('directory = "audit"\nsigning_key = "sign.pem"\nencryption_key = "aes.key"\n',
     "fixproxy.toml: audit.encryption_key: only used with store_messages = true (set it, or remove the key)"),
    ('directory = "audit"\nsigning_key = "sign.pem"\nfsnyc = "always"\n',
     'fixproxy.toml: audit.fsnyc: unknown key (did you mean "fsync"?); allowed keys: directory, signing_key, '
     "checkpoint_every, checkpoint_seconds, fsync, encryption_key, store_messages, fail_closed, write_ahead"),
])
def test_config_audit_errors(conf_dir: Path, table: str, expected: str) -> None:
    assert audit_error(conf_dir, table) == expected


def test_config_audit_file_errors(conf_dir: Path) -> None:
    d = conf_dir
    assert audit_error(d, 'directory = "no/such/audit"\nsigning_key = "sign.pem"\n') == \
        f"fixproxy.toml: audit.directory: directory {d / 'no/such'} does not exist"
    assert audit_error(d, 'directory = "sign.pem"\nsigning_key = "sign.pem"\n') == \
        f"fixproxy.toml: audit.directory: {d / 'sign.pem'} is not a directory"
    assert audit_error(d, 'directory = "audit"\nsigning_key = "nope.pem"\n') == \
        f"fixproxy.toml: audit.signing_key: file not found: {d / 'nope.pem'}"
    ec_key = d / "ec.pem"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ec_key.chmod(0o600)
    assert audit_error(d, 'directory = "audit"\nsigning_key = "ec.pem"\n') == \
        f"fixproxy.toml: audit.signing_key: {ec_key} is not an Ed25519 key (make one with `fixproxy audit keygen PATH`)"
    (d / "sign.pem").chmod(0o640)
    assert audit_error(d, 'directory = "audit"\nsigning_key = "sign.pem"\n') == \
        f"fixproxy.toml: audit.signing_key: {d / 'sign.pem'} is accessible by group or others (mode 0640): " \
        f"chmod 600 {d / 'sign.pem'}"
    (d / "sign.pem").chmod(0o600)
    junk = d / "junk.pem"
    junk.write_text("not a key")
    junk.chmod(0o600)
    assert "is not a PEM private key" in audit_error(d, 'directory = "audit"\nsigning_key = "junk.pem"\n')
    short = d / "short.key"
    short.write_bytes(b"k" * 31)
    short.chmod(0o600)
    assert audit_error(d, 'directory = "audit"\nsigning_key = "sign.pem"\nstore_messages = true\n'
                          'encryption_key = "short.key"\n') == \
        f"fixproxy.toml: audit.encryption_key: {short} must hold exactly 32 raw bytes (AES-256), it has 31 " \
        "(make one with `fixproxy audit keygen --encryption PATH`)"


# -- timing (printed, not asserted: this machine is shared and noisy) ------------------------------


def _reads(n: int, per_read: int) -> Iterator[list[tuple[int, bytes, bytes, str, None]]]:
    for i in range(n):
        yield [(i * per_read + j, b"D", NOS, "forwarded", None) for j in range(per_read)]


def test_timing_append_messages_and_flush(tmp_path: Path, keys: dict[str, Path]) -> None:
    """As the proxy would run it: reads of 10 messages, a flush every 100 reads (about every 50 ms
    at 20k msgs/s); append_messages and flush timed separately."""
    per_read, chunk, chunks = 10, 100, 200
    n = chunk * chunks
    batches = list(_reads(chunk, per_read))
    for store, key in ((False, None), (True, keys["aes"])):
        d = tmp_path / f"store-{store}"
        t = open_trail(d, keys, store_messages=store, encryption_key=key, checkpoint_every=1000)
        append, perf = t.append_messages, time.perf_counter
        appended = flushed = 0.0
        for _ in range(chunks):
            started = perf()
            for items in batches:
                append("OMS1", "inbound", 1.0, items)
            appended += perf() - started
            started = perf()
            t.flush()
            flushed += perf() - started
        t.close()
        started = perf()
        result = verify(d)
        verified = perf() - started
        assert result.ok and result.records == t.written
        mode = "message bytes encrypted" if key else "digests only"
        print(f"\naudit ({mode}; {per_read} msgs/read, {n} reads, fsync batch): append_messages "
              f"{appended / n * 1e6:.2f} us/read = {appended / (n * per_read) * 1e9:.0f} ns/message; "
              f"flush {flushed / n * 1e6:.1f} us/record = {flushed / (n * per_read) * 1e6:.2f} us/message; "
              f"verify {verified / result.records * 1e6:.1f} us/record")


def test_reads_of_a_session_share_a_record_until_the_next_flush(tmp_path: Path, keys: dict[str, Path]) -> None:
    """At one message per read, a record per read was the audit trail's main cost: the reads of one
    session and direction between two flushes coalesce into one record (``reads`` counts them), in
    order, up to MAX_RECORD_MESSAGES, whatever other sessions' reads and other records come between;
    another session or direction has its own record, a flush starts new ones. Nothing is lost or
    reordered within a session and direction, and the trail verifies."""
    from fixproxy.audit import MAX_RECORD_MESSAGES

    t = open_trail(tmp_path, keys, checkpoint_every=10_000)
    a = t.append_messages("OMS1", "inbound", 1.0, [(2, b"D", NOS, "forwarded", None)])
    b = t.append_messages("OMS1", "inbound", 2.0, [(3, b"D", NOS, "refused", "rate_limited"),
                                                   (4, b"D", NOS, "forwarded", None)])
    c = t.append_messages("OMS1", "outbound", 3.0, [(2, b"8", ER, "forwarded", None)])
    d = t.append_messages("OMS2", "outbound", 4.0, [(2, b"8", ER, "forwarded", None)])
    e = t.append("session.logon", session="OMS1")
    f = t.append_messages("OMS2", "outbound", 5.0, [(3, b"8", ER, "forwarded", None)])  # joins d
    a2 = t.append_messages("OMS1", "inbound", 5.5, [(5, b"D", NOS, "forwarded", None)])  # joins a
    t.flush()
    g = t.append_messages("OMS2", "outbound", 6.0, [(4, b"8", ER, "forwarded", None)])
    big = [(i, b"D", NOS, "forwarded", None) for i in range(MAX_RECORD_MESSAGES)]
    h = t.append_messages("OMS2", "outbound", 7.0, big)  # would overflow g's record: a new one
    t.close()
    assert a == b == a2 and d == f and len({a, c, d, e}) == 4 and len({f, g, h}) == 3
    assert verify(tmp_path, keys["pub"]).ok
    recs = {r["seq"]: r for r in records(tmp_path)}
    first = recs[a]
    assert (first["count"], first["reads"], first["received_at"]) == (4, 3, 1.0)
    assert [m[0] for m in first["messages"]] == [2, 3, 4, 5]
    assert [m[3] for m in first["messages"]] == ["forwarded", "refused", "forwarded", "forwarded"]
    assert "reads" not in recs[c] and recs[c]["direction"] == "outbound"
    assert (recs[d]["count"], recs[d]["reads"]) == (2, 2) and [m[0] for m in recs[d]["messages"]] == [2, 3]
    assert recs[g]["count"] == 1  # the flush between d and g
    assert recs[h]["count"] == MAX_RECORD_MESSAGES


def test_unforward_finds_a_read_whose_record_is_not_the_last(tmp_path: Path, keys: dict[str, Path]) -> None:
    """Write-ahead: a read that joined an earlier pending record is taken back in that record."""
    t = open_trail(tmp_path, keys, checkpoint_every=10_000)
    a = t.append_messages("OMS1", "inbound", 1.0, [(2, b"D", NOS, "forwarded", None)])
    t.append_messages("OMS2", "inbound", 1.5, [(2, b"D", NOS, "forwarded", None)])
    assert t.append_messages("OMS1", "inbound", 2.0, [(3, b"D", NOS, "forwarded", None)]) == a
    assert t.unforward(a, 1, "audit_unavailable") == 1
    with pytest.raises(AuditError, match="not a pending messages record"):
        t.unforward(999, 1, "audit_unavailable")
    t.close()
    rows = {r["seq"]: r for r in records(tmp_path)}[a]["messages"]
    assert [(m[0], m[3], m[4]) for m in rows] == [(2, "forwarded", None), (3, "refused", "audit_unavailable")]


def test_message_rows_are_the_json_the_encoder_would_write(tmp_path: Path, keys: dict[str, Path]) -> None:
    """The rows are rendered by hand (cheaper than json): byte for byte what json writes, for any
    MsgType an attacker can send (quotes, backslashes, control and non-ASCII bytes) and every field."""
    weird = [b"D", b'"', b"\\", b"\x00\x01", b"\xff\xfe", b"AB\"C", "ü".encode()]
    t = open_trail(tmp_path, keys, checkpoint_every=10_000)
    items = [(None if i % 3 == 0 else i, mt, NOS + bytes([i]), ("forwarded", "refused", "dropped")[i % 3],
              None if i % 2 else "bad_tag") for i, mt in enumerate(weird)]
    # MsgSeqNum may also come as the digits received (the proxy's forwarded messages)
    items += [(b"0042", b"D", NOS, "forwarded", None), (b"4x", b"D", NOS, "refused", "bad_tag")]
    seq = t.append_messages("OMS1", "inbound", 1.0, items)
    t.close()
    assert verify(tmp_path, keys["pub"]).ok
    line = next(raw for raw in b"".join(p.read_bytes() for p in sorted(tmp_path.glob("audit-*.jsonl"))).splitlines()
                if json.loads(raw)["seq"] == seq)
    expected = [[int(s) if isinstance(s, int) or (s and s.isdigit()) else None, mt.decode("latin-1"), len(raw), out,
                 reason, hashlib.sha256(raw).hexdigest()] for s, mt, raw, out, reason in items]
    assert [e[0] for e in expected[-2:]] == [42, None]
    assert json.loads(line)["messages"] == expected
    assert b'"messages":' + json.dumps(expected, separators=(",", ":"), ensure_ascii=True).encode() in line


def test_unforward_marks_the_pending_messages_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    """Write-ahead: a read whose record could not be written is not forwarded; its messages stay in
    the pending record (coalesced or not), now refused with the reason, to be written later.
    Only a pending messages record can change, not one already written."""
    t = open_trail(tmp_path, keys, checkpoint_every=10_000)
    a = t.append_messages("OMS1", "inbound", 1.0, [(2, b"D", NOS, "forwarded", None)])
    b = t.append_messages("OMS1", "inbound", 2.0, [(3, b"D", NOS, "forwarded", None),
                                                   (4, b"D", NOS, "refused", "rate_limited")])
    assert a == b
    assert t.unforward(b, 2, "audit_unavailable") == 1  # the second read: one was forwarded
    with pytest.raises(AuditError):
        t.unforward(b, 4, "audit_unavailable")  # more than the record holds
    d = t.append("session.logon", session="OMS1")
    assert t.unforward(a, 1, "audit_unavailable") == 0  # still pending, not last: its last was refused
    t.flush()
    with pytest.raises(AuditError, match="not a pending messages record"):
        t.unforward(a, 1, "audit_unavailable")  # written: too late
    t.close()
    assert verify(tmp_path, keys["pub"]).ok
    recs = {r["seq"]: r for r in records(tmp_path)}
    assert [(m[0], m[3], m[4]) for m in recs[a]["messages"]] == [
        (2, "forwarded", None), (3, "refused", "audit_unavailable"), (4, "refused", "rate_limited")]
    assert recs[d]["kind"] == "session.logon"


def test_error_clears_only_when_a_write_succeeds(tmp_path: Path, keys: dict[str, Path]) -> None:
    """An empty flush proves nothing: after a failed write the trail stays in error until a write
    succeeds; with nothing pending, an audit.probe record is what gets written."""
    import errno

    t = open_trail(tmp_path, keys, checkpoint_every=10_000)
    t.flush()
    real_write = t._write
    failing = {"on": True}

    def write(fd: int, data: bytes) -> None:
        if failing["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    t._write = write  # type: ignore[method-assign]
    t.append("session.logon", session="OMS1")
    with pytest.raises(AuditError):
        t.flush()
    assert t.error is not None and t.pending == 1
    failing["on"] = False
    t.flush()  # the pending record goes: writable again
    assert t.error is None and t.pending == 0
    failing["on"] = True
    t.append("session.logon", session="OMS2")
    with pytest.raises(AuditError):
        t.flush()
    t._pending.clear()  # what write-ahead leaves when nothing else waits: nothing pending at all
    t._seq -= 1
    with pytest.raises(AuditError):
        t.flush()  # nothing pending, yet not "writable": a probe is tried, and fails
    assert t.error is not None and t.pending == 1
    failing["on"] = False
    t.flush()
    assert t.error is None
    t.close()
    assert verify(tmp_path, keys["pub"]).ok
    kinds = [r["kind"] for r in records(tmp_path)]
    assert kinds.count("audit.probe") == 1 and kinds.count("session.logon") == 1


def test_background_sync_keeps_head_current_and_reports_its_failures(tmp_path: Path,
                                                                     keys: dict[str, Path]) -> None:
    """background_sync: checkpoints' fsyncs and HEAD.json are written by a thread of the trail's
    own, in order; HEAD.json ends at the last checkpoint; a failure there is raised by the next
    flush and sets `error` (the proxy then fails closed)."""
    import threading

    t = open_trail(tmp_path, keys, checkpoint_every=2, background_sync=True)
    writers: set[str] = set()
    real_head = t._write_head

    def head(h: dict[str, Any]) -> None:
        writers.add(threading.current_thread().name)
        real_head(h)

    t._write_head = head  # type: ignore[method-assign]
    for i in range(6):
        t.append("session.logon", session=f"S{i}")
        t.flush()
    t._sync_errors(wait=True)
    assert writers and all(name.startswith("audit-sync") for name in writers)
    assert load_head(tmp_path)["checkpoint"]["seq"] == t.last_checkpoint_seq

    def failing_head(h: dict[str, Any]) -> None:
        raise OSError(28, "No space left on device")

    t._write_head = failing_head  # type: ignore[method-assign]
    t.append("session.logon", session="S9")
    t.append("session.logon", session="S10")
    t.flush()  # the checkpoint's HEAD.json fails in the thread...
    t._sync.shutdown(wait=True)  # type: ignore[union-attr]  # (let it finish: no race in the test)
    t._sync = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="audit-sync")
    with pytest.raises(AuditError):
        t.flush()  # ...and the next flush says so
    assert t.error is not None
    t._write_head = real_head  # type: ignore[method-assign]
    t.close()
    assert verify(tmp_path, keys["pub"]).ok


def test_a_flush_in_slices_writes_whole_records_oldest_first(tmp_path: Path, keys: dict[str, Path]) -> None:
    """flush(max_messages): the oldest pending records, whole, until they hold that many messages;
    a session whose record was written starts a new one, one still pending keeps taking reads; no
    checkpoint while anything is pending; the trail verifies."""
    t = open_trail(tmp_path, keys, checkpoint_every=1)
    t.flush()
    base = t.written
    a = t.append_messages("A", "inbound", 1.0, [(2, b"D", NOS, "forwarded", None)] * 3)
    b = t.append_messages("B", "inbound", 1.0, [(2, b"D", NOS, "forwarded", None)] * 2)
    c = t.append_messages("C", "inbound", 1.0, [(2, b"D", NOS, "forwarded", None)])
    t.flush(3)  # A's record alone holds 3
    assert t.written == base + 1 == a and t.pending == 2
    assert t.append_messages("A", "inbound", 2.0, [(3, b"D", NOS, "forwarded", None)]) > c  # a new record
    assert t.append_messages("B", "inbound", 2.0, [(3, b"D", NOS, "forwarded", None)]) == b  # extended
    t.flush(1)
    assert t.written == b and t.pending == 2  # B's record, now of 3 messages; no checkpoint yet
    t.flush(100)
    assert t.pending == 0 and t.written > base + 4  # C, A's second, then the checkpoint
    t.close()
    recs = [r for r in records(tmp_path) if r["seq"] > base]
    assert [(r["kind"], r.get("session"), r.get("count")) for r in recs[:4]] == [
        ("messages", "A", 3), ("messages", "B", 3), ("messages", "C", 1), ("messages", "A", 1)]
    assert recs[4]["kind"] == "checkpoint"
    assert verify(tmp_path, keys["pub"]).ok


def test_the_proxys_sliced_flusher_still_checkpoints_under_steady_load(tmp_path: Path,
                                                                       keys: dict[str, Path]) -> None:
    """fixproxy.proxy's flusher writes in slices and lets reads in between; a checkpoint needs
    nothing pending. Under reads that never stop (four sessions, a read between every two slices)
    the checkpoints must still come when due, and every record must be written in the end."""
    import asyncio
    import types

    from fixproxy.proxy import FixProxy

    t = open_trail(tmp_path, keys, checkpoint_every=10**9, checkpoint_seconds=0.05)
    slices: list[int | None] = []

    def flush_audit(max_messages: int | None = None) -> bool:
        slices.append(max_messages)
        t.flush(max_messages)
        return True

    stand_in = types.SimpleNamespace(audit=t, flush_audit=flush_audit)

    async def run() -> None:
        flusher = asyncio.ensure_future(FixProxy._audit_flusher(stand_in))  # type: ignore[arg-type]
        deadline = time.monotonic() + 0.6
        i = 0
        while time.monotonic() < deadline:
            i += 1
            for s in range(4):  # between two slices, more than a slice arrives (as at saturation)
                t.append_messages(f"S{s}", "inbound", 1.0, [(i, b"D", NOS, "forwarded", None)] * 8)
            await asyncio.sleep(0)
        flusher.cancel()

    asyncio.run(run())
    during = sum(r["kind"] == "checkpoint" for r in records(tmp_path))
    assert during >= 4  # about one per 50 ms over 0.6 s of load; none at all if starved
    assert 16 in slices  # and it did write in slices
    t.close()
    assert t.pending == 0 and verify(tmp_path, keys["pub"]).ok
