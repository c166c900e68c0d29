"""Processes and what the bench reads about them: CPU time of another process, RSS, ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) consumed so far by process ``pid``.

    Read from the process's CPU-time clock (``clock_gettime`` on the clock id Linux derives from the
    pid: ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)``), nanosecond resolution; if that is refused,
    from /proc/<pid>/stat utime + stime (clock ticks, 10 ms).
    """
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9
    except OSError:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / _CLK_TCK


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, grandchildren...), from /proc."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.extend(kids)
        todo.extend(kids)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of its live descendants (fixproxy's workers). A process that ends
    between two readings takes its time with it: the workers and the supervisor live as long as
    the run, so this only matters for short-lived helpers (the audit verifier)."""
    total = 0.0
    for p in (pid, *descendants(pid)):
        try:
            total += cpu_seconds(p)
        except (OSError, ValueError):
            continue
    return total


def tree_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and of its live descendants (fixproxy's workers), in KiB."""
    return sum(rss_kib(p) for p in (pid, *descendants(pid)))


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def loadavg() -> tuple[float, float, float]:
    with open("/proc/loadavg") as f:
        a, b, c = f.read().split()[:3]
    return float(a), float(b), float(c)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


class Child:
    """A subprocess whose stderr is kept (the last lines) for error reports."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=cwd)
        self.pid = self.proc.pid
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._threads = [threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), daemon=True),
                         threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout), daemon=True)]
        for t in self._threads:
            t.start()

    @staticmethod
    def _drain(stream: object, into: list[str]) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            into.append(raw.decode(errors="replace").rstrip())
            if len(into) > 200:
                del into[:100]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, SIGKILL if need be. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for t in self._threads:
            t.join(2)
        return self.proc.returncode

    def tail(self, n: int = 5) -> str:
        return " | ".join(self.stderr[-n:])


def python_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), str(root / "bench"), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def system_binary(name: str) -> str | None:
    """A Debian package's program: on PATH, or in /usr/sbin (not on a non-root PATH), or None."""
    for c in (shutil.which(name), f"/usr/sbin/{name}"):
        if c and os.access(c, os.X_OK):
            return c
    return None


def mosquitto_binary() -> str | None:
    return system_binary("mosquitto")


def start_mosquitto(workdir: Path) -> tuple[Child, int, Path] | None:
    """A private mosquitto on 127.0.0.1 (anonymous, verbose log to a file), or None if absent."""
    binary = mosquitto_binary()
    if binary is None:
        return None
    port = free_port()
    log = workdir / "mosquitto.log"
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"
                    f"log_dest file {log}\nlog_type all\n")
    child = Child("mosquitto", [binary, "-c", str(conf)])
    try:
        wait_port(port, child.proc, 10)
    except Exception:
        child.stop()
        return None
    return child, port, log


def python() -> str:
    return sys.executable
