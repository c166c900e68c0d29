"""The `fixproxy` command: exit codes, one-line errors, and each subcommand against real files and
real sockets."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixproxy import __version__
from fixproxy.admin import AdminServer, start_admin_server
from fixproxy.certs import DevPki, init_dev_pki, load_dev_pki, revoked_serials, serial_number
from fixproxy.cli import main
from fixproxy.policy import check_password

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fixproxy.toml"


def run_cli(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The real entry point in a fresh interpreter: what an operator's shell sees."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "fixproxy.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fixproxy: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    init_dev_pki(root / "certs" / "dev", ["OMS1", "OMS2"])
    (root / "examples").mkdir()
    shutil.copy(EXAMPLE, root / "examples" / "fixproxy.toml")
    return root / "examples" / "fixproxy.toml"


# -- check-config ----------------------------------------------------------------------------------


def test_check_config_ok(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(example)]) == 0
    out, err = capsys.readouterr()
    assert out == "ok: 2 sessions, listen 127.0.0.1:9878, upstream 2 endpoints, TLS 1.3\n"
    assert err == ""


def test_check_config_plaintext_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "plain.toml"
    cfg.write_text(insecure_config(tmp_path, listen="[::1]:9878", upstream_insecure=True))
    assert main(["check-config", str(cfg)]) == 0
    assert capsys.readouterr().out == "ok: 1 session, listen [::1]:9878, upstream 1 endpoint, plaintext\n"


def test_check_config_error_is_one_line_exit_2(example: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(example.read_text().replace("../certs/dev", str(example.parent.parent / "certs" / "dev"))
                   .replace("rate = 50.0", "rate = -5"))
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert one_error_line(result.stderr) == (
        f'fixproxy: sessions[1].rate_limit.rate: must be a positive number, got -5 (session "OMS2") ({bad})')


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert one_error_line(capsys.readouterr().err) == \
        f"fixproxy: cannot read: No such file or directory ({tmp_path / 'nope.toml'})"


def test_check_config_toml_syntax(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text('[proxy]\nlisten = "a\nb"\n')
    assert main(["check-config", str(cfg)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("fixproxy: not valid TOML: ") and line.endswith(f"({cfg})")


# -- usage -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["check-config"], ["certs", "init"],
                                  ["certs", "init", "d", "--days", "0"], ["admin", "status"],
                                  ["admin", "--socket", "s", "block", "1.2.3.4", "--seconds", "-1"]])
def test_usage_errors_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "--help)" in one_error_line(err)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"fixproxy {__version__}\n"


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "--help"]) == 0
    assert "reload" in capsys.readouterr().out


# -- hash-password ---------------------------------------------------------------------------------


def test_hash_password_round_trip(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(" pass phrase \n"))
    assert main(["hash-password"]) == 0
    stored = capsys.readouterr().out.strip()
    assert stored.startswith("pbkdf2_sha256$")
    assert check_password(stored, b" pass phrase ")  # spaces kept, the newline not
    assert not check_password(stored, b" pass phrase \n")
    assert not check_password(stored, b"pass phrase")


def test_hash_password_salt_is_random() -> None:
    first, second = (run_cli("hash-password", stdin="same\n") for _ in range(2))
    assert first.returncode == second.returncode == 0
    assert first.stdout != second.stdout
    salt = first.stdout.strip().split("$")[2]
    assert len(bytes.fromhex(salt)) == 16
    assert check_password(first.stdout.strip(), b"same") and check_password(second.stdout.strip(), b"same")


def test_hash_password_in_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("secret"))
    assert main(["hash-password"]) == 0
    stored = capsys.readouterr().out.strip()
    cfg = tmp_path / "c.toml"
    cfg.write_text(insecure_config(tmp_path) + f'password_hash = "{stored}"\n')
    assert main(["check-config", str(cfg)]) == 0


def test_hash_password_empty(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert main(["hash-password"]) == 2
    assert one_error_line(capsys.readouterr().err) == "fixproxy: empty password (stdin)"


# -- certs -----------------------------------------------------------------------------------------


def test_certs_init_creates_the_pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert main(["certs", "init", str(d), "--compid", "OMS1", "--compid", "OMS2", "--days", "30"]) == 0
    out = capsys.readouterr().out
    pki = load_dev_pki(d)
    assert set(pki.clients) == {"OMS1", "OMS2"}
    for path in (pki.ca_cert, pki.crl, pki.proxy_server_cert, pki.proxy_client_key, *pki.clients["OMS2"]):
        assert path.is_file()
        assert str(path) in out
    assert (pki.clients["OMS1"][1].stat().st_mode & 0o777) == 0o600
    # positional CompIDs too (the form certs/README.md shows); existing certificates are kept
    before = serial_number(pki.clients["OMS1"][0])
    assert main(["certs", "init", str(d), "OMS3"]) == 0
    assert set(load_dev_pki(d).clients) == {"OMS1", "OMS2", "OMS3"}
    assert serial_number(pki.clients["OMS1"][0]) == before


def test_certs_init_bad_compid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "init", str(tmp_path / "pki"), "--compid", "../evil"]) == 2
    assert "CompID '../evil' must match" in one_error_line(capsys.readouterr().err)


def test_certs_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    pki: DevPki = init_dev_pki(d, ["OMS1", "OMS2"])
    cert = pki.clients["OMS2"][0]
    assert main(["certs", "revoke", str(d), str(cert)]) == 0
    assert serial_number(cert) in revoked_serials(d)
    assert f"{serial_number(cert):x}" in capsys.readouterr().out
    assert main(["certs", "revoke", str(d), str(tmp_path / "missing.pem")]) == 1
    assert one_error_line(capsys.readouterr().err).endswith(f"({d})")


# -- admin -----------------------------------------------------------------------------------------


class FakeTarget:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def reload(self) -> dict[str, Any]:
        self.calls.append(("reload",))
        return {"sessions": 2, "closed": []}

    async def status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        return {"instance": "test"}

    async def kill_session(self, name: str) -> dict[str, Any]:
        self.calls.append(("kill_session", name))
        return {"killed": 1}

    async def block_source(self, address: str, seconds: float | None = None) -> dict[str, Any]:
        self.calls.append(("block_source", address, seconds))
        return {"blocked": address}

    async def unblock_source(self, address: str) -> dict[str, Any]:
        self.calls.append(("unblock_source", address))
        return {"unblocked": True}

    async def failover_drill(self) -> dict[str, Any]:
        self.calls.append(("failover_drill",))
        return {"active": 1}


class AdminThread:
    """A real admin server on its own loop, so the CLI (which runs its own asyncio.run) can call it."""

    def __init__(self, path: Path, allowed_uids: list[int]) -> None:
        self.path = path
        self.target = FakeTarget()
        self.audit: list[tuple[str, str]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: AdminServer = asyncio.run_coroutine_threadsafe(
            start_admin_server(path, self.target, allowed_uids, lambda op, who, outcome, d: self.audit.append(
                (op, outcome))), self.loop).result(10)

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def admin_server(tmp_path: Path) -> Iterator[AdminThread]:
    srv = AdminThread(tmp_path / "admin.sock", [os.getuid()])
    yield srv
    srv.stop()


@pytest.mark.parametrize(("argv", "call"), [
    (["status"], ("status",)),
    (["reload"], ("reload",)),
    (["kill", "OMS1"], ("kill_session", "OMS1")),
    (["block", "10.0.0.7", "--seconds", "30"], ("block_source", "10.0.0.7", 30.0)),
    (["block", "10.0.0.7"], ("block_source", "10.0.0.7", None)),
    (["unblock", "10.0.0.7"], ("unblock_source", "10.0.0.7")),
    (["drill"], ("failover_drill",)),
])
def test_admin_ok(admin_server: AdminThread, capsys: pytest.CaptureFixture[str], argv: list[str],
                  call: tuple[Any, ...]) -> None:
    assert main(["admin", "--socket", str(admin_server.path), *argv]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["ok"] is True and isinstance(reply["result"], dict)
    assert admin_server.target.calls == [call]
    assert admin_server.audit == [(argv[0], "ok")]


def test_admin_error_reply_exit_1(admin_server: AdminThread, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "--socket", str(admin_server.path), "block", "not-an-ip"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"] is False
    assert one_error_line(err) == (f'fixproxy: admin block: address must be an IP address, got "not-an-ip" '
                                   f"({admin_server.path})")


def test_admin_not_authorised_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    srv = AdminThread(tmp_path / "a.sock", [os.getuid() + 1])
    try:
        assert main(["admin", "--socket", str(srv.path), "kill", "OMS1"]) == 1
    finally:
        srv.stop()
    out, err = capsys.readouterr()
    assert json.loads(out) == {"ok": False, "error": "not authorised"}
    assert one_error_line(err) == f"fixproxy: admin kill: not authorised ({srv.path})"
    assert srv.target.calls == [] and srv.audit == [("kill", "refused")]


def test_admin_unreachable_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "--socket", str(tmp_path / "none.sock"), "status"]) == 1
    assert "No such file or directory" in one_error_line(capsys.readouterr().err)


def test_admin_socket_from_config(admin_server: AdminThread, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(insecure_config(tmp_path, admin=admin_server.path))
    assert main(["admin", "--config", str(cfg), "status"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] == {"instance": "test"}
    cfg.write_text(insecure_config(tmp_path))
    assert main(["admin", "--config", str(cfg), "status"]) == 2
    assert "no [admin] socket" in one_error_line(capsys.readouterr().err)


# -- run -------------------------------------------------------------------------------------------


def insecure_config(tmp_path: Path, *, listen: str = "127.0.0.1:0", admin: Path | None = None,
                    upstream_insecure: bool = True) -> str:
    """A config needing no certificates; the [[sessions]] table is last, so keys can be appended."""
    admin_table = f'[admin]\nsocket = "{admin}"\nallowed_uids = [{os.getuid()}]\n' if admin else ""
    return f"""
[proxy]
instance = "clitest"
listen = "{listen}"
insecure = true
[upstream]
endpoints = ["127.0.0.1:1"]
insecure = {"true" if upstream_insecure else "false"}
{admin_table}
[[sessions]]
name = "OMS1"
begin_string = "FIX.4.4"
sender_comp_id = "OMS1"
target_comp_id = "ATS"
"""


def test_run_bad_config_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(insecure_config(tmp_path).replace('instance = "clitest"', 'instanse = "x"'))
    result = run_cli("run", "--config", str(cfg))
    assert result.returncode == 2
    assert one_error_line(result.stderr) == (
        f'fixproxy: proxy.instanse: unknown key (did you mean "instance"?); allowed keys: instance, listen, '
        f"insecure, handshake_timeout, workers, max_connections_per_source, write_buffer_limit, tls ({cfg})")


def test_run_serves_admin_and_stops_on_sigterm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fixproxy run` end to end: starts, answers on its admin socket, exits 0 on SIGTERM."""
    sock = tmp_path / "admin.sock"
    cfg = tmp_path / "c.toml"
    cfg.write_text(insecure_config(tmp_path, admin=sock))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "fixproxy.cli", "run", "--config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "admin socket never appeared"
            time.sleep(0.05)
        assert main(["admin", "--socket", str(sock), "status"]) == 0
        assert json.loads(capsys.readouterr().out)["result"]["instance"] == "clitest"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "plaintext" in stderr  # the insecure warning is logged at start
    assert not sock.exists()
