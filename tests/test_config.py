"""fixproxy.config: the example loads, and every class of mistake is named by its key."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fixproxy import tls as tlsmod
from fixproxy.certs import DevPki, fingerprint_sha256, init_dev_pki
from fixproxy.codec import Limits
from fixproxy.config import (
    ACTIONABLE_REASONS,
    TLS_VERSIONS,
    ConfigError,
    ProxyConfig,
    load_config,
    parse_config,
    schema_keys,
)
from fixproxy.policy import Action, RateLimit, RejectStyle, SessionPolicy, ValidationMode
from fixproxy.reasons import Reason

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fixproxy.toml"


# -- helpers ---------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(data: dict[str, Any]) -> str:
    """Enough of a TOML writer for these tests: tables, arrays of tables, nested tables inline."""
    out: list[str] = []
    for name, value in data.items():
        if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            for item in value:
                out.append(f"[[{name}]]")
                out += [f"{json.dumps(k)} = {_toml_value(x)}" for k, x in item.items()]
        elif isinstance(value, dict):
            out.append(f"[{name}]")
            out += [f"{json.dumps(k)} = {_toml_value(x)}" for k, x in value.items()]
        else:
            out.insert(0, f"{json.dumps(name)} = {_toml_value(value)}")
    return "\n".join(out) + "\n"


def base(pki: DevPki) -> dict[str, Any]:
    """A valid configuration with two sessions, as a dict to mutate."""
    return {
        "proxy": {
            "listen": "127.0.0.1:0",
            "tls": {"cert": str(pki.proxy_server_cert), "key": str(pki.proxy_server_key),
                    "ca": str(pki.ca_cert), "crl": str(pki.crl)},
        },
        "upstream": {
            "endpoints": ["127.0.0.1:9880", "127.0.0.1:9881"],
            "tls": {"cert": str(pki.proxy_client_cert), "key": str(pki.proxy_client_key), "ca": str(pki.ca_cert),
                    "server_hostname": "localhost"},
        },
        "sessions": [
            {"name": "OMS1", "begin_string": "FIX.4.4", "sender_comp_id": "OMS1", "target_comp_id": "ATS",
             "rate_limit": {"rate": 100.0, "burst": 10, "disconnect_after": 50},
             "identity": {"san_uris": ["fix://compid/OMS1"]}},
            {"name": "OMS2", "begin_string": "FIX.4.2", "sender_comp_id": "OMS2", "target_comp_id": "ATS",
             "identity": {"san_uris": ["fix://compid/OMS2"]}},
        ],
    }


def load(data: dict[str, Any], tmp_path: Path) -> ProxyConfig:
    path = tmp_path / "fixproxy.toml"
    path.write_text(to_toml(data))
    return load_config(path)


def error(data: dict[str, Any], tmp_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(data, tmp_path)
    err = info.value
    assert str(err).startswith(f"{tmp_path / 'fixproxy.toml'}: "), str(err)
    return err


# -- the example -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/fixproxy.toml next to a fresh certs/dev, laid out as in the repository."""
    root = tmp_path_factory.mktemp("repo")
    init_dev_pki(root / "certs" / "dev", ["OMS1", "OMS2"])
    (root / "examples").mkdir()
    shutil.copy(EXAMPLE, root / "examples" / "fixproxy.toml")
    return root / "examples" / "fixproxy.toml"


def test_example_loads(example_copy: Path) -> None:
    cfg = load_config(example_copy)
    here = example_copy.parent
    assert cfg.instance == "demo"
    assert cfg.listen == ("127.0.0.1", 9878)
    assert cfg.upstream.endpoints == [("127.0.0.1", 9880), ("127.0.0.1", 9881)]
    assert cfg.upstream.server_hostname == "localhost"
    assert cfg.tls is not None and cfg.tls.cert == here / "../certs/dev/proxy-server.pem"
    assert cfg.tls.crl is not None and cfg.tls.crl.is_file()
    assert cfg.admin is not None and cfg.admin.socket == here / "fixproxy-admin.sock"
    assert cfg.admin.allowed_uids == frozenset({0})
    assert cfg.events_jsonl == here / "events.jsonl"
    assert cfg.metrics_listen == ("127.0.0.1", 9100)
    assert cfg.source_path == example_copy
    oms1, oms2 = cfg.sessions
    assert oms1.key == ("OMS1", "ATS") and oms2.key == ("OMS2", "ATS")
    assert oms1.allowed_inbound == frozenset({"D", "F", "G", "H"})
    assert oms1.allowed_sources == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert oms1.actions == {Reason.RATE_LIMITED: Action.REFUSE, Reason.INVALID_VALUE: Action.SHADOW}
    assert oms2.reject_style is RejectStyle.EXECUTION_REPORT
    assert oms2.rate_limit == RateLimit(rate=50.0, burst=100, disconnect_after=500)
    assert cfg.bindings["OMS1"].matches(["fix://compid/OMS1"], None, "")
    assert not cfg.bindings["OMS1"].matches(["fix://compid/OMS2"], None, "")


def test_example_shows_every_key() -> None:
    """The example is complete: every key of the schema appears in it (password_hash commented)."""
    text = EXAMPLE.read_text()
    for path in schema_keys():
        leaf = path.rsplit(".", 1)[-1]
        assert re.search(rf"^#? ?{re.escape(leaf)} = ", text, re.M) or f"{leaf} = {{" in text \
            or re.search(rf"[{{,] {re.escape(leaf)} = ", text), f"{path} missing from {EXAMPLE}"


def test_example_values_are_the_defaults_where_it_says_so() -> None:
    """Keys whose example value is documented as the default really are the dataclass defaults."""
    data = tomllib.loads(EXAMPLE.read_text())
    assert Limits(**data["limits"]) == Limits()
    s = data["sessions"][0]
    policy_defaults = SessionPolicy("x", "FIX.4.4", "a", "b")
    for key in ("validation", "max_connections", "reject_style", "sending_time_tolerance", "logon_timeout",
                "idle_factor"):
        assert s[key] == getattr(policy_defaults, key), key
    assert RateLimit(**s["rate_limit"]) == RateLimit()


def test_session_keys_are_the_policy_fields() -> None:
    """A [[sessions]] table's keys are SessionPolicy's fields (plus identity): defined once."""
    keys = {p.split(".")[1] for p in schema_keys() if p.startswith("sessions[]")}
    assert keys == {f.name for f in dataclasses.fields(SessionPolicy)} | {"identity"}
    assert {p.split(".")[1] for p in schema_keys() if p.startswith("limits.")} == \
        {f.name for f in dataclasses.fields(Limits)}


def test_tls_versions_match_the_tls_module() -> None:
    assert set(TLS_VERSIONS) == set(tlsmod._VERSIONS)


# -- values ----------------------------------------------------------------------------------------


def test_defaults_and_conversions(pki: DevPki, tmp_path: Path) -> None:
    cfg = load(base(pki), tmp_path)
    assert cfg.instance == "fixproxy" and cfg.insecure is False
    assert cfg.limits == Limits() and cfg.auth.bruteforce_threshold == 5 and cfg.admin is None
    assert cfg.events_jsonl is None and cfg.metrics_listen is None
    p = cfg.sessions[1]
    assert p.validation is ValidationMode.STRICT and p.allowed_inbound is None and p.actions == {}
    assert p.rate_limit == RateLimit()
    assert cfg.sessions[0].rate_limit == RateLimit(100.0, 10, 50)
    assert cfg.upstream.tls is not None and cfg.upstream.tls.crl is None


def test_relative_paths_resolve_against_the_config_directory(pki: DevPki, tmp_path: Path) -> None:
    shutil.copytree(pki.directory, tmp_path / "pki")
    data = base(pki)
    data["proxy"]["tls"] = {"cert": "pki/proxy-server.pem", "key": "pki/proxy-server.key", "ca": "pki/ca.pem"}
    data["events"] = {"jsonl": "events.jsonl"}
    data["admin"] = {"socket": "admin.sock", "allowed_uids": [0, 1000]}
    elsewhere = tmp_path / "conf"
    elsewhere.mkdir()
    (elsewhere / "pki").symlink_to(tmp_path / "pki")
    path = elsewhere / "fixproxy.toml"
    path.write_text(to_toml(data))
    cfg = load_config(path)
    assert cfg.tls is not None and cfg.tls.cert == elsewhere / "pki" / "proxy-server.pem"
    assert cfg.events_jsonl == elsewhere / "events.jsonl"
    assert cfg.admin is not None and cfg.admin.socket == elsewhere / "admin.sock"
    assert cfg.admin.allowed_uids == frozenset({0, 1000})


def test_insecure_needs_no_tls_and_no_identity(tmp_path: Path) -> None:
    text = """
[proxy]
listen = "[::1]:9878"
insecure = true
[upstream]
endpoints = ["ats.example.com:9880", "[fe80::1]:9881"]
insecure = true
[[sessions]]
name = "OMS1"
begin_string = "FIXT.1.1"
sender_comp_id = "OMS1"
target_comp_id = "ATS"
"""
    cfg = parse_config(text, tmp_path, "inline.toml")
    assert cfg.insecure and cfg.tls is None and cfg.upstream.tls is None
    assert cfg.listen == ("::1", 9878)
    assert cfg.upstream.endpoints == [("ats.example.com", 9880), ("fe80::1", 9881)]
    assert cfg.bindings["OMS1"].san_uris == frozenset()
    assert cfg.source_path == Path("inline.toml")


def test_fingerprints_are_normalised(pki: DevPki, tmp_path: Path) -> None:
    fp = fingerprint_sha256(pki.clients["OMS1"][0])
    colons = ":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper()
    data = base(pki)
    data["sessions"][0]["identity"] = {"fingerprints": [colons], "common_names": ["OMS1"]}
    binding = load(data, tmp_path).bindings["OMS1"]
    assert binding.fingerprints == frozenset({fp})
    assert binding.matches([], None, fp)


def test_password_hash_accepted(pki: DevPki, tmp_path: Path) -> None:
    from fixproxy.policy import check_password, hash_password

    stored = hash_password("s3cret", salt=b"0123456789abcdef")
    data = base(pki)
    data["sessions"][0]["password_hash"] = stored
    assert check_password(load(data, tmp_path).sessions[0].password_hash or "", b"s3cret")


# -- errors: each names its key --------------------------------------------------------------------


def test_toml_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[proxy]\nlisten = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML: .*line 2"):
        load_config(tmp_path / "bad.toml")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file or directory"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(("where", "key", "problem"), [
    (("proxy",), "proxy.listne", r'unknown key \(did you mean "listen"\?\); allowed keys: instance, listen, '),
    (("proxy", "tls"), "proxy.tls.certificate",
     r'unknown key \(did you mean "cert"\?\); allowed keys: cert, key, ca, crl, min_version'),
    (("sessions", 0), "sessions[0].rate_limt", r'unknown key \(did you mean "rate_limit"\?\)'),
    (("sessions", 0, "rate_limit"), "sessions[0].rate_limit.brust", r'did you mean "burst"'),
    (("sessions", 1, "identity"), "sessions[1].identity.san_uri", r'did you mean "san_uris"'),
    ((), "proxies", r'unknown key \(did you mean "proxy"\?\)'),
])
def test_unknown_keys(pki: DevPki, tmp_path: Path, where: tuple[Any, ...], key: str, problem: str) -> None:
    data = base(pki)
    table = data
    for step in where:
        table = table[step]
    table[key.rsplit(".", 1)[-1]] = 1
    err = error(data, tmp_path)
    assert err.key == key
    assert re.search(problem, err.problem), err.problem


def set_key(data: dict[str, Any], path: str, value: Any) -> None:
    """set_key(d, "sessions[1].rate_limit.rate", -5)"""
    steps: list[Any] = []
    for part in path.split("."):
        m = re.fullmatch(r"(\w+)\[(\d+)\]", part)
        steps += [m[1], int(m[2])] if m else [part]
    table: Any = data
    for step in steps[:-1]:
        table = table.setdefault(step, {}) if isinstance(step, str) else table[step]
    table[steps[-1]] = value


@pytest.mark.parametrize(("key", "value", "problem"), [
    # wrong types
    ("proxy.insecure", "no", 'must be true or false, got "no"'),
    ("proxy.handshake_timeout", "5", 'must be a positive number, got "5"'),
    ("proxy.max_connections_per_source", 1.5, "must be a positive integer, got 1.5"),
    ("proxy.write_buffer_limit", True, "must be a positive integer, got true"),
    ("proxy.instance", 7, "must be a string, got 7"),
    ("upstream.endpoints", "127.0.0.1:9880", 'must be an array, got "127.0.0.1:9880"'),
    ("sessions[0].allowed_inbound", "D", 'must be an array, got "D"'),
    ("sessions[0].identity", ["fix://compid/OMS1"], "must be a table, got an array"),
    ("sessions[0].rate_limit", 5, "must be a table, got 5"),
    ("admin.allowed_uids", ["root"], None),
    # out of range
    ("sessions[1].rate_limit.rate", -5, "must be a positive number, got -5"),
    ("sessions[0].rate_limit.burst", 0, "must be a positive integer, got 0"),
    ("sessions[0].sending_time_tolerance", -1, "must be a number, 0 or more, got -1"),
    ("sessions[0].logon_timeout", float("inf"), "must be a positive number, got inf"),
    ("limits.max_message_size", 32, "max_message_size must be at least 64 bytes, got 32"),
    ("limits.max_fields", 0, "must be a positive integer, got 0"),
    # enums list what is allowed
    ("sessions[0].validation", "strictt", 'must be one of "off", "lenient", "strict", got "strictt"'),
    ("sessions[0].reject_style", "reject",
     'must be one of "session_reject", "business_reject", "execution_report", got "reject"'),
    ("sessions[0].begin_string", "FIX.5.0", 'must be one of "FIX.4.2", "FIX.4.4", "FIXT.1.1", got "FIX.5.0"'),
    ("proxy.tls.min_version", "TLSv1.1", 'must be one of "TLSv1.3", "TLSv1.2", got "TLSv1.1"'),
    ("sessions[0].actions.rate_limited", "drop", 'must be one of "refuse", "shadow", "disconnect", got "drop"'),
    ("sessions[0].actions.rate_limitd", "refuse", 'not a reason code \\(did you mean "rate_limited"\\?\\)'),
    ("sessions[0].actions.garbled", "shadow", "always enforced, not configurable"),
    ("sessions[0].actions.audit_unavailable", "shadow", "always enforced, not configurable"),
    # networks and addresses
    ("sessions[0].allowed_sources", ["10.0.0.0/8", "10.0.0.300/8"], None),
    ("sessions[1].allowed_sources", ["10.0.0.1/8"], 'invalid CIDR "10.0.0.1/8": 10.0.0.1/8 has host bits set'),
    ("proxy.listen", "localhost", 'must be "host:port" \\(IPv6 as "\\[::1\\]:port"\\), got "localhost"'),
    ("proxy.listen", "::1:9878", "must be \"host:port\""),
    ("proxy.listen", "127.0.0.1:70000", "port must be 0-65535, got 70000"),
    ("upstream.endpoints", ["127.0.0.1:0"], None),
    ("upstream.endpoints", ["bad host:1"], "must be a host name or an IP address"),
    ("upstream.endpoints", ["[not-v6]:1"], "invalid IPv6 address"),
    ("upstream.endpoints", [], "needs at least 1 entry"),
    ("upstream.endpoints", ["a:1", "b:2", "a:1"], None),
    ("metrics.listen", "127.0.0.1", None),
    ("upstream.tls.server_hostname", "not a host", "must be a host name or an IP address"),
    # names
    ("sessions[0].name", "OMS 1", "must be 1-64 characters A-Z a-z 0-9 . _ -"),
    ("sessions[0].sender_comp_id", "", "must not be empty"),
    ("sessions[0].target_comp_id", "A TS", "printable ASCII characters without spaces"),
    ("sessions[0].allowed_inbound", ["D", "New Order"], None),
    ("sessions[0].identity.fingerprints", ["abcd"], "must be a SHA-256 fingerprint"),
    ("sessions[0].password_hash", "plaintext", 'must be "pbkdf2_sha256\\$<iterations>'),
])
def test_bad_values(pki: DevPki, tmp_path: Path, key: str, value: Any, problem: str | None) -> None:
    data = base(pki)
    if key.startswith("admin."):
        data["admin"] = {"socket": str(tmp_path / "a.sock"), "allowed_uids": [0]}
    set_key(data, key, value)
    err = error(data, tmp_path)
    assert err.key == expected_key(key, value), str(err)
    if problem is not None:
        assert re.search(problem, err.problem), err.problem


def expected_key(key: str, value: Any) -> str:
    """Where the error should point: at the offending entry of an array, not the array."""
    if isinstance(value, list) and value and not key.endswith(".identity"):
        bad = {"sessions[0].allowed_sources": 1, "sessions[0].allowed_inbound": 1,
               "upstream.endpoints": len(value) - 1}.get(key, 0)
        return f"{key}[{bad}]"
    return key


def test_error_message_format(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    data["sessions"][1]["rate_limit"] = {"rate": -5}
    err = error(data, tmp_path)
    assert str(err) == (f"{tmp_path / 'fixproxy.toml'}: sessions[1].rate_limit.rate: must be a positive number, "
                        f'got -5 (session "OMS2")')


def test_enum_lists_allowed_reasons(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    data["sessions"][0]["actions"] = {"ratelimited": "refuse"}
    err = error(data, tmp_path)
    for reason in ACTIONABLE_REASONS:
        assert reason.value in err.problem
    assert "tls_revoked" not in err.problem


@pytest.mark.parametrize(("drop", "key"), [
    (("proxy", "listen"), "proxy.listen"),
    (("proxy",), "proxy"),
    (("upstream",), "upstream"),
    (("upstream", "endpoints"), "upstream.endpoints"),
    (("sessions",), "sessions"),
    (("sessions", 0, "begin_string"), "sessions[0].begin_string"),
    (("sessions", 1, "sender_comp_id"), "sessions[1].sender_comp_id"),
    (("upstream", "tls", "server_hostname"), "upstream.tls.server_hostname"),
    (("proxy", "tls", "ca"), "proxy.tls.ca"),
])
def test_missing_required(pki: DevPki, tmp_path: Path, drop: tuple[Any, ...], key: str) -> None:
    data = base(pki)
    table: Any = data
    for step in drop[:-1]:
        table = table[step]
    del table[drop[-1]]
    err = error(data, tmp_path)
    assert err.key == key
    assert err.problem.startswith("missing")


def test_empty_sessions_array(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    text = "sessions = []\n" + to_toml({k: v for k, v in data.items() if k != "sessions"})
    with pytest.raises(ConfigError, match=r"sessions: at least 1 \[\[sessions\]\] table\(s\) required, got 0"):
        parse_config(text, tmp_path, "x.toml")


def test_tls_required_unless_insecure(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    del data["proxy"]["tls"]
    err = error(data, tmp_path)
    assert (err.key, err.problem) == ("proxy.tls", "missing: required unless proxy.insecure = true")
    data["proxy"]["insecure"] = True
    assert load(data, tmp_path).tls is None

    data = base(pki)
    del data["upstream"]["tls"]
    err = error(data, tmp_path)
    assert (err.key, err.problem) == ("upstream.tls", "missing: required unless upstream.insecure = true")


def test_identity_required_unless_insecure(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    del data["sessions"][1]["identity"]
    err = error(data, tmp_path)
    assert err.key == "sessions[1].identity"
    assert err.problem.startswith("missing: needs at least one of san_uris, common_names, fingerprints")
    data["sessions"][1]["identity"] = {"san_uris": [], "common_names": []}
    err = error(data, tmp_path)
    assert err.key == "sessions[1].identity" and err.problem.startswith("empty")


def test_duplicate_session_name(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    data["sessions"][1]["name"] = "OMS1"
    err = error(data, tmp_path)
    assert err.key == "sessions[1].name"
    assert err.problem == 'duplicate session name "OMS1" (also sessions[0])'


def test_duplicate_compid_pair(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    data["sessions"].append({**copy.deepcopy(data["sessions"][0]), "name": "OMS1b", "begin_string": "FIX.4.2"})
    err = error(data, tmp_path)
    assert err.key == "sessions[2].sender_comp_id"
    assert "duplicate session OMS1 -> ATS (also sessions[0])" in err.problem


def test_missing_tls_file(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    data["proxy"]["tls"]["crl"] = "no-such.pem"
    err = error(data, tmp_path)
    assert err.key == "proxy.tls.crl"
    assert err.problem == f"file not found: {tmp_path / 'no-such.pem'}"


def test_tls_file_is_a_directory(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    data["upstream"]["tls"]["ca"] = str(tmp_path)
    err = error(data, tmp_path)
    assert err.key == "upstream.tls.ca" and err.problem.startswith("is a directory")


@pytest.mark.parametrize("key", ["cert", "ca"])
def test_bad_pem_certificate(pki: DevPki, tmp_path: Path, key: str) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    data = base(pki)
    data["proxy"]["tls"][key] = str(broken)
    err = error(data, tmp_path)
    assert err.key == f"proxy.tls.{key}"
    assert err.problem.startswith(f"{broken} is not a PEM certificate")


def test_key_given_as_certificate(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    data["upstream"]["tls"]["cert"] = str(pki.proxy_client_key)
    err = error(data, tmp_path)
    assert err.key == "upstream.tls.cert" and "is not a PEM certificate" in err.problem


def test_bad_pem_key_and_crl(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    data["proxy"]["tls"]["key"] = str(pki.proxy_server_cert)
    err = error(data, tmp_path)
    assert err.key == "proxy.tls.key" and "is not a PEM private key" in err.problem
    data = base(pki)
    data["proxy"]["tls"]["crl"] = str(pki.ca_cert)
    err = error(data, tmp_path)
    assert err.key == "proxy.tls.crl" and "is not a PEM CRL" in err.problem


def test_encrypted_key_refused(pki: DevPki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.proxy_server_key.read_bytes(), password=None)
    enc = tmp_path / "enc.key"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pass phrase")))
    data = base(pki)
    data["proxy"]["tls"]["key"] = str(enc)
    err = error(data, tmp_path)
    assert err.key == "proxy.tls.key" and "encrypted private key" in err.problem


def test_key_not_matching_certificate(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    data["proxy"]["tls"]["key"] = str(pki.proxy_client_key)
    err = error(data, tmp_path)
    assert err.key == "proxy.tls.key"
    assert err.problem == f"{pki.proxy_client_key} does not belong to the certificate {pki.proxy_server_cert}"


def test_output_directories_must_exist(pki: DevPki, tmp_path: Path) -> None:
    data = base(pki)
    data["events"] = {"jsonl": "missing-dir/events.jsonl"}
    err = error(data, tmp_path)
    assert (err.key, err.problem) == ("events.jsonl", f"directory {tmp_path / 'missing-dir'} does not exist")
    data = base(pki)
    data["admin"] = {"socket": "s" * 120 + ".sock", "allowed_uids": [0]}
    err = error(data, tmp_path)
    assert err.key == "admin.socket" and "too long for a Unix socket" in err.problem
    data["admin"] = {"socket": "admin.sock", "allowed_uids": []}
    err = error(data, tmp_path)
    assert (err.key, err.problem) == ("admin.allowed_uids", "needs at least 1 entry")
