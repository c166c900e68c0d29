"""fixproxy.admin over real Unix sockets: peer-credential authorisation, audit, protocol limits."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fixproxy.admin import (
    MAX_REQUEST_BYTES,
    AdminError,
    AdminServer,
    AdminTarget,
    admin_request,
    start_admin_server,
)

UID = os.getuid()


class FakeTarget:
    """Records calls; the admin channel is under test, not the proxy."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail: Exception | None = None
        self.delay = 0.0

    async def _call(self, *call: Any) -> dict[str, Any]:
        self.calls.append(call)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return {"call": list(call), "path": Path("/p")}  # a Path: replies must survive non-JSON types

    async def reload(self) -> dict[str, Any]:
        return await self._call("reload")

    async def status(self) -> dict[str, Any]:
        return await self._call("status")

    async def kill_session(self, name: str) -> dict[str, Any]:
        return await self._call("kill_session", name)

    async def block_source(self, address: str, seconds: float | None = None) -> dict[str, Any]:
        return await self._call("block_source", address, seconds)

    async def unblock_source(self, address: str) -> dict[str, Any]:
        return await self._call("unblock_source", address)

    async def failover_drill(self) -> dict[str, Any]:
        return await self._call("failover_drill")


class AuditLog(list[tuple[str, dict[str, Any], str, str]]):
    def __call__(self, operation: str, operator: dict[str, Any], outcome: str, detail: str) -> None:
        self.append((operation, operator, outcome, detail))


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "admin.sock"


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def audit() -> AuditLog:
    return AuditLog()


@pytest.fixture
async def server(sock_path: Path, target: FakeTarget, audit: AuditLog) -> AsyncIterator[AdminServer]:
    srv = await start_admin_server(sock_path, target, [UID], audit)
    yield srv
    srv.close()
    await srv.wait_closed()


def test_fake_target_is_an_admin_target() -> None:
    _: AdminTarget = FakeTarget()  # checked by a type checker; here it at least must construct


async def test_socket_file_mode_0600(server: AdminServer, sock_path: Path) -> None:
    st = sock_path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert [p.name for p in sock_path.parent.iterdir()] == ["admin.sock"]  # the private bind dir is gone


@pytest.mark.parametrize(("op", "args", "call", "detail"), [
    ("reload", {}, ("reload",), "result "),
    ("status", {}, ("status",), "result "),
    ("kill", {"session": "OMS1"}, ("kill_session", "OMS1"), "session=OMS1; result "),
    ("block", {"address": "10.1.2.3", "seconds": 60}, ("block_source", "10.1.2.3", 60.0),
     "address=10.1.2.3 seconds=60.0; result "),
    ("block", {"address": "::0001"}, ("block_source", "::1", None), "address=::1; result "),  # normalised
    ("unblock", {"address": "10.1.2.3"}, ("unblock_source", "10.1.2.3"), "address=10.1.2.3; result "),
    ("drill", {}, ("failover_drill",), "result "),
])
async def test_authorised_operation(server: AdminServer, sock_path: Path, target: FakeTarget, audit: AuditLog,
                                    op: str, args: dict[str, Any], call: tuple[Any, ...], detail: str) -> None:
    reply = await admin_request(sock_path, op, **args)
    assert reply == {"ok": True, "result": {"call": list(call), "path": "/p"}}
    assert target.calls == [call]
    [(operation, operator, outcome, audited)] = audit
    assert (operation, outcome) == (op, "ok")
    assert operator == {"uid": UID, "gid": os.getgid(), "pid": os.getpid(), "user": pwd.getpwuid(UID).pw_name}
    assert audited.startswith(detail + '{"call": '), audited


async def test_uid_not_allowed_is_refused_and_audited(sock_path: Path, target: FakeTarget, audit: AuditLog) -> None:
    async with await start_admin_server(sock_path, target, [UID + 1], audit):
        reply = await admin_request(sock_path, "kill", session="OMS1")
    assert reply == {"ok": False, "error": "not authorised"}
    assert target.calls == []
    [(operation, operator, outcome, detail)] = audit
    assert (operation, outcome) == ("kill", "refused")
    assert operator["uid"] == UID
    assert detail == f"uid {UID} not in allowed_uids"


async def test_refused_peer_cannot_choose_the_audited_operation_name(sock_path: Path, target: FakeTarget,
                                                                      audit: AuditLog) -> None:
    async with await start_admin_server(sock_path, target, [UID + 1], audit):
        reply = await admin_request(sock_path, "x" * 1000)
    assert reply["error"] == "not authorised"
    assert audit[0][0] == "invalid" and audit[0][2] == "refused"


async def test_refused_peer_is_disconnected(sock_path: Path, target: FakeTarget, audit: AuditLog) -> None:
    async with await start_admin_server(sock_path, target, [UID + 1], audit):
        reader, writer = await asyncio.open_unix_connection(str(sock_path))
        writer.write(b'{"op": "status"}\n{"op": "status"}\n')
        assert json.loads(await reader.readline())["error"] == "not authorised"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    assert len(audit) == 1


async def test_unknown_op(server: AdminServer, sock_path: Path, target: FakeTarget, audit: AuditLog) -> None:
    reply = await admin_request(sock_path, "shutdown")
    assert reply["ok"] is False
    assert reply["error"].startswith('unknown op "shutdown"; ops: reload, status, kill, block, unblock, drill')
    assert target.calls == []
    assert [(a[0], a[2]) for a in audit] == [("invalid", "error")]


@pytest.mark.parametrize(("op", "args", "error"), [
    ("kill", {}, "kill needs session"),
    ("kill", {"session": 5}, "session must be a session name"),
    ("block", {"address": "10.0.0.0/8"}, 'address must be an IP address, got "10.0.0.0/8"'),
    ("block", {"address": "10.0.0.1", "seconds": -1}, "seconds must be a number above 0"),
    ("block", {"address": "10.0.0.1", "seconds": True}, "seconds must be a number above 0"),
    ("status", {"verbose": True}, 'status takes no argument "verbose"'),
])
async def test_bad_arguments(server: AdminServer, sock_path: Path, target: FakeTarget, audit: AuditLog,
                             op: str, args: dict[str, Any], error: str) -> None:
    reply = await admin_request(sock_path, op, **args)
    assert reply["ok"] is False and reply["error"].startswith(error), reply
    assert target.calls == []
    assert [(a[0], a[2]) for a in audit] == [(op, "error")]


async def raw_exchange(path: Path, payload: bytes) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(payload)
    writer.write_eof()
    replies = [json.loads(line) for line in (await asyncio.wait_for(reader.read(), 5)).splitlines()]
    writer.close()
    return replies


async def test_malformed_requests(server: AdminServer, sock_path: Path, target: FakeTarget) -> None:
    replies = await raw_exchange(sock_path, b'not json\n[1, 2]\n\n{"op": "status"}\n')
    assert [r["ok"] for r in replies] == [False, False, True]  # the blank line is skipped
    assert replies[0]["error"] == "request is not a JSON object on one line"
    assert target.calls == [("status",)]


async def test_several_requests_on_one_connection(server: AdminServer, sock_path: Path, target: FakeTarget,
                                                   audit: AuditLog) -> None:
    replies = await raw_exchange(sock_path, b'{"op": "status"}\n{"op": "kill", "session": "OMS2"}\n')
    assert [r["ok"] for r in replies] == [True, True]
    assert target.calls == [("status",), ("kill_session", "OMS2")]
    assert [a[0] for a in audit] == ["status", "kill"]


async def test_oversized_request(server: AdminServer, sock_path: Path, target: FakeTarget, audit: AuditLog) -> None:
    replies = await raw_exchange(sock_path, b'{"op": "status", "pad": "' + b"x" * MAX_REQUEST_BYTES + b'"}\n')
    assert replies == [{"ok": False, "error": f"request larger than {MAX_REQUEST_BYTES} bytes"}]
    assert target.calls == []
    assert [(a[0], a[2]) for a in audit] == [("invalid", "error")]


async def test_target_failure_is_reported(server: AdminServer, sock_path: Path, target: FakeTarget,
                                          audit: AuditLog) -> None:
    target.fail = ValueError("proxy.tls.cert: file not found")
    reply = await admin_request(sock_path, "reload")
    assert reply == {"ok": False, "error": "reload failed: proxy.tls.cert: file not found"}
    assert audit[-1][0] == "reload" and audit[-1][2] == "error" and "file not found" in audit[-1][3]
    target.fail = None
    assert (await admin_request(sock_path, "status"))["ok"] is True  # the channel survives


async def test_operation_timeout(sock_path: Path, target: FakeTarget, audit: AuditLog) -> None:
    target.delay = 5.0
    async with await start_admin_server(sock_path, target, [UID], audit, operation_timeout=0.1):
        reply = await admin_request(sock_path, "drill")
    assert reply == {"ok": False, "error": "drill did not finish within 0.1 s"}
    assert audit[-1][2] == "error"


async def test_idle_connection_is_closed(sock_path: Path, target: FakeTarget, audit: AuditLog) -> None:
    async with await start_admin_server(sock_path, target, [UID], audit, request_timeout=0.1):
        reader, writer = await asyncio.open_unix_connection(str(sock_path))
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    assert audit == []


async def test_failing_audit_does_not_break_the_channel(sock_path: Path, target: FakeTarget) -> None:
    def audit(*_: Any) -> None:
        raise RuntimeError("audit sink down")

    async with await start_admin_server(sock_path, target, [UID], audit):
        assert (await admin_request(sock_path, "status"))["ok"] is True


async def test_async_audit_is_awaited(sock_path: Path, target: FakeTarget) -> None:
    seen: list[str] = []

    async def audit(operation: str, operator: dict[str, Any], outcome: str, detail: str) -> None:
        await asyncio.sleep(0)
        seen.append(outcome)

    async with await start_admin_server(sock_path, target, [UID], audit):
        await admin_request(sock_path, "status")
    assert seen == ["ok"]


async def test_close_removes_the_socket(sock_path: Path, target: FakeTarget, audit: AuditLog) -> None:
    srv = await start_admin_server(sock_path, target, [UID], audit)
    srv.close()
    await srv.wait_closed()
    assert not sock_path.exists()
    with pytest.raises(OSError):
        await admin_request(sock_path, "status")


async def test_stale_socket_replaced_live_one_refused(sock_path: Path, target: FakeTarget, audit: AuditLog) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # the file stays, nobody listens: what a killed proxy leaves behind
    async with await start_admin_server(sock_path, target, [UID], audit):
        assert (await admin_request(sock_path, "status"))["ok"] is True
        with pytest.raises(AdminError, match="in use by another process"):
            await start_admin_server(sock_path, target, [UID], audit)
        assert (await admin_request(sock_path, "status"))["ok"] is True  # the first one is untouched


async def test_regular_file_is_not_replaced(sock_path: Path, target: FakeTarget, audit: AuditLog) -> None:
    sock_path.write_text("important")
    with pytest.raises(AdminError, match="exists and is not a socket"):
        await start_admin_server(sock_path, target, [UID], audit)
    assert sock_path.read_text() == "important"


async def test_client_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await admin_request(tmp_path / "nothing.sock", "status")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    path = tmp_path / "silent.sock"
    srv = await asyncio.start_unix_server(silent, str(path))
    async with srv:
        with pytest.raises(AdminError, match="closed the connection without replying"):
            await admin_request(path, "status")


def test_works_on_uvloop(tmp_path: Path) -> None:
    """The proxy runs on uvloop: peer credentials must come through its socket wrapper too."""
    import uvloop

    audit = AuditLog()

    async def scenario() -> dict[str, Any]:
        async with await start_admin_server(tmp_path / "uv.sock", FakeTarget(), [UID], audit):
            return await admin_request(tmp_path / "uv.sock", "status")

    assert uvloop.run(scenario())["ok"] is True
    assert audit[0][1]["uid"] == UID and audit[0][1]["pid"] == os.getpid()
