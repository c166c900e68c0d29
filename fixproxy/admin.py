"""The admin channel: a Unix socket speaking JSON lines, for the operator on the proxy's host.

One request per line, one reply per line::

    {"op": "kill", "session": "OMS1"}   ->   {"ok": true, "result": {"killed": 1}}
    {"op": "nonsense"}                  ->   {"ok": false, "error": "unknown op \\"nonsense\\"; ..."}

The operator is authenticated by the kernel, not by anything they send: ``SO_PEERCRED`` gives the
uid, gid and pid of the connecting process, and only uids in ``allowed_uids`` may operate. The socket
file is created mode 0600 (bound inside a private directory, then renamed into place, so it is
never reachable with wider permissions, not even for an instant, and no process-wide umask is
touched). Every request, allowed or refused, is reported to the ``audit`` callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import json
import logging
import math
import os
import pwd
import socket
import stat
import struct
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("fixproxy.admin")

MAX_REQUEST_BYTES = 64 * 1024  # an admin request is a few dozen bytes; anything near this is abuse
MAX_REPLY_BYTES = 16 * 1024 * 1024  # status lists every link: allow a large reply on the client side
REQUEST_TIMEOUT = 30.0  # seconds an idle connection may wait before sending its next request
OPERATION_TIMEOUT = 60.0  # seconds an operation (a reload building TLS contexts, say) may take
CLIENT_TIMEOUT = OPERATION_TIMEOUT + 10.0
MAX_BLOCK_SECONDS = 366 * 86400.0

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class AdminTarget(Protocol):
    """What the admin channel operates on: the running proxy (fixproxy.proxy.FixProxy)."""

    async def reload(self) -> dict[str, Any]: ...

    async def status(self) -> dict[str, Any]: ...

    async def kill_session(self, name: str) -> dict[str, Any]: ...

    async def block_source(self, address: str, seconds: float | None = None) -> dict[str, Any]: ...

    async def unblock_source(self, address: str) -> dict[str, Any]: ...

    async def failover_drill(self) -> dict[str, Any]: ...


# audit(operation, operator, outcome, detail); outcome is "ok", "refused" or "error". May be async.
Audit = Callable[[str, dict[str, Any], str, str], object | Awaitable[object]]


class AdminError(Exception):
    """The admin request could not be completed (client side), or the server could not start."""


class _BadRequest(Exception):
    pass


# -- operations: the wire name, the target method, the arguments -----------------------------------


def _arg_session(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise _BadRequest("session must be a session name")
    return value


def _arg_address(value: Any) -> str:
    # Normalised the way the proxy sees peers, so "::0001" blocks the source "::1".
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise _BadRequest(f"address must be an IP address, got {json.dumps(value)[:80]}") from None


def _arg_seconds(value: Any) -> float:
    if (not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
            or not 0 < value <= MAX_BLOCK_SECONDS):
        raise _BadRequest(f"seconds must be a number above 0 and at most {MAX_BLOCK_SECONDS:.0f}")
    return float(value)


@dataclass(frozen=True)
class Operation:
    method: str  # AdminTarget method; called with the arguments present, in this order
    args: Mapping[str, tuple[Callable[[Any], Any], bool]]  # name -> (check, required)


OPERATIONS: dict[str, Operation] = {
    "reload": Operation("reload", {}),
    "status": Operation("status", {}),
    "kill": Operation("kill_session", {"session": (_arg_session, True)}),
    "block": Operation("block_source", {"address": (_arg_address, True), "seconds": (_arg_seconds, False)}),
    "unblock": Operation("unblock_source", {"address": (_arg_address, True)}),
    "drill": Operation("failover_drill", {}),
}


def _parse_request(line: bytes) -> tuple[str, Operation, dict[str, Any]]:
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("request is not a JSON object on one line") from None
    if not isinstance(req, dict):
        raise _BadRequest("request is not a JSON object on one line")
    name = req.pop("op", None)
    op = OPERATIONS.get(name) if isinstance(name, str) else None
    if op is None:
        raise _BadRequest(f"unknown op {json.dumps(name)[:80]}; ops: {', '.join(OPERATIONS)}")
    args: dict[str, Any] = {}
    for arg, (check, required) in op.args.items():
        if arg in req:
            args[arg] = check(req.pop(arg))
        elif required:
            raise _BadRequest(f"{name} needs {arg}")
    if req:
        raise _BadRequest(f"{name} takes no argument {json.dumps(next(iter(req)))[:80]}")
    return name, op, args


def _op_label(line: bytes) -> str:
    """The operation a request names, for the audit record of a refusal or an error. Anything but a
    known op is "invalid": the label ends up in a metric, and must not be the peer's to choose."""
    with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError, TypeError):
        name = json.loads(line).get("op")
        if name in OPERATIONS:
            return str(name)
    return "invalid"


# -- server ----------------------------------------------------------------------------------------


def peer_operator(sock: Any) -> dict[str, Any]:
    """uid, gid, pid (SO_PEERCRED) and user name of the process at the other end of ``sock``.
    Values are None when the kernel cannot say (then nobody is authorised)."""
    try:
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except (OSError, AttributeError, struct.error):
        return {"uid": None, "gid": None, "pid": None, "user": None}
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None  # a uid without a passwd entry (a container, say) is still a uid
    return {"uid": uid, "gid": gid, "pid": pid, "user": user}


class AdminServer:
    """A running admin channel. ``close()`` stops it and removes its socket file."""

    def __init__(self, server: asyncio.AbstractServer, path: Path, inode: tuple[int, int]) -> None:
        self.server = server
        self.path = path
        self._inode = inode  # (st_dev, st_ino) of our socket file, so close() removes only ours

    def close(self) -> None:
        self.server.close()
        with contextlib.suppress(OSError):
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()

    async def __aenter__(self) -> AdminServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


def _clear_stale(path: Path) -> None:
    """A socket file left by a proxy that died is replaced; one that answers, or a file that is not
    a socket, is not ours to remove."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AdminError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return  # stale: the rename in _bind_private replaces it atomically
    except OSError as exc:
        raise AdminError(f"cannot tell whether {path} is in use: {exc}") from None
    finally:
        probe.close()
    raise AdminError(f"{path} is in use by another process (another fixproxy?)")


def _bind_private(path: Path) -> tuple[socket.socket, tuple[int, int]]:
    """Bind a listening socket at ``path`` with mode 0600 from the first instant it is reachable."""
    tmpdir = Path(tempfile.mkdtemp(prefix=".adm", dir=path.parent))  # mode 0700: nobody else gets in
    tmp = tmpdir / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(tmp))
        os.chmod(tmp, 0o600)
        sock.listen(16)
        os.replace(tmp, path)  # a bound socket keeps working under its new name
        st = path.lstat()
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
        with contextlib.suppress(OSError):
            tmpdir.rmdir()
    return sock, (st.st_dev, st.st_ino)


async def start_admin_server(
    path: str | os.PathLike[str],
    target: AdminTarget,
    allowed_uids: frozenset[int] | set[int] | list[int] | tuple[int, ...],
    audit: Audit,
    *,
    request_timeout: float = REQUEST_TIMEOUT,
    operation_timeout: float = OPERATION_TIMEOUT,
) -> AdminServer:
    """Listen on the Unix socket ``path``; raises AdminError or OSError if it cannot."""
    where = Path(path)
    allowed = frozenset(allowed_uids)
    _clear_stale(where)
    sock, inode = _bind_private(where)

    async def report(operation: str, operator: dict[str, Any], outcome: str, detail: str) -> None:
        # The audit trail must not be able to kill the admin channel; a failure is logged loudly.
        try:
            result = audit(operation, operator, outcome, detail)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("admin audit failed for %s by %s (%s)", operation, operator, outcome)

    async def serve_one(line: bytes, operator: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """One request -> (reply, keep the connection open)."""
        if operator["uid"] is None or operator["uid"] not in allowed:
            await report(_op_label(line), operator, "refused", f"uid {operator['uid']} not in allowed_uids")
            return {"ok": False, "error": "not authorised"}, False
        try:
            name, op, args = _parse_request(line)
        except _BadRequest as exc:
            await report(_op_label(line), operator, "error", str(exc))
            return {"ok": False, "error": str(exc)}, True
        shown = " ".join(f"{k}={v}" for k, v in args.items())
        try:
            result = await asyncio.wait_for(getattr(target, op.method)(*args.values()), operation_timeout)
            result_json = json.dumps(result, default=str)  # Paths, enums: as text, never a failed reply
        except TimeoutError:
            problem = f"{name} did not finish within {operation_timeout:g} s"
        except Exception as exc:  # the operation failed: the operator is told why, the proxy runs on
            problem = f"{name} failed: {str(exc) or type(exc).__name__}"
        else:
            await report(name, operator, "ok", f"{shown + '; ' if shown else ''}result {result_json[:300]}")
            return {"ok": True, "result": json.loads(result_json)}, True
        await report(name, operator, "error", f"{shown + '; ' if shown else ''}{problem}")
        return {"ok": False, "error": problem}, True

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        operator = peer_operator(writer.get_extra_info("socket"))
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), request_timeout)
                except TimeoutError:
                    return
                except ValueError:  # past MAX_REQUEST_BYTES without a newline
                    await report("invalid", operator, "refused" if operator["uid"] not in allowed else "error",
                                 f"request larger than {MAX_REQUEST_BYTES} bytes")
                    reply, keep = {"ok": False, "error": f"request larger than {MAX_REQUEST_BYTES} bytes"}, False
                else:
                    if not line.strip():
                        if not line:  # end of file
                            return
                        continue
                    reply, keep = await serve_one(line, operator)
                writer.write(json.dumps(reply).encode() + b"\n")
                await asyncio.wait_for(writer.drain(), request_timeout)
                if not keep:
                    return
        except (ConnectionError, TimeoutError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        server = await asyncio.start_unix_server(handle, sock=sock, limit=MAX_REQUEST_BYTES)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            where.unlink()
        raise
    return AdminServer(server, where, inode)


# -- client ----------------------------------------------------------------------------------------


async def admin_request(path: str | os.PathLike[str], op: str, *, timeout: float = CLIENT_TIMEOUT,
                        **args: Any) -> dict[str, Any]:
    """Send one request, return the reply ({"ok": true, "result": ...} or {"ok": false, "error": ...}).
    Arguments that are None are left out. Raises OSError if the socket cannot be reached and
    AdminError if the reply is missing or malformed."""
    request = {"op": op, **{k: v for k, v in args.items() if v is not None}}
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(os.fspath(path), limit=MAX_REPLY_BYTES), timeout)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        raise AdminError(f"no reply within {timeout:g} s") from None
    except ValueError:
        raise AdminError(f"reply larger than {MAX_REPLY_BYTES} bytes") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if not line:
        raise AdminError("the proxy closed the connection without replying")
    try:
        reply = json.loads(line)
    except ValueError:
        raise AdminError("the reply is not JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise AdminError("the reply is not an admin reply")
    return reply
