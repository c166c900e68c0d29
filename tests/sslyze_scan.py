"""Scan a TLS server with sslyze and print a JSON summary (used by tests/test_tls_posture.py).

Runs in its own virtualenv (``make sslyze-venv`` -> ``.venv-sslyze``), never in the project's:
sslyze pins its own ``cryptography`` range. Not a test module itself (no ``test_`` prefix).

    .venv-sslyze/bin/python tests/sslyze_scan.py HOST PORT --cert C --key K --ca CA --json-out OUT

Two scans of the same server:

* with the client certificate: every scan command Mozilla's configuration checker needs (all
  protocol versions and their cipher suites, curves, compression, renegotiation, fallback SCSV,
  EMS, Heartbleed, CCS injection, ROBOT, certificate info validated against ``--ca``), then the
  checker against the intermediate and the modern profiles;
* without any client certificate: only sslyze's connectivity probe, which reports whether the
  server requires client authentication.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sslyze import (
    CertificateInfoExtraArgument,
    ClientAuthenticationCredentials,
    ScanCommandAttemptStatusEnum,
    ScanCommandsExtraArguments,
    Scanner,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.errors import ConnectionToServerFailed
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)
from sslyze.server_connectivity import check_connectivity_to_server

VERSIONS = [
    ("SSLv2", "ssl_2_0_cipher_suites"),
    ("SSLv3", "ssl_3_0_cipher_suites"),
    ("TLSv1.0", "tls_1_0_cipher_suites"),
    ("TLSv1.1", "tls_1_1_cipher_suites"),
    ("TLSv1.2", "tls_1_2_cipher_suites"),
    ("TLSv1.3", "tls_1_3_cipher_suites"),
]


def _result(attempts: Any, name: str) -> Any:
    attempt = getattr(attempts, name)
    if attempt.status != ScanCommandAttemptStatusEnum.COMPLETED:
        raise RuntimeError(f"{name}: {attempt.status} {attempt.error_reason} {attempt.error_trace}")
    return attempt.result


def scan_with_cert(location: ServerNetworkLocation, cert: Path, key: Path, ca: Path) -> dict[str, Any]:
    network = ServerNetworkConfiguration(
        tls_server_name_indication=location.hostname,
        tls_client_auth_credentials=ClientAuthenticationCredentials(certificate_chain_path=cert, key_path=key),
    )
    request = ServerScanRequest(
        server_location=location,
        network_configuration=network,
        scan_commands=set(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER),
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=ca)
        ),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    (server,) = list(scanner.get_results())
    out: dict[str, Any] = {"scan_status": server.scan_status.value}
    if server.scan_status != ServerScanStatusEnum.COMPLETED:
        out["error"] = str(server.connectivity_error_trace)
        return out
    assert server.connectivity_result is not None and server.scan_result is not None
    out["client_auth_requirement"] = server.connectivity_result.client_auth_requirement.value
    out["highest_tls_version"] = server.connectivity_result.highest_tls_version_supported.name
    r = server.scan_result
    out["versions"] = {}
    for label, field in VERSIONS:
        res = _result(r, field)
        out["versions"][label] = {
            "supported": res.is_tls_version_supported,
            "accepted": sorted(c.cipher_suite.name for c in res.accepted_cipher_suites),
        }
    curves = _result(r, "elliptic_curves")
    out["curves"] = sorted(c.name for c in curves.supported_curves or [])
    out["compression"] = _result(r, "tls_compression").supports_compression
    reneg = _result(r, "session_renegotiation")
    out["secure_renegotiation"] = reneg.supports_secure_renegotiation
    out["client_renegotiation_dos"] = reneg.is_vulnerable_to_client_renegotiation_dos
    out["fallback_scsv"] = _result(r, "tls_fallback_scsv").supports_fallback_scsv
    out["ems"] = _result(r, "tls_extended_master_secret").supports_ems_extension
    out["heartbleed"] = _result(r, "heartbleed").is_vulnerable_to_heartbleed
    out["ccs_injection"] = _result(r, "openssl_ccs_injection").is_vulnerable_to_ccs_injection
    out["robot"] = _result(r, "robot").robot_result.value
    certinfo = _result(r, "certificate_info")
    out["cert_chain_verified"] = [d.verified_certificate_chain is not None for d in certinfo.certificate_deployments]
    out["mozilla"] = {}
    for profile in (TlsConfigurationEnum.MOZILLA_INTERMEDIATE, TlsConfigurationEnum.MOZILLA_MODERN):
        try:
            check_server_against_tls_configuration(server, MozillaTlsConfiguration.get(profile))
            issues: dict[str, str] = {}
        except ServerNotCompliantWithTlsConfiguration as exc:
            issues = exc.issues
        out["mozilla"][profile.value] = issues
    return out


def probe_without_cert(location: ServerNetworkLocation) -> dict[str, Any]:
    network = ServerNetworkConfiguration(tls_server_name_indication=location.hostname)
    try:
        probe = check_connectivity_to_server(location, network)
    except ConnectionToServerFailed as exc:
        return {"connectivity": False, "error": exc.error_message}
    return {"connectivity": True, "client_auth_requirement": probe.client_auth_requirement.value}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--cert", type=Path, required=True)
    ap.add_argument("--key", type=Path, required=True)
    ap.add_argument("--ca", type=Path, required=True)
    ap.add_argument("--json-out", type=Path, required=True)
    a = ap.parse_args()
    location = ServerNetworkLocation(hostname=a.host, port=a.port, ip_address=a.host)
    result = {
        "with_cert": scan_with_cert(location, a.cert, a.key, a.ca),
        "without_cert": probe_without_cert(location),
    }
    a.json_out.write_text(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
