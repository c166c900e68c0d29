"""The configuration: one TOML file, validated completely before anything starts.

Every key is declared once, in the schema tables below (``PROXY``, ``UPSTREAM``, ``SESSION``, ...),
under the name of the dataclass field it fills: ``[limits]`` and ``rate_limit`` take their keys
straight from :class:`fixproxy.codec.Limits` and :class:`fixproxy.policy.RateLimit`, and a
``[[sessions]]`` table's keys are the fields of :class:`fixproxy.policy.SessionPolicy`. Defaults live
in those dataclasses, not here: an absent key is simply not passed.

Every problem is a :class:`ConfigError` that names the file and the dotted key path
(``sessions[1].rate_limit.rate: must be a positive number, got -5``). Unknown keys are errors too: a
misspelt security setting must never be silently ignored and left at its default. TLS files are
opened and parsed here, so a missing or broken certificate is reported against its key at start
rather than as an OpenSSL error from deep inside the first handshake.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .audit import FSYNC_POLICIES, AuditConfig
from .codec import Limits
from .policy import Action, IdentityBinding, RateLimit, RejectStyle, SessionPolicy, ValidationMode
from .reasons import Category, Reason

# Values fixed by other modules, spelled out here so the error messages can list them.
TLS_VERSIONS = ("TLSv1.3", "TLSv1.2")  # what fixproxy.tls accepts as min_version
BEGIN_STRINGS = ("FIX.4.2", "FIX.4.4", "FIXT.1.1")  # the versions fixproxy has dictionaries for

# The reasons whose handling a session may change (`actions`): the ones the session inspector
# refuses message by message. Framing errors cannot be forwarded (there is no message), TLS, logon
# and transport refusals happen before or outside a session, FLOOD, COMPID_MISMATCH,
# SEQNUM_TOO_LOW and BEFORE_LOGON always close the session, and AUDIT_UNAVAILABLE must fail closed.
# Accepting those would be a setting that silently does nothing; extend this set when the inspector
# routes another reason through its per-session action.
ACTIONABLE_REASONS: frozenset[Reason] = frozenset(
    {r for r in Reason if r.category in (Category.SYNTAX, Category.DICTIONARY)}
    | {Reason.MSGTYPE_NOT_ALLOWED, Reason.RATE_LIMITED, Reason.STALE_SENDING_TIME, Reason.SPOOFING,
       Reason.LEAK_CROSS_SESSION_REF, Reason.LEAK_BLOCKED_DELIVERY}
)

_MAX_TLS_FILE = 10 * 1024 * 1024  # a CA bundle is at most a few hundred KiB; refuse to slurp a disk image
_MAX_UNIX_PATH = 107  # sun_path is 108 bytes on Linux, one of them the terminating NUL
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # ends up in metric labels and admin commands
_COMP_ID = re.compile(r"[!-~]{1,64}")  # printable ASCII, no spaces: anything else is a typo or an attack
_MSG_TYPE = re.compile(r"[0-9A-Za-z]{1,4}")
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")
_ADDRESS = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")


class ConfigError(Exception):
    """A configuration problem: ``str()`` is ``"<file>: <key>: <problem>"``."""

    def __init__(self, file: str, key: str | None, problem: str) -> None:
        self.file = file
        self.key = key  # dotted path (sessions[1].rate_limit.rate); None for file-level problems
        self.problem = problem
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")


# -- the result ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A TLS identity and trust anchor: the keys of [proxy.tls] and [upstream.tls]."""

    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None  # [proxy.tls] only: the CRL client certificates are checked against
    min_version: str = "TLSv1.3"


@dataclass(frozen=True)
class UpstreamConfig:
    """The ATS side: [upstream] (and server_hostname from [upstream.tls])."""

    endpoints: list[tuple[str, int]]  # failover order
    insecure: bool = False
    connect_timeout: float = 5.0
    tls: TlsFiles | None = None
    server_hostname: str | None = None  # the name the ATS certificate is checked against


@dataclass(frozen=True)
class AuthConfig:
    bruteforce_threshold: int = 5  # refused handshakes/logons per source per minute before a block
    block_seconds: float = 300.0


@dataclass(frozen=True)
class AnomalyConfig:
    """Latency anomaly detection: mean + k·sigma for n consecutive reads, after `warmup` reads."""

    k: float = 4.0
    n: int = 5
    warmup: int = 200
    alpha: float = 0.02  # EWMA weight of a new observation
    repeat: int = 1000  # a run that goes on is reported again every `repeat` anomalous reads


@dataclass(frozen=True)
class AdminConfig:
    socket: Path
    allowed_uids: frozenset[int]


@dataclass(frozen=True)
class MqttConfig:
    """[mqtt]: the broker security events and KPIs are published to (fixproxy.mqtt). Its keys are
    these fields."""

    host: str
    port: int = 1883
    tls: bool = False
    ca: Path | None = None  # required with tls: the only CA the broker's certificate may chain to
    cert: Path | None = None  # optional client certificate (with key), for brokers requiring one
    key: Path | None = None
    username: str | None = None
    password: str | None = None
    client_id: str | None = None  # default: fixproxy-<instance>-<random>
    max_buffer: int = 100_000  # events held while the broker is unreachable; beyond: counted, reported
    kpi_interval: float = 5.0  # seconds between KPI snapshots


@dataclass(frozen=True)
class ProxyConfig:
    """Everything `fixproxy run` needs. The [proxy] keys are the fields of the same name."""

    listen: tuple[str, int]
    upstream: UpstreamConfig
    sessions: list[SessionPolicy]
    bindings: dict[str, IdentityBinding]  # session name -> certificates allowed to use it
    source_path: Path  # re-read on reload
    instance: str = "fixproxy"
    insecure: bool = False
    handshake_timeout: float = 5.0
    max_connections_per_source: int = 50
    workers: int = 1  # processes sharing the listening port (fixproxy.workers); 1: this process
    write_buffer_limit: int = 1_048_576
    tls: TlsFiles | None = None
    limits: Limits = field(default_factory=Limits)
    auth: AuthConfig = field(default_factory=AuthConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    admin: AdminConfig | None = None
    events_jsonl: Path | None = None
    metrics_listen: tuple[str, int] | None = None
    mqtt: MqttConfig | None = None
    audit: AuditConfig | None = None  # [audit]: the tamper-evident audit trail (fixproxy.audit)


# -- schema machinery ------------------------------------------------------------------------------


class _Invalid(Exception):
    """A problem at a key path; parse_config turns it into a ConfigError naming the file."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class _Context:
    base_dir: Path  # relative paths are resolved against the config file's directory


Parse = Callable[[Any, str, _Context], Any]
Build = Callable[[dict[str, Any], str, _Context], Any]


@dataclass(frozen=True)
class Value:
    """A plain key: ``parse(value, key_path, context)`` checks and converts it."""

    parse: Parse
    required: bool = False


@dataclass(frozen=True)
class Table:
    """A sub-table (``[proxy.tls]``, or an inline table such as ``rate_limit = {...}``)."""

    keys: Mapping[str, Field]
    required: bool = False
    build: Build | None = None  # turns the checked keys into an object


@dataclass(frozen=True)
class TableArray:
    """An array of tables (``[[sessions]]``)."""

    keys: Mapping[str, Field]
    build: Build
    min_items: int = 0  # more than 0 makes the array required
    label: str | None = None  # key naming an item, quoted in its errors: (session "OMS2")
    noun: str = "item"

    @property
    def required(self) -> bool:
        return self.min_items > 0


Field = Value | Table | TableArray


def _show(value: Any) -> str:
    """A value as the operator wrote it in TOML, shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:76] + '..."'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__} value"  # TOML dates and times


def _quoted(values: Any) -> str:
    return ", ".join(json.dumps(str(v)) for v in values)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _did_you_mean(word: str, choices: Any) -> str:
    options = list(choices)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    # "certificate" for "cert", "allowed_source" for "allowed_sources": too far apart for difflib.
    close = close or [c for c in options if len(c) > 2 and (word.startswith(c) or c.startswith(word))][:1]
    return f" (did you mean {json.dumps(close[0])}?)" if close else ""


def _read_table(keys: Mapping[str, Field], data: Any, path: str, ctx: _Context) -> dict[str, Any]:
    """Check one table against its schema; returns only the keys present (defaults stay with the
    dataclasses)."""
    if not isinstance(data, dict):
        raise _Invalid(path, f"must be a table, got {_show(data)}")
    for name in data:
        if name not in keys:
            raise _Invalid(_join(path, name),
                           f"unknown key{_did_you_mean(name, keys)}; allowed keys: {', '.join(keys)}")
    out: dict[str, Any] = {}
    for name, spec in keys.items():
        where = _join(path, name)
        if name in data:
            out[name] = _read_field(spec, data[name], where, ctx)
        elif spec.required:
            what = {Value: "key", Table: "table", TableArray: f"[[{where}]] table"}[type(spec)]
            raise _Invalid(where, f"missing (a required {what})")
    return out


def _read_field(spec: Field, value: Any, path: str, ctx: _Context) -> Any:
    if isinstance(spec, Value):
        return spec.parse(value, path, ctx)
    if isinstance(spec, Table):
        checked = _read_table(spec.keys, value, path, ctx)
        return spec.build(checked, path, ctx) if spec.build is not None else checked
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _Invalid(path, f"must be an array of tables ([[{path}]]), got {_show(value)}")
    if len(value) < spec.min_items:
        raise _Invalid(path, f"at least {spec.min_items} [[{path}]] table(s) required, got {len(value)}")
    items = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        try:
            items.append(spec.build(_read_table(spec.keys, item, where, ctx), where, ctx))
        except _Invalid as exc:
            label = item.get(spec.label) if spec.label else None
            if isinstance(label, str) and label:
                raise _Invalid(exc.key, f"{exc.problem} ({spec.noun} {json.dumps(label)})") from None
            raise
    return items


def schema_keys(keys: Mapping[str, Field] | None = None, prefix: str = "") -> list[str]:
    """Every key path the schema knows, arrays of tables written ``sessions[]``: for documentation
    and for checking that the example file shows them all."""
    out: list[str] = []
    for name, spec in (keys if keys is not None else SCHEMA).items():
        path = _join(prefix, name)
        if isinstance(spec, Table):
            out += schema_keys(spec.keys, path)
        elif isinstance(spec, TableArray):
            out += schema_keys(spec.keys, path + "[]")
        else:
            out.append(path)
    return out


# -- value parsers ---------------------------------------------------------------------------------


def _string(value: Any, path: str, ctx: _Context) -> str:
    if not isinstance(value, str):
        raise _Invalid(path, f"must be a string, got {_show(value)}")
    if not value:
        raise _Invalid(path, "must not be empty")
    return value


def _bool(value: Any, path: str, ctx: _Context) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(path, f"must be true or false, got {_show(value)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value: Any, path: str, ctx: _Context) -> float:
    if not _is_number(value) or value <= 0:
        raise _Invalid(path, f"must be a positive number, got {_show(value)}")
    return float(value)


def _non_negative_number(value: Any, path: str, ctx: _Context) -> float:
    if not _is_number(value) or value < 0:
        raise _Invalid(path, f"must be a number, 0 or more, got {_show(value)}")
    return float(value)


def _positive_int(value: Any, path: str, ctx: _Context) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _Invalid(path, f"must be a positive integer, got {_show(value)}")
    return value


MAX_WORKERS = 64


def _workers(value: Any, path: str, ctx: _Context) -> int:
    n = _positive_int(value, path, ctx)
    if n > MAX_WORKERS:
        raise _Invalid(path, f"must be at most {MAX_WORKERS}, got {n}")
    return n


def _name(value: Any, path: str, ctx: _Context) -> str:
    text = _string(value, path, ctx)
    if not _NAME.fullmatch(text):
        raise _Invalid(path, f"must be 1-64 characters A-Z a-z 0-9 . _ - (starting with a letter or digit), "
                             f"got {_show(value)}")
    return text


def _comp_id(value: Any, path: str, ctx: _Context) -> str:
    text = _string(value, path, ctx)
    if not _COMP_ID.fullmatch(text):
        raise _Invalid(path, f"must be 1-64 printable ASCII characters without spaces, got {_show(value)}")
    return text


def _choice(allowed: tuple[str, ...]) -> Parse:
    def parse(value: Any, path: str, ctx: _Context) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise _Invalid(path, f"must be one of {_quoted(allowed)}, got {_show(value)}")
        return value

    return parse


def _enum(cls: type[StrEnum]) -> Parse:
    values = {m.value: m for m in cls}

    def parse(value: Any, path: str, ctx: _Context) -> StrEnum:
        if not isinstance(value, str) or value not in values:
            raise _Invalid(path, f"must be one of {_quoted(values)}, got {_show(value)}")
        return values[value]

    return parse


def _list_of(item: Parse, *, min_items: int = 0, unique: bool = False) -> Parse:
    def parse(value: Any, path: str, ctx: _Context) -> list[Any]:
        if not isinstance(value, list):
            raise _Invalid(path, f"must be an array, got {_show(value)}")
        if len(value) < min_items:
            raise _Invalid(path, f"needs at least {min_items} entr{'y' if min_items == 1 else 'ies'}")
        out: list[Any] = []
        for i, v in enumerate(value):
            parsed = item(v, f"{path}[{i}]", ctx)
            if unique and parsed in out:
                raise _Invalid(f"{path}[{i}]", f"duplicate of {path}[{out.index(parsed)}]")
            out.append(parsed)
        return out

    return parse


def _hostname(value: Any, path: str, ctx: _Context) -> str:
    text = _string(value, path, ctx)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if len(text) > 253 or not _HOSTNAME.fullmatch(text):
        raise _Invalid(path, f"must be a host name or an IP address, got {_show(value)}")
    return text


def _address(*, any_port: bool) -> Parse:
    """"host:port" (IPv6 as "[::1]:port") -> (host, port). ``any_port`` allows port 0 (let the OS
    pick: tests) for addresses fixproxy listens on."""
    lowest = 0 if any_port else 1

    def parse(value: Any, path: str, ctx: _Context) -> tuple[str, int]:
        text = _string(value, path, ctx)
        m = _ADDRESS.fullmatch(text)
        if m is None:
            raise _Invalid(path, f'must be "host:port" (IPv6 as "[::1]:port"), got {_show(value)}')
        port = int(m["port"])
        if not lowest <= port <= 65535:
            raise _Invalid(path, f"port must be {lowest}-65535, got {port}")
        if m["v6"] is not None:
            try:
                return str(ipaddress.IPv6Address(m["v6"])), port
            except ValueError:
                raise _Invalid(path, f"invalid IPv6 address in {_show(value)}") from None
        return _hostname(m["host"], path, ctx), port

    return parse


def _network(value: Any, path: str, ctx: _Context) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = _string(value, path, ctx)
    try:
        # strict: "10.0.0.1/8" has host bits set, which is almost always a typo for another prefix.
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise _Invalid(path, f"invalid CIDR {_show(value)}: {exc}") from None


def _msg_types(value: Any, path: str, ctx: _Context) -> frozenset[str]:
    def one(v: Any, where: str, ctx: _Context) -> str:
        if not isinstance(v, str) or not _MSG_TYPE.fullmatch(v):
            raise _Invalid(where, f"must be a FIX MsgType (1-4 letters or digits, e.g. \"D\"), got {_show(v)}")
        return v

    return frozenset(_list_of(one)(value, path, ctx))


def _uid(value: Any, path: str, ctx: _Context) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Invalid(path, f"must be a numeric user id (0 or more), got {_show(value)}")
    return value


def _fingerprint(value: Any, path: str, ctx: _Context) -> str:
    text = _string(value, path, ctx).replace(":", "").lower()
    if not _FINGERPRINT.fullmatch(text):
        raise _Invalid(path, f"must be a SHA-256 fingerprint (64 hex digits, colons allowed), got {_show(value)}")
    return text


def _password_hash(value: Any, path: str, ctx: _Context) -> str:
    # A malformed hash would make every Logon fail (check_password returns False): say so now.
    text = _string(value, path, ctx)
    parts = text.split("$")
    if (len(parts) != 4 or parts[0] != "pbkdf2_sha256" or not parts[1].isdigit() or int(parts[1]) < 1
            or not _HEX.fullmatch(parts[2]) or not _FINGERPRINT.fullmatch(parts[3])):
        raise _Invalid(path, 'must be "pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>" '
                             "(make one with `fixproxy hash-password`)")
    return text


def _actions(value: Any, path: str, ctx: _Context) -> dict[Reason, Action]:
    if not isinstance(value, dict):
        raise _Invalid(path, f"must be a table of reason = action, got {_show(value)}")
    allowed = sorted(r.value for r in ACTIONABLE_REASONS)
    out: dict[Reason, Action] = {}
    for name, action in value.items():
        where = _join(path, name)
        if name not in allowed:
            why = "not a reason code" if name not in {r.value for r in Reason} else "always enforced, not configurable"
            raise _Invalid(where, f"{why}{_did_you_mean(name, allowed)}; configurable reasons: {', '.join(allowed)}")
        out[Reason(name)] = _enum(Action)(action, where, ctx)
    return out


# -- files -----------------------------------------------------------------------------------------


def _path(value: Any, path: str, ctx: _Context) -> Path:
    text = _string(value, path, ctx)
    if "\0" in text:
        raise _Invalid(path, "must not contain a NUL character")
    p = Path(text).expanduser()
    return p if p.is_absolute() else ctx.base_dir / p


def _read_file(p: Path, path: str) -> bytes:
    try:
        with p.open("rb") as f:
            data = f.read(_MAX_TLS_FILE + 1)
    except FileNotFoundError:
        raise _Invalid(path, f"file not found: {p}") from None
    except IsADirectoryError:
        raise _Invalid(path, f"is a directory, not a file: {p}") from None
    except PermissionError:
        raise _Invalid(path, f"permission denied: {p}") from None
    except OSError as exc:
        raise _Invalid(path, f"cannot read {p}: {exc.strerror or exc}") from None
    if len(data) > _MAX_TLS_FILE:
        raise _Invalid(path, f"{p} is larger than {_MAX_TLS_FILE // (1024 * 1024)} MiB: not a PEM file")
    return data


def _certificates(value: Any, path: str, ctx: _Context) -> tuple[Path, list[x509.Certificate]]:
    p = _path(value, path, ctx)
    try:
        certs = x509.load_pem_x509_certificates(_read_file(p, path))
    except ValueError as exc:
        raise _Invalid(path, f"{p} is not a PEM certificate: {exc}") from None
    return p, certs


def _cert_file(value: Any, path: str, ctx: _Context) -> Path:
    return _certificates(value, path, ctx)[0]


def _key_file(value: Any, path: str, ctx: _Context) -> Path:
    p = _path(value, path, ctx)
    data = _read_file(p, path)
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # OpenSSL would prompt for a pass phrase on the terminal (or hang a service): refuse.
        raise _Invalid(path, f"{p} is an encrypted private key; fixproxy needs an unencrypted one") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _Invalid(path, f"{p} is not a PEM private key: {exc}") from None
    return p


def _crl_file(value: Any, path: str, ctx: _Context) -> Path:
    p = _path(value, path, ctx)
    try:
        x509.load_pem_x509_crl(_read_file(p, path))
    except ValueError as exc:
        raise _Invalid(path, f"{p} is not a PEM CRL: {exc}") from None
    return p


def _output_path(value: Any, path: str, ctx: _Context) -> Path:
    """A file fixproxy creates: its directory must exist now, not at the first write."""
    p = _path(value, path, ctx)
    if not p.parent.is_dir():
        raise _Invalid(path, f"directory {p.parent} does not exist")
    if p.is_dir():
        raise _Invalid(path, f"{p} is a directory")
    return p


def _socket_path(value: Any, path: str, ctx: _Context) -> Path:
    p = _output_path(value, path, ctx)
    if len(os.fsencode(p)) > _MAX_UNIX_PATH:
        raise _Invalid(path, f"{p} is too long for a Unix socket ({len(os.fsencode(p))} bytes, at most "
                             f"{_MAX_UNIX_PATH}); use a shorter or relative path")
    return p


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _build_tls(d: dict[str, Any], path: str, ctx: _Context) -> TlsFiles:
    # The private key must belong to the certificate, or every handshake fails.
    cert = x509.load_pem_x509_certificates(d["cert"].read_bytes())[0]
    key = serialization.load_pem_private_key(d["key"].read_bytes(), password=None)
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise _Invalid(_join(path, "key"), f"{d['key']} does not belong to the certificate {d['cert']}")
    return TlsFiles(**{k: v for k, v in d.items() if k != "server_hostname"})


# -- the schema: every key, once -------------------------------------------------------------------

_TLS_COMMON: dict[str, Field] = {
    "cert": Value(_cert_file, required=True),
    "key": Value(_key_file, required=True),
    "ca": Value(lambda v, p, c: _certificates(v, p, c)[0], required=True),
}

PROXY_TLS: dict[str, Field] = {
    **_TLS_COMMON,
    "crl": Value(_crl_file),
    "min_version": Value(_choice(TLS_VERSIONS)),
}

UPSTREAM_TLS: dict[str, Field] = {
    **_TLS_COMMON,
    "server_hostname": Value(_hostname, required=True),
    "min_version": Value(_choice(TLS_VERSIONS)),
}

PROXY: dict[str, Field] = {
    "instance": Value(_name),
    "listen": Value(_address(any_port=True), required=True),
    "insecure": Value(_bool),
    "handshake_timeout": Value(_positive_number),
    "workers": Value(_workers),
    "max_connections_per_source": Value(_positive_int),
    "write_buffer_limit": Value(_positive_int),
    "tls": Table(PROXY_TLS, build=_build_tls),
}

UPSTREAM: dict[str, Field] = {
    "endpoints": Value(_list_of(_address(any_port=False), min_items=1, unique=True), required=True),
    "insecure": Value(_bool),
    "connect_timeout": Value(_positive_number),
    "tls": Table(UPSTREAM_TLS),  # built in _build_upstream: server_hostname goes to UpstreamConfig
}

# Same names and defaults as the dataclasses they fill (their fields are all counts or rates).
_BY_TYPE: dict[str, Parse] = {"int": _positive_int, "float": _positive_number}
LIMITS: dict[str, Field] = {f.name: Value(_BY_TYPE[str(f.type)]) for f in dataclasses.fields(Limits)}
RATE_LIMIT: dict[str, Field] = {f.name: Value(_BY_TYPE[str(f.type)]) for f in dataclasses.fields(RateLimit)}

ANOMALY: dict[str, Field] = {
    "k": Value(_positive_number),
    "n": Value(_positive_int),
    "warmup": Value(_positive_int),
    "alpha": Value(_positive_number),
    "repeat": Value(_positive_int),
}

AUTH: dict[str, Field] = {
    "bruteforce_threshold": Value(_positive_int),
    "block_seconds": Value(_positive_number),
}

ADMIN: dict[str, Field] = {
    "socket": Value(_socket_path, required=True),
    "allowed_uids": Value(_list_of(_uid, min_items=1), required=True),
}

EVENTS: dict[str, Field] = {"jsonl": Value(_output_path)}
METRICS: dict[str, Field] = {"listen": Value(_address(any_port=True))}


def _port(value: Any, path: str, ctx: _Context) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise _Invalid(path, f"must be a port number 1-65535, got {_show(value)}")
    return value


MQTT: dict[str, Field] = {
    "host": Value(_hostname, required=True),
    "port": Value(_port),
    "tls": Value(_bool),
    "ca": Value(lambda v, p, c: _certificates(v, p, c)[0]),
    "cert": Value(_cert_file),
    "key": Value(_key_file),
    "username": Value(_string),
    "password": Value(_string),
    "client_id": Value(_name),
    "max_buffer": Value(_positive_int),
    "kpi_interval": Value(_positive_number),
}


def _build_mqtt(d: dict[str, Any], path: str, ctx: _Context) -> MqttConfig:
    if d.get("tls", False):
        if "ca" not in d:
            raise _Invalid(_join(path, "ca"), "missing: required with tls = true (the CA the broker's certificate "
                                              "must chain to)")
    else:
        # A TLS file given without tls = true would be silently unused: the connection in clear.
        for name in ("ca", "cert", "key"):
            if name in d:
                raise _Invalid(_join(path, name), "only used with tls = true (set tls = true, or remove it)")
    if ("cert" in d) != ("key" in d):
        given, missing = ("cert", "key") if "cert" in d else ("key", "cert")
        raise _Invalid(_join(path, missing), f"missing: {given} and {missing} go together (the client certificate)")
    if "cert" in d:
        cert = x509.load_pem_x509_certificates(d["cert"].read_bytes())[0]
        key = serialization.load_pem_private_key(d["key"].read_bytes(), password=None)
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            raise _Invalid(_join(path, "key"), f"{d['key']} does not belong to the certificate {d['cert']}")
    if "password" in d and "username" not in d:
        raise _Invalid(_join(path, "username"), "missing: password is only sent with a username")
    return MqttConfig(**d)


def _audit_directory(value: Any, path: str, ctx: _Context) -> Path:
    """The trail's directory: created at start if missing, so its parent must exist now."""
    p = _path(value, path, ctx)
    if p.exists() and not p.is_dir():
        raise _Invalid(path, f"{p} is not a directory")
    if not p.exists() and not p.parent.is_dir():
        raise _Invalid(path, f"directory {p.parent} does not exist")
    return p


def _secret_file(p: Path, path: str) -> bytes:
    """A key file only its owner may read: whoever can read the signing key can forge checkpoints."""
    data = _read_file(p, path)
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        raise _Invalid(path, f"{p} is accessible by group or others (mode {mode:04o}): chmod 600 {p}")
    return data


def _signing_key(value: Any, path: str, ctx: _Context) -> Path:
    p = _path(value, path, ctx)
    data = _secret_file(p, path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _Invalid(path, f"{p} is an encrypted private key; fixproxy needs an unencrypted one") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _Invalid(path, f"{p} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise _Invalid(path, f"{p} is not an Ed25519 key (make one with `fixproxy audit keygen PATH`)")
    return p


def _encryption_key(value: Any, path: str, ctx: _Context) -> Path:
    p = _path(value, path, ctx)
    data = _secret_file(p, path)
    if len(data) != 32:
        raise _Invalid(path, f"{p} must hold exactly 32 raw bytes (AES-256), it has {len(data)} "
                             "(make one with `fixproxy audit keygen --encryption PATH`)")
    return p


# The keys of [audit] are AuditConfig's fields (its defaults are AuditTrail's).
AUDIT: dict[str, Field] = {
    "directory": Value(_audit_directory, required=True),
    "signing_key": Value(_signing_key, required=True),
    "checkpoint_every": Value(_positive_int),
    "checkpoint_seconds": Value(_positive_number),
    "fsync": Value(_choice(FSYNC_POLICIES)),
    "encryption_key": Value(_encryption_key),
    "store_messages": Value(_bool),
    "fail_closed": Value(_bool),
    "write_ahead": Value(_bool),
}


def _build_audit(d: dict[str, Any], path: str, ctx: _Context) -> AuditConfig:
    if "encryption_key" in d and not d.get("store_messages", AuditConfig.store_messages):
        # Only stored message bytes are encrypted: without them the key would silently do nothing.
        raise _Invalid(_join(path, "encryption_key"), "only used with store_messages = true (set it, or remove "
                                                      "the key)")
    return AuditConfig(**d)


IDENTITY: dict[str, Field] = {
    "san_uris": Value(_list_of(_string)),
    "common_names": Value(_list_of(_string)),
    "fingerprints": Value(_list_of(_fingerprint)),
}


def _build_rate_limit(d: dict[str, Any], path: str, ctx: _Context) -> RateLimit:
    return RateLimit(**d)


def _build_limits(d: dict[str, Any], path: str, ctx: _Context) -> Limits:
    try:
        return Limits(**d)
    except ValueError as exc:  # Limits' own floor (max_message_size >= 64)
        name = next((n for n in LIMITS if str(exc).startswith(n)), "")
        raise _Invalid(_join(path, name), f"{exc}, got {d.get(name, 'the default')}") from None


# The keys of a [[sessions]] table are SessionPolicy's fields, plus its certificate binding.
SESSION: dict[str, Field] = {
    "name": Value(_name, required=True),
    "begin_string": Value(_choice(BEGIN_STRINGS), required=True),
    "sender_comp_id": Value(_comp_id, required=True),
    "target_comp_id": Value(_comp_id, required=True),
    "validation": Value(_enum(ValidationMode)),
    "allowed_inbound": Value(_msg_types),
    "allowed_outbound": Value(_msg_types),
    "allowed_sources": Value(lambda v, p, c: tuple(_list_of(_network)(v, p, c))),
    "allowed_on_behalf_of": Value(lambda v, p, c: frozenset(_list_of(_comp_id)(v, p, c))),
    "rate_limit": Table(RATE_LIMIT, build=_build_rate_limit),
    "max_connections": Value(_positive_int),
    "password_hash": Value(_password_hash),
    "reject_style": Value(_enum(RejectStyle)),
    "actions": Value(_actions),
    "sending_time_tolerance": Value(_non_negative_number),
    "logon_timeout": Value(_positive_number),
    "idle_factor": Value(_positive_number),
    "identity": Table(IDENTITY),
}


@dataclass(frozen=True)
class _Session:
    policy: SessionPolicy
    identity: dict[str, Any] | None  # None: no [sessions.identity] table


def _build_session(d: dict[str, Any], path: str, ctx: _Context) -> _Session:
    identity = d.pop("identity", None)
    return _Session(SessionPolicy(**d), identity)


SCHEMA: dict[str, Field] = {
    "proxy": Table(PROXY, required=True),
    "upstream": Table(UPSTREAM, required=True),
    "limits": Table(LIMITS, build=_build_limits),
    "auth": Table(AUTH, build=lambda d, p, c: AuthConfig(**d)),
    "anomaly": Table(ANOMALY, build=lambda d, p, c: AnomalyConfig(**d)),
    "admin": Table(ADMIN, build=lambda d, p, c: AdminConfig(d["socket"], frozenset(d["allowed_uids"]))),
    "events": Table(EVENTS),
    "metrics": Table(METRICS),
    "mqtt": Table(MQTT, build=_build_mqtt),
    "audit": Table(AUDIT, build=_build_audit),
    "sessions": TableArray(SESSION, build=_build_session, min_items=1, label="name", noun="session"),
}


# -- cross-key checks and assembly -----------------------------------------------------------------


def _build_upstream(d: dict[str, Any], ctx: _Context) -> UpstreamConfig:
    tls = d.pop("tls", None)
    if tls is None:
        if not d.get("insecure", False):
            raise _Invalid("upstream.tls", "missing: required unless upstream.insecure = true")
        return UpstreamConfig(**d)
    return UpstreamConfig(**d, tls=_build_tls(tls, "upstream.tls", ctx), server_hostname=tls["server_hostname"])


def _bindings(sessions: list[_Session], insecure: bool) -> dict[str, IdentityBinding]:
    out: dict[str, IdentityBinding] = {}
    for i, s in enumerate(sessions):
        ident = s.identity or {}
        binding = IdentityBinding(
            session=s.policy.name,
            san_uris=frozenset(ident.get("san_uris", ())),
            common_names=frozenset(ident.get("common_names", ())),
            fingerprints=frozenset(ident.get("fingerprints", ())),
        )
        if not insecure and not (binding.san_uris or binding.common_names or binding.fingerprints):
            # Without an entry no certificate could ever log on: almost certainly a forgotten table.
            raise _Invalid(f"sessions[{i}].identity",
                           f"{'empty' if s.identity is not None else 'missing'}: needs at least one of san_uris, "
                           f"common_names, fingerprints (which client certificates may use session "
                           f"{json.dumps(s.policy.name)}) unless proxy.insecure = true")
        out[s.policy.name] = binding
    return out


def _check_unique(sessions: list[_Session]) -> None:
    names: dict[str, int] = {}
    pairs: dict[tuple[str, str], int] = {}
    for i, s in enumerate(sessions):
        p = s.policy
        if p.name in names:
            raise _Invalid(f"sessions[{i}].name",
                           f"duplicate session name {json.dumps(p.name)} (also sessions[{names[p.name]}])")
        names[p.name] = i
        if p.key in pairs:
            raise _Invalid(f"sessions[{i}].sender_comp_id",
                           f"duplicate session {p.sender_comp_id} -> {p.target_comp_id} "
                           f"(also sessions[{pairs[p.key]}]): a Logon could not tell them apart")
        pairs[p.key] = i


def _build(d: dict[str, Any], source: Path, ctx: _Context) -> ProxyConfig:
    proxy = d["proxy"]
    insecure = proxy.get("insecure", False)
    if "tls" not in proxy and not insecure:
        raise _Invalid("proxy.tls", "missing: required unless proxy.insecure = true")
    sessions: list[_Session] = d["sessions"]
    _check_unique(sessions)
    admin: AdminConfig | None = d.get("admin")
    events = d.get("events", {})
    metrics = d.get("metrics", {})
    if proxy.get("workers", 1) > 1:
        if proxy["listen"][1] == 0:
            raise _Invalid("proxy.workers", "needs a fixed proxy.listen port (workers share it), not port 0")
        if metrics.get("listen") is not None and metrics["listen"][1] == 0:
            raise _Invalid("proxy.workers", "needs a fixed metrics.listen port (worker i serves port + i), not 0")
    return ProxyConfig(
        **proxy,
        upstream=_build_upstream(d["upstream"], ctx),
        sessions=[s.policy for s in sessions],
        bindings=_bindings(sessions, insecure),
        source_path=source,
        limits=d.get("limits", Limits()),
        auth=d.get("auth", AuthConfig()),
        anomaly=d.get("anomaly", AnomalyConfig()),
        admin=admin,
        events_jsonl=events.get("jsonl"),
        metrics_listen=metrics.get("listen"),
        mqtt=d.get("mqtt"),
        audit=d.get("audit"),
    )


def parse_config(text: str, base_dir: str | os.PathLike[str], source_name: str) -> ProxyConfig:
    """Parse and validate config text. Relative paths are resolved against ``base_dir``;
    ``source_name`` names the file in errors and becomes ``source_path`` (re-read on reload)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source_name, None, f"not valid TOML: {exc}") from None
    ctx = _Context(Path(base_dir).absolute())
    try:
        checked = _read_table(SCHEMA, data, "", ctx)
        return _build(checked, Path(source_name), ctx)
    except _Invalid as exc:
        raise ConfigError(source_name, exc.key, exc.problem) from None


def load_config(path: str | os.PathLike[str]) -> ProxyConfig:
    """Read and validate the config file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), None, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise ConfigError(str(p), None, f"cannot read: {exc.strerror or exc}") from None
    return parse_config(text, p.absolute().parent, str(p))
