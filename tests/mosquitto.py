"""A real mosquitto broker for tests: a generated config in a temporary directory, a free port on
127.0.0.1, optionally a TLS listener with certificates from a development PKI.

    broker = Mosquitto(tmp_path, pki=pki)   # pki: fixproxy.certs.DevPki, for the TLS listener
    broker.start()                          # returns once both listeners accept connections
    broker.stop()                           # SIGTERM (kill=True: SIGKILL, a crash)
    broker.restart()                        # same ports, so clients reconnect to the same address

`tests/conftest.py` has a session-wide `mosquitto_broker`; tests that stop or restart a broker
start their own instead of disturbing the shared one.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from fixproxy.certs import DevPki

HOST = "127.0.0.1"


def mosquitto_binary() -> str:
    """The broker's path; Debian installs it in /usr/sbin, often not on a user's PATH."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("mosquitto is not installed (`make test` installs it: apt-get install mosquitto)")
    return found


def free_port() -> int:
    """A port nothing listens on right now (the OS's pick; another process could take it before
    the broker binds it, which start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Mosquitto:
    """One mosquitto process. ``port`` is the plaintext listener; ``tls_port`` the TLS one (only
    with ``pki``: server certificate ``ats_server_cert``, which names localhost and 127.0.0.1;
    clients must chain to ``pki.ca_cert``, and present a certificate if ``require_certificate``).

    ``persistence=True`` keeps sessions, subscriptions, queued and retained messages across a
    stop()/restart() (saved at SIGTERM; not at SIGKILL): a subscriber with ``clean_session=False``
    then misses nothing while the broker was down, whoever reconnects first.
    """

    def __init__(self, directory: Path, *, pki: DevPki | None = None, require_certificate: bool = False,
                 persistence: bool = False, startup_timeout: float = 10.0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.require_certificate = require_certificate
        self.persistence = persistence
        self.startup_timeout = startup_timeout
        self.host = HOST
        self.port = 0
        self.tls_port: int | None = None
        self.config_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Mosquitto:
        """Pick free ports, write the config, start, wait until it accepts connections."""
        last: RuntimeError | None = None
        for _ in range(5):  # a port taken between free_port() and the broker's bind: pick again
            self.port = free_port()
            self.tls_port = free_port() if self.pki is not None else None
            self._write_config()
            try:
                self._launch()
                return self
            except RuntimeError as exc:
                last = exc
                if "Address already in use" not in self.log():
                    raise
        assert last is not None
        raise last

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (persistence saved) or, with ``kill``, SIGKILL; waits for the process to exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop if running, then start again on the same ports (and the same persistence file)."""
        self.stop()
        self._launch()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------------

    def _write_config(self) -> None:
        # Running as root, mosquitto would switch to the "mosquitto" user, which cannot read keys in a
        # test's temporary directory: stay who we are.
        lines = [f"user {getpass.getuser()}", "allow_anonymous true"]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.directory}/",
                      "persistence_file mosquitto.db"]
        else:
            lines += ["persistence false"]
        lines += [
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_queued_messages 0",  # no per-client limit: tests count every message
            f"listener {self.port} {HOST}",
        ]
        if self.pki is not None:
            lines += [
                f"listener {self.tls_port} {HOST}",
                f"cafile {self.pki.ca_cert}",
                f"certfile {self.pki.ats_server_cert}",
                f"keyfile {self.pki.ats_server_key}",
                "tls_version tlsv1.2",  # the minimum; TLS 1.3 is negotiated when both sides have it
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _launch(self) -> None:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.config_path)],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        ports = [self.port] + ([self.tls_port] if self.tls_port is not None else [])
        deadline = time.monotonic() + self.startup_timeout
        pending = list(ports)
        while pending:
            if self._proc.poll() is not None:
                self._proc = None
                raise RuntimeError(f"mosquitto exited at start; log {self.log_path}:\n{self.log()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise RuntimeError(f"mosquitto did not listen on {HOST}:{pending} within {self.startup_timeout}s; "
                                   f"log:\n{self.log()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, pending[0]), timeout=0.5):
                pending.pop(0)
                continue
            time.sleep(0.02)
