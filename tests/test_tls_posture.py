"""The listening side's TLS posture, as an outside scanner sees it: sslyze against a running proxy.

sslyze pins its own ``cryptography`` range, so it lives in its own virtualenv, ``.venv-sslyze``
(``make sslyze-venv``, a prerequisite of ``make test``); tests/sslyze_scan.py runs there and
writes a JSON summary that is checked here. Two proxies are scanned, each with a real client
certificate from the dev CA (the proxy requires one) and once more without any:

* ``min_version = "TLSv1.2"``: Mozilla's *intermediate* profile (TLS 1.2 + 1.3, ECDHE + AEAD);
* the default (TLS 1.3 only): nothing below TLS 1.3 is accepted at all.

Scope of the Mozilla check: sslyze's checker also judges the certificate. Path validation is done
against the dev CA (passed to sslyze), so it holds; the checker's other certificate rules (key
type, curve, signature, lifespan <= 366 days) hold for the dev PKI's P-256 leaves. One deviation
is known and tolerated explicitly: extra key-exchange groups (see TOLERATED_EXTRA_CURVES).

The proxy's brute-force guard would block 127.0.0.1 after a few refused handshakes (the scanner
makes dozens on purpose: SSLv2, SSLv3, TLS 1.0/1.1 ...), so the scanned proxies raise its threshold.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixproxy import tls as tlsmod
from fixproxy.certs import DevPki, init_dev_pki
from fixproxy.config import parse_config
from fixproxy.demo import ProxyThread, demo_config_text
from fixproxy.engines import free_port
from fixproxy.reasons import Reason

ROOT = Path(__file__).resolve().parent.parent
SCAN_SCRIPT = Path(__file__).resolve().parent / "sslyze_scan.py"
SSLYZE_PY = Path(os.environ.get("FIXPROXY_SSLYZE_PYTHON", ROOT / ".venv-sslyze" / "bin" / "python"))

# Mozilla intermediate (profile 5.7, what sslyze 6 ships): TLS 1.2 suites allowed by the profile
# that our ECDHE+AEAD string can select (ECDSA certificates: the dev PKI's keys are P-256).
TLS12_EXPECTED = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
}
TLS13_EXPECTED = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
BELOW_12 = ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1")
# Mozilla intermediate allows the key-exchange groups X25519, prime256v1 and secp384r1. The proxy
# leaves OpenSSL's default group list in place (Python 3.11's ssl module can only pin ONE curve,
# with set_ecdh_curve), so sslyze finds X448 and secp521r1 accepted as well: stronger
# curves, but outside the profile. This is the ONLY deviation tolerated below; anything else the
# checker reports fails the test, and the test keeps passing once the group list is restricted.
MOZILLA_CURVES = {"X25519", "secp256r1", "secp384r1"}
TOLERATED_EXTRA_CURVES = {"X448", "secp521r1"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    if not SSLYZE_PY.exists():
        pytest.fail(f"{SSLYZE_PY} missing: run `make sslyze-venv` (or `make test`, which does)")
    return init_dev_pki(tmp_path_factory.mktemp("pki"), ["OMS1"])


def _start(pki: DevPki, workdir: Path, min_version: str | None) -> ProxyThread:
    text = demo_config_text(
        pki,
        listen_port=free_port(),
        upstream_ports=[free_port()],  # nothing listens: no scan connection ever logs on
        workdir=workdir,
        extra="\n[auth]\nbruteforce_threshold = 1000000\n",
    )
    if min_version is not None:
        assert "[proxy.tls]\n" in text
        text = text.replace("[proxy.tls]\n", f'[proxy.tls]\nmin_version = "{min_version}"\n', 1)
    config = parse_config(text, workdir, str(workdir / "fixproxy.toml"))
    return ProxyThread(config).start()


def _scan(pki: DevPki, port: int, out: Path) -> dict[str, Any]:
    cert, key = pki.clients["OMS1"]
    started = time.monotonic()
    proc = subprocess.run(
        [
            str(SSLYZE_PY),
            str(SCAN_SCRIPT),
            "127.0.0.1",
            str(port),
            "--cert",
            str(cert),
            "--key",
            str(key),
            "--ca",
            str(pki.ca_cert),
            "--json-out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, f"sslyze scan failed:\n{proc.stdout}\n{proc.stderr}"
    result: dict[str, Any] = json.loads(out.read_text())
    sys.stderr.write(f"sslyze scan of :{port} took {time.monotonic() - started:.1f} s\n")
    return result


@pytest.fixture(scope="module")
def scans(pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[ProxyThread, Any]]]:
    out: dict[str, tuple[ProxyThread, Any]] = {}
    try:
        for label, min_version in (("tls12", "TLSv1.2"), ("tls13", None)):
            workdir = tmp_path_factory.mktemp(label)
            proxy = _start(pki, workdir, min_version)
            out[label] = (proxy, None)
            out[label] = (proxy, _scan(pki, proxy.config.listen[1], workdir / "sslyze.json"))
        yield out
    finally:
        for proxy, _ in out.values():
            proxy.stop()


def _common(res: dict[str, Any]) -> None:
    w = res["with_cert"]
    assert w["scan_status"] == "COMPLETED", w
    for v in BELOW_12:
        assert not w["versions"][v]["supported"], (v, w["versions"][v])
        assert w["versions"][v]["accepted"] == []
    assert w["versions"]["TLSv1.3"]["supported"]
    assert set(w["versions"]["TLSv1.3"]["accepted"]) == TLS13_EXPECTED
    assert w["compression"] is False
    assert w["secure_renegotiation"] is True  # RFC 5746 indication, i.e. no *insecure* renegotiation
    assert w["client_renegotiation_dos"] is False  # client-initiated renegotiation refused
    assert w["heartbleed"] is False and w["ccs_injection"] is False
    assert w["robot"] == "NOT_VULNERABLE_RSA_NOT_SUPPORTED"  # no RSA key exchange at all
    assert w["cert_chain_verified"] == [True]  # against the dev CA
    # (w["client_auth_requirement"] is "DISABLED": sslyze only probes for client auth when the server
    # asks a client that has no certificate; with one, nothing is "requested" from its point of view.)
    # No certificate, no session: the proxy closes right after the handshake (TLS 1.3: the client
    # finishes first) without flushing its alert, so sslyze's probe, which writes a byte and reads,
    # gets EOF and reports no connectivity rather than "client auth REQUIRED". Either is a refusal.
    wo = res["without_cert"]
    assert (not wo["connectivity"]) or wo["client_auth_requirement"] == "REQUIRED", wo


def _assert_intermediate(w: dict[str, Any]) -> None:
    issues = dict(w["mozilla"]["intermediate"])
    extra = set(w["curves"]) - MOZILLA_CURVES
    assert extra <= TOLERATED_EXTRA_CURVES, extra
    if extra:
        assert "tls_curves" in issues
        issues.pop("tls_curves")
    assert issues == {}, issues


def test_intermediate_profile_with_tls12_enabled(scans: dict[str, tuple[ProxyThread, Any]]) -> None:
    _, res = scans["tls12"]
    _common(res)
    w = res["with_cert"]
    assert w["versions"]["TLSv1.2"]["supported"]
    assert set(w["versions"]["TLSv1.2"]["accepted"]) == TLS12_EXPECTED
    assert w["fallback_scsv"] is True and w["ems"] is True
    _assert_intermediate(w)


def test_default_accepts_nothing_below_tls13(scans: dict[str, tuple[ProxyThread, Any]]) -> None:
    _, res = scans["tls13"]
    _common(res)
    w = res["with_cert"]
    assert not w["versions"]["TLSv1.2"]["supported"] and w["versions"]["TLSv1.2"]["accepted"] == []
    assert w["highest_tls_version"] == "TLS_1_3"
    # A TLS 1.3-only server is a subset of the intermediate profile. (Mozilla *modern* also wants
    # certificates of at most 90 days; the dev PKI issues 365-day ones, so that is not asserted.)
    _assert_intermediate(w)


@pytest.mark.parametrize("label", ["tls12", "tls13"])
def test_no_client_certificate_no_application_data(
    scans: dict[str, tuple[ProxyThread, Any]], pki: DevPki, label: str
) -> None:
    proxy, _ = scans[label]
    port = proxy.config.listen[1]
    ctx = tlsmod.client_context(None, None, pki.ca_cert, min_version="TLSv1.2", check_hostname=False)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                # TLS 1.3: the client finishes its handshake first; the refusal arrives on read.
                s.sendall(b"8=FIX.4.4\x01")
                data = s.recv(1024)
        except (ssl.SSLError, ConnectionError, OSError):
            data = b""
    assert data == b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any(ev.reason is Reason.TLS_NO_CERT for ev in proxy.events()):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("no tls_no_cert refusal recorded")
