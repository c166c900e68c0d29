"""`make demo` is the README's first command: run it as the Makefile does (a relative working
directory, a separate process) and check what it claims."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fixproxy.audit import verify

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end_and_exits_by_itself(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fixproxy.demo", "--workdir", "demo-run", "--orders", "10"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:] + proc.stderr[-2000:]
    assert "fills received: 10" in out
    assert "claiming OMS1: connection closed = True" in out
    assert "resent copy filled = True" in out
    assert "flood of 2000 orders: session closed = True" in out
    for line in ("connection_refused:compid_not_bound = 1", "dropped:bad_checksum = 1",
                 "refused:msgtype_not_allowed = 1", "disconnected:flood = 1"):
        assert line in out, line
    assert verify(tmp_path / "demo-run" / "audit").ok
    assert (tmp_path / "demo-run" / "events.jsonl").stat().st_size > 0
