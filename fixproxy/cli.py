"""The `fixproxy` command.

Every expected failure is one line on stderr, ``fixproxy: <what> (<where>)``, and a non-zero exit:
2 for usage and configuration errors, 1 for runtime failures. No tracebacks for those: an operator
reading a start-up failure in a service log needs the key and the file, not a stack.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .config import ConfigError, ProxyConfig, load_config

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """An expected failure: printed as one line, exits with ``code``."""

    def __init__(self, what: str, where: str | None = None, code: int = EXIT_RUNTIME) -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.code = code


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fail(what: str, where: str | None = None) -> None:
    suffix = f" ({_one_line(where)})" if where else ""
    print(f"fixproxy: {_one_line(what)}{suffix}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the CLI contract), not usage text plus a message."""

    def error(self, message: str) -> NoReturn:
        raise CliError(message, f"see {self.prog} --help", EXIT_USAGE)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _load(path: str) -> ProxyConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(f"{exc.key}: {exc.problem}" if exc.key else exc.problem, exc.file, EXIT_USAGE) from None


def _host_port(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tls_summary(insecure: bool, min_version: str | None) -> str:
    if insecure or min_version is None:
        return "plaintext"
    return {"TLSv1.3": "TLS 1.3", "TLSv1.2": "TLS 1.2+"}.get(min_version, min_version)


def summary(config: ProxyConfig) -> str:
    """The one line `check-config` prints."""
    oms = _tls_summary(config.insecure, config.tls.min_version if config.tls else None)
    up = config.upstream
    ats = _tls_summary(up.insecure, up.tls.min_version if up.tls else None)
    tls = oms if oms == ats else f"OMS leg {oms}, ATS leg {ats}"
    n, k = len(config.sessions), len(up.endpoints)
    return (f"ok: {n} session{'s' if n != 1 else ''}, listen {_host_port(config.listen)}, "
            f"upstream {k} endpoint{'s' if k != 1 else ''}, {tls}")


# -- commands --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .proxy import run as run_proxy  # the heavy imports only for the command that needs them

    try:
        run_proxy(config)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # address in use, TLS files that OpenSSL refuses (ssl.SSLError), ...
        raise CliError(f"cannot run: {exc}", str(config.source_path)) from None
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    print(summary(_load(args.file)))
    return EXIT_OK


def cmd_certs_init(args: argparse.Namespace) -> int:
    from .certs import init_dev_pki

    compids = [*args.compids, *(args.compid or [])]
    try:
        pki = init_dev_pki(args.dir, list(dict.fromkeys(compids)), days=args.days)
    except ValueError as exc:  # a CompID that cannot be a file name or a URI
        raise CliError(str(exc), args.dir, EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot create the PKI: {exc}", args.dir) from None
    for f in dataclasses.fields(pki):
        if f.name != "clients":
            print(f"{f.name}: {getattr(pki, f.name)}")
    for compid, (cert, key) in pki.clients.items():
        print(f"client {compid}: {cert} {key}")
    return EXIT_OK


def cmd_certs_revoke(args: argparse.Namespace) -> int:
    from .certs import CRL, revoke, serial_number

    try:
        revoke(args.dir, args.cert)
        serial = serial_number(args.cert)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot revoke {args.cert}: {exc}", args.dir) from None
    print(f"revoked serial {serial:x} ({args.cert}); CRL {Path(args.dir) / CRL}")
    print("running proxies apply it on reload: fixproxy admin --socket PATH reload")
    return EXIT_OK


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise CliError("the two passwords differ", "stdin", EXIT_USAGE)
        return first
    line = sys.stdin.readline()
    # Only the line ending goes: spaces may be part of a password.
    return line[:-1].removesuffix("\r") if line.endswith("\n") else line


def cmd_hash_password(args: argparse.Namespace) -> int:
    from .policy import hash_password

    password = _read_password()
    if not password:
        raise CliError("empty password", "stdin", EXIT_USAGE)
    if "\x01" in password:
        raise CliError("a FIX Password (554) cannot contain SOH", "stdin", EXIT_USAGE)
    print(hash_password(password, salt=secrets.token_bytes(16)))
    return EXIT_OK


def cmd_admin(args: argparse.Namespace) -> int:
    from .admin import AdminError, admin_request

    if args.socket is not None:
        path = args.socket
    else:
        config = _load(args.config)
        if config.admin is None:
            raise CliError("no [admin] socket in the configuration", str(config.source_path), EXIT_USAGE)
        path = str(config.admin.socket)
    params = {k: getattr(args, k) for k in ("session", "address", "seconds") if getattr(args, k, None) is not None}
    try:
        reply = asyncio.run(admin_request(path, args.op, **params))
    except (OSError, AdminError) as exc:
        raise CliError(f"admin {args.op}: {exc}", path) from None
    print(json.dumps(reply, indent=2))
    if not reply["ok"]:
        _fail(f"admin {args.op}: {reply.get('error')}", path)
        return EXIT_RUNTIME
    return EXIT_OK


def _timestamp(text: str) -> float:
    """--from/--to: seconds since the epoch, or ISO 8601 (UTC unless it names an offset)."""
    from datetime import UTC, datetime

    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an ISO 8601 time or epoch seconds: {text!r}") from None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a time: {text!r}")
    return value


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from .audit import AuditError, verify

    try:
        result = verify(Path(args.dir), Path(args.pubkey) if args.pubkey else None)
    except AuditError as exc:  # an unusable --pubkey
        raise CliError(f"audit verify: {exc}", None, EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"audit verify: cannot read the trail: {exc}", args.dir) from None
    if args.json:  # for programs (the running proxy's periodic verification): the result, whatever it is
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(result)))
        return EXIT_OK if result.ok else EXIT_RUNTIME
    if not result.ok:
        raise CliError(f"audit verify: {result.error_line()}")
    print(result.summary())
    return EXIT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    import time

    from .audit import AuditError, AuditVerifyError, export

    if args.start is not None and args.end is not None and args.end <= args.start:
        raise CliError("audit export: --to must be later than --from", "see fixproxy audit export --help",
                       EXIT_USAGE)
    started = time.perf_counter()
    try:
        n = export(Path(args.dir), Path(args.out), session=args.session, start=args.start, end=args.end,
                   pubkey=Path(args.pubkey) if args.pubkey else None,
                   decrypt_key=Path(args.decrypt_key) if args.decrypt_key else None)
    except AuditVerifyError as exc:
        raise CliError(f"audit export: refused, the trail does not verify: {exc.result.error_line()}") from None
    except AuditError as exc:
        raise CliError(f"audit export: {exc}", args.dir) from None
    except OSError as exc:
        raise CliError(f"audit export: cannot write {args.out}: {exc.strerror or exc}", args.dir) from None
    print(f"exported {n} record{'s' if n != 1 else ''} to {args.out} in {time.perf_counter() - started:.3f} s "
          "(trail verified)")
    return EXIT_OK


def cmd_audit_keygen(args: argparse.Namespace) -> int:
    from .audit import generate_encryption_key, generate_signing_key

    try:
        if args.encryption:
            generate_encryption_key(Path(args.path))
            print(f"encryption key: {args.path} (32 bytes, AES-256-GCM, mode 0600)")
        else:
            pub = generate_signing_key(Path(args.path))
            print(f"signing key: {args.path} (Ed25519, mode 0600)")
            print(f"public key: {pub} (keep a copy off this machine: fixproxy audit verify --pubkey)")
    except FileExistsError as exc:
        raise CliError(f"audit keygen: {exc.filename} already exists (keys are never overwritten)", None,
                       EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"audit keygen: cannot write {exc.filename or args.path}: {exc.strerror or exc}") from None
    return EXIT_OK


def _target(text: str) -> tuple[str, int]:
    """--target HOST:PORT ([v6]:PORT)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import (
        CaptureError,
        ReplayError,
        parse_session,
        read_captures,
        replay_live,
        replay_offline,
        write_json,
    )

    usage = "see fixproxy replay --help"
    live_only = [name for name, value in (("--target", args.target), ("--cert", args.cert), ("--key", args.key),
                                          ("--ca", args.ca), ("--insecure", args.insecure),
                                          ("--speed", args.speed), ("--original-timing", args.original_timing),
                                          ("--renumber", args.renumber),
                                          ("--refresh-sending-time", args.refresh_sending_time)) if value]
    if args.offline:
        if args.config is None:
            raise CliError("replay --offline needs --config FILE (the proxy configuration to check against)",
                           usage, EXIT_USAGE)
        if live_only:
            raise CliError(f"replay --offline sends nothing: {', '.join(live_only)} cannot be used with it",
                           usage, EXIT_USAGE)
    else:
        if args.target is None:
            raise CliError("replay needs --target HOST:PORT (or --offline --config FILE)", usage, EXIT_USAGE)
        if args.config is not None:
            raise CliError("--config is for --offline (a live replay is checked by the proxy itself)", usage,
                           EXIT_USAGE)
        tls_files = [args.cert, args.key, args.ca]
        if args.insecure and any(tls_files):
            raise CliError("--insecure and --cert/--key/--ca cannot be combined", usage, EXIT_USAGE)
        if not args.insecure and not all(tls_files):
            raise CliError("replay needs --cert, --key and --ca for TLS (or --insecure for plaintext)", usage,
                           EXIT_USAGE)
    if args.session is not None:
        try:
            parse_session(args.session)
        except ValueError as exc:
            raise CliError(f"--session: {exc}", usage, EXIT_USAGE) from None
    try:
        messages = read_captures(args.files)
    except CaptureError as exc:
        raise CliError(exc.problem, exc.where, EXIT_USAGE) from None

    def progress(done: int, total: int, rate: float) -> None:
        print(f"fixproxy replay: {done}/{total} {'inspected' if args.offline else 'sent'}, {rate:.0f} msg/s",
              file=sys.stderr, flush=True)

    try:
        if args.offline:
            report: object = replay_offline(messages, _load(args.config), session=args.session, files=args.files,
                                            progress=progress)
        else:
            from . import tls as tlsmod

            ctx = None
            if not args.insecure:
                try:
                    ctx = tlsmod.client_context(args.cert, args.key, args.ca)
                except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                    raise CliError(f"cannot load the TLS files: {exc}", f"--cert {args.cert}", EXIT_USAGE) from None
            host, port = args.target
            speed = 1.0 if args.original_timing else args.speed
            report = replay_live(messages, host, port, ctx, server_hostname=args.server_hostname,
                                 session=args.session, speed=speed, renumber=args.renumber,
                                 refresh_sending_time=args.refresh_sending_time, wait=args.wait,
                                 progress=progress, files=args.files)
    except ReplayError as exc:
        where = ", ".join(args.files) if exc.usage or not args.target else _host_port(args.target)
        raise CliError(str(exc), where, EXIT_USAGE if exc.usage else EXIT_RUNTIME) from None
    print(report.text())  # type: ignore[attr-defined]
    if args.json:
        try:
            write_json(report, args.json)  # type: ignore[arg-type]
        except OSError as exc:
            raise CliError(f"cannot write the JSON report: {exc.strerror or exc}", args.json) from None
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fixproxy", description="Inline FIX-protocol security proxy.")
    p.add_argument("--version", action="version", version=f"fixproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help_text: str,
                parent: argparse._SubParsersAction[argparse.ArgumentParser] = sub) -> argparse.ArgumentParser:
        c = parent.add_parser(name, help=help_text, description=help_text)
        c.set_defaults(func=func)
        return c

    c = command("run", cmd_run, "run the proxy")
    c.add_argument("--config", required=True, metavar="FILE", help="the TOML configuration")
    c.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    c = command("check-config", cmd_check_config, "validate a configuration file and summarise it")
    c.add_argument("file", metavar="FILE")

    certs = sub.add_parser("certs", help="development PKI", description="development PKI (never for production)")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    c = command("init", cmd_certs_init, "create or complete a development PKI", certs_sub)
    c.add_argument("dir", metavar="DIR")
    c.add_argument("compids", nargs="*", default=[], metavar="COMPID", help="client CompIDs (or --compid)")
    c.add_argument("--compid", action="append", metavar="COMPID", help="a client CompID (repeatable)")
    c.add_argument("--days", type=_positive_int, default=365, help="validity of new certificates (365)")
    c = command("revoke", cmd_certs_revoke, "revoke a certificate (adds it to DIR/crl.pem)", certs_sub)
    c.add_argument("dir", metavar="DIR")
    c.add_argument("cert", metavar="CERT")

    command("hash-password", cmd_hash_password,
            "read a password on stdin, print the password_hash for a [[sessions]] table")

    admin = command("admin", cmd_admin, "operate a running proxy over its admin socket")
    where = admin.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="PATH", help="the admin socket")
    where.add_argument("--config", metavar="FILE", help="take the socket from this configuration's [admin]")
    ops = admin.add_subparsers(dest="op", required=True, metavar="OP")
    ops.add_parser("reload", help="re-read the configuration, certificates and CRL")
    ops.add_parser("status", help="links, blocked sources, upstream")
    ops.add_parser("kill", help="close a session's connections").add_argument("session", metavar="SESSION")
    block = ops.add_parser("block", help="refuse a source address")
    block.add_argument("address", metavar="ADDRESS")
    block.add_argument("--seconds", type=_positive_float, help="how long (default: auth.block_seconds)")
    ops.add_parser("unblock", help="lift a block").add_argument("address", metavar="ADDRESS")
    ops.add_parser("drill", help="fail over to the next upstream endpoint")

    audit = sub.add_parser("audit", help="the tamper-evident audit trail",
                           description="verify and export the tamper-evident audit trail, make its keys")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    c = command("verify", cmd_audit_verify, "check a trail: hashes, sequence, chain, checkpoint signatures, HEAD.json "
                "(records after the last checkpoint are reported as unsealed, not as an error)", audit_sub)
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--pubkey", metavar="KEY", help="the Ed25519 public key every checkpoint must be signed with "
                   "(default: the trail's own, which proves consistency but not authorship)")
    c.add_argument("--json", action="store_true", help="print the result as one JSON object (exit status as usual)")
    c = command("export", cmd_audit_export, "verify a trail and write the matching records as JSON lines", audit_sub)
    c.add_argument("dir", metavar="DIR")
    c.add_argument("--out", required=True, metavar="FILE", help="where to write them (mode 0600)")
    c.add_argument("--session", metavar="S", help="only records of this session")
    c.add_argument("--from", dest="start", type=_timestamp, metavar="TIME",
                   help="from this time (ISO 8601, UTC unless an offset is given, or epoch seconds)")
    c.add_argument("--to", dest="end", type=_timestamp, metavar="TIME", help="until this time (excluded)")
    c.add_argument("--pubkey", metavar="KEY", help="as for verify")
    c.add_argument("--decrypt-key", metavar="KEY", help="the [audit] encryption_key: decrypt stored messages")
    c = command("keygen", cmd_audit_keygen, "make an Ed25519 signing key (PATH, mode 0600) and PATH.pub", audit_sub)
    c.add_argument("path", metavar="PATH")
    c.add_argument("--encryption", action="store_true", help="make a 32-byte AES-256 encryption key instead")
    c = command("replay", cmd_replay, "replay captured FIX traffic: live through a proxy as the OMS, or --offline "
                "through the proxy's checks (what would have been refused)")
    c.add_argument("files", nargs="+", metavar="FILE", help="captures: QuickFIX message logs, raw SOH streams, "
                   "text logs with | or ^A separators (format detected per file)")
    c.add_argument("--offline", action="store_true", help="no network: run the capture through the validation and "
                   "policy of --config")
    c.add_argument("--config", metavar="FILE", help="with --offline: the proxy configuration")
    c.add_argument("--target", type=_target, metavar="HOST:PORT", help="the proxy (or any FIX acceptor) to replay to")
    c.add_argument("--cert", metavar="C", help="client certificate (bound to the session's CompIDs)")
    c.add_argument("--key", metavar="K", help="its private key")
    c.add_argument("--ca", metavar="CA", help="the CA the server certificate must chain to")
    c.add_argument("--insecure", action="store_true", help="plaintext, no TLS")
    c.add_argument("--server-hostname", default="localhost", metavar="NAME",
                   help="name the server certificate is checked against (localhost)")
    pace = c.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=_positive_float, metavar="X", help="the captured pace times X")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pacing (the default)")
    pace.add_argument("--original-timing", action="store_true", help="the captured pace (--speed 1)")
    c.add_argument("--renumber", action="store_true", help="renumber MsgSeqNum contiguously from the session's next")
    c.add_argument("--refresh-sending-time", action="store_true", help="rewrite SendingTime (52) and TransactTime "
                   "(60) to now")
    c.add_argument("--session", metavar="SENDER->TARGET", help="the session to replay, SENDER being the initiator "
                   "(OMS) side")
    c.add_argument("--wait", type=_positive_float, default=5.0, metavar="S", help="live: how long to wait for "
                   "outstanding answers after the last message (5)")
    c.add_argument("--json", metavar="OUT", help="also write the summary as JSON to OUT")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except CliError as exc:
        _fail(exc.what, exc.where)
        return exc.code
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except BrokenPipeError:  # `fixproxy admin status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
