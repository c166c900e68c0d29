"""fixproxy.tls against real TLS on 127.0.0.1 with real certificates from the dev PKI; no mocks.

The server side accepts the way the proxy must to see handshake failures (see fixproxy.tls):
``loop.sock_accept`` then ``loop.connect_accepted_socket(..., ssl=ctx)``, whose failure is raised
to the caller. Every connection test runs on the stdlib loop and on uvloop. With TLS 1.3 the
client finishes its handshake before the server has checked the client certificate, so a refused
client only notices on its first read: every client here reads the server's greeting.

asyncio (3.11, and uvloop's copy of its SSL protocol) closes the connection on a failed handshake
without flushing the TLS alert, so over asyncio the other side sees only EOF or a reset. The alert
path (what a client sees from a server that does send alerts) is covered with blocking sockets in
a thread at the end of this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from fixproxy.certs import DevPki, fingerprint_sha256, issue_client_cert, revoke
from fixproxy.reasons import Reason
from fixproxy.tls import (
    PeerIdentity,
    classify_handshake_error,
    client_context,
    compids_from_identity,
    peer_identity,
    server_context,
)

GREETING = b"8=FIX.4.4\x01"
TIMEOUT = 5.0


@dataclass
class Outcome:
    """Both ends of one connection attempt."""

    server_error: BaseException | None = None
    client_error: BaseException | None = None
    server_saw: PeerIdentity | None = None  # the client, as the server saw it
    client_saw: PeerIdentity | None = None  # the server, as the client saw it
    version: str | None = None
    cipher: str | None = None
    received: bytes = b""
    client_session_has_ticket: bool | None = None

    @property
    def accepted(self) -> bool:
        return self.server_error is None and self.client_error is None and self.received == GREETING

    @property
    def refused(self) -> bool:
        """The client got an error and not one byte of application data."""
        return self.client_error is not None and self.received == b""

    @property
    def server_reason(self) -> Reason:
        assert self.server_error is not None, "the server accepted the handshake"
        return classify_handshake_error(self.server_error)

    @property
    def client_reason(self) -> Reason:
        assert self.client_error is not None, "the client saw no error"
        return classify_handshake_error(self.client_error)


async def connect(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, *, server_hostname: str = "localhost"
) -> Outcome:
    """One connection attempt: a server accepting as the proxy should, a client reading a greeting."""
    loop = asyncio.get_running_loop()
    out = Outcome()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]

    async def serve() -> None:
        conn, _ = await loop.sock_accept(listener)
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            # The handshake runs before any byte reaches the application, and its failure is
            # raised here: this is what the proxy classifies and counts.
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=server_ctx, ssl_handshake_timeout=TIMEOUT
            )
        except Exception as exc:
            out.server_error = exc
            conn.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            out.server_saw = peer_identity(ssl_object)
            out.version = ssl_object.version()
            out.cipher = ssl_object.cipher()[0]
            writer.write(GREETING)
            await writer.drain()
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await reader.read()  # until the client closes
        finally:
            writer.close()

    server = asyncio.create_task(serve())
    try:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname,
                ssl_handshake_timeout=TIMEOUT,
            )
        except Exception as exc:
            out.client_error = exc
        else:
            ssl_object = writer.get_extra_info("ssl_object")
            out.client_saw = peer_identity(ssl_object)
            try:
                out.received = await asyncio.wait_for(reader.readexactly(len(GREETING)), TIMEOUT)
                session = ssl_object.session
                out.client_session_has_ticket = session is not None and session.has_ticket
            except Exception as exc:
                out.client_error = exc
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await asyncio.wait_for(server, TIMEOUT)
    finally:
        server.cancel()
        listener.close()
    return out


Runner = Callable[[Coroutine[Any, Any, Outcome]], Outcome]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a connection on the stdlib event loop and on uvloop (what the proxy runs on)."""
    if request.param == "uvloop":
        import uvloop
        return uvloop.run  # type: ignore[no-any-return]
    return asyncio.run


# -- contexts used throughout ----------------------------------------------------------------------


def default_server(pki: DevPki, **kwargs: object) -> ssl.SSLContext:
    return server_context(pki.proxy_server_cert, pki.proxy_server_key, pki.ca_cert, **kwargs)  # type: ignore[arg-type]


def oms_client(pki: DevPki, cert: Path | None, key: Path | None, **kwargs: object) -> ssl.SSLContext:
    return client_context(cert, key, pki.ca_cert, **kwargs)  # type: ignore[arg-type]


def tls12_only(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# -- accepted ------------------------------------------------------------------------------------


def test_good_client_cert_gives_identity_and_compids(pki: DevPki, run: Runner) -> None:
    cert, key = pki.clients["OMS1"]
    out = run(connect(default_server(pki), oms_client(pki, cert, key)))
    assert out.accepted, out
    assert out.version == "TLSv1.3"
    ident = out.server_saw
    assert ident is not None
    assert ident.common_name == "OMS1"
    assert ident.san_uris == ("fix://compid/OMS1",)
    assert ident.fingerprint_sha256 == fingerprint_sha256(cert)
    assert "CN=OMS1" in ident.subject
    assert ident.not_after > datetime.now(UTC)
    assert compids_from_identity(ident) == ("OMS1",)
    # The client verified the proxy's certificate, and no session ticket was issued.
    assert out.client_saw is not None
    assert out.client_saw.fingerprint_sha256 == fingerprint_sha256(pki.proxy_server_cert)
    assert out.client_session_has_ticket is False


def test_crl_context_accepts_unrevoked_cert(pki: DevPki, run: Runner) -> None:
    cert, key = pki.clients["OMS2"]
    out = run(connect(default_server(pki, crl=pki.crl), oms_client(pki, cert, key)))
    assert out.accepted, out
    assert out.server_saw is not None and compids_from_identity(out.server_saw) == ("OMS2",)


def test_optional_client_cert_accepts_anonymous_client(pki: DevPki, run: Runner) -> None:
    out = run(connect(default_server(pki, require_client_cert=False), oms_client(pki, None, None)))
    assert out.accepted, out
    assert out.server_saw is None


# -- client certificate refused ------------------------------------------------------------------


def test_no_client_cert(pki: DevPki, run: Runner) -> None:
    out = run(connect(default_server(pki), oms_client(pki, None, None)))
    assert out.refused, out
    assert out.server_reason is Reason.TLS_NO_CERT


def test_client_cert_from_another_ca(pki: DevPki, foreign_pki: DevPki, run: Runner) -> None:
    cert, key = foreign_pki.clients["OMS1"]  # same CompID, same names: only the CA differs
    out = run(connect(default_server(pki), oms_client(pki, cert, key)))
    assert out.refused, out
    assert out.server_reason is Reason.TLS_UNKNOWN_CA


def test_expired_client_cert(pki: DevPki, run: Runner) -> None:
    now = datetime.now(UTC)
    cert, key = issue_client_cert(pki, "OMS1", name="tls-expired", not_before=now - timedelta(days=30),
                                  not_after=now - timedelta(days=1))
    out = run(connect(default_server(pki), oms_client(pki, cert, key)))
    assert out.refused, out
    assert out.server_reason is Reason.TLS_EXPIRED


def test_revoked_client_cert(pki: DevPki, run: Runner) -> None:
    cert, key = issue_client_cert(pki, "OMS1", name="tls-revoked")
    before = run(connect(default_server(pki, crl=pki.crl), oms_client(pki, cert, key)))
    assert before.accepted, before
    revoke(pki, cert)
    # The proxy picks up a new CRL by building a new context.
    out = run(connect(default_server(pki, crl=pki.crl), oms_client(pki, cert, key)))
    assert out.refused, out
    assert out.server_reason is Reason.TLS_REVOKED


def test_client_cert_without_client_auth_eku(pki: DevPki, run: Runner) -> None:
    cert, key = issue_client_cert(pki, "OMS1", name="tls-wrong-purpose", client_auth=False)
    out = run(connect(default_server(pki), oms_client(pki, cert, key)))
    assert out.refused, out
    assert isinstance(out.server_error, ssl.SSLCertVerificationError)
    assert out.server_error.verify_code == 26  # X509_V_ERR_INVALID_PURPOSE
    assert out.server_reason is Reason.TLS_HANDSHAKE_FAILED


def test_lapsed_crl_fails_closed(pki: DevPki, tmp_path: Path, run: Runner) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    now = datetime.now(UTC)
    lapsed = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - timedelta(days=2))
        .next_update(now - timedelta(days=1))
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    crl = tmp_path / "lapsed-crl.pem"
    crl.write_bytes(lapsed.public_bytes(serialization.Encoding.PEM))
    cert, key = pki.clients["OMS1"]
    out = run(connect(default_server(pki, crl=crl), oms_client(pki, cert, key)))
    assert out.refused, out
    assert isinstance(out.server_error, ssl.SSLCertVerificationError)
    assert out.server_error.verify_code == 12  # X509_V_ERR_CRL_HAS_EXPIRED
    assert out.server_reason is Reason.TLS_HANDSHAKE_FAILED


# -- protocol versions and ciphers ---------------------------------------------------------------


def test_tls12_client_refused_by_default_server(pki: DevPki, run: Runner) -> None:
    cert, key = pki.clients["OMS1"]
    client = tls12_only(oms_client(pki, cert, key, min_version="TLSv1.2"))
    out = run(connect(default_server(pki), client))
    assert out.refused, out
    assert out.server_reason is Reason.TLS_PROTOCOL_VERSION  # TLS 1.3 only by default
    assert out.client_error is not None


def test_tls12_server_negotiates_ecdhe_aead(pki: DevPki, run: Runner) -> None:
    cert, key = pki.clients["OMS1"]
    client = tls12_only(oms_client(pki, cert, key, min_version="TLSv1.2"))
    out = run(connect(default_server(pki, min_version="TLSv1.2"), client))
    assert out.accepted, out
    assert out.version == "TLSv1.2"
    assert out.cipher is not None and out.cipher.startswith("ECDHE-")
    assert "GCM" in out.cipher or "CHACHA20" in out.cipher
    assert out.server_saw is not None and compids_from_identity(out.server_saw) == ("OMS1",)


def test_tls12_server_refuses_non_ecdhe_cipher(pki: DevPki, run: Runner) -> None:
    cert, key = pki.clients["OMS1"]
    client = tls12_only(oms_client(pki, cert, key, min_version="TLSv1.2"))
    client.set_ciphers("AES128-GCM-SHA256:AES256-SHA")  # static-key exchange: no forward secrecy
    out = run(connect(default_server(pki, min_version="TLSv1.2"), client))
    assert not out.accepted
    assert out.server_reason is Reason.TLS_HANDSHAKE_FAILED


def test_tls11_client_refused(pki: DevPki, run: Runner) -> None:
    cert, key = pki.clients["OMS1"]
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting TLS 1.1 is deprecated, rightly
        client.minimum_version = ssl.TLSVersion.TLSv1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("DEFAULT:@SECLEVEL=0")  # so the client really offers TLS 1.1 on the wire
    client.load_verify_locations(pki.ca_cert)
    client.load_cert_chain(cert, key)
    out = run(connect(default_server(pki, min_version="TLSv1.2"), client))
    assert out.refused, out
    assert out.server_reason is Reason.TLS_PROTOCOL_VERSION


# -- the client verifies the server --------------------------------------------------------------


def test_client_refuses_server_from_another_ca(pki: DevPki, foreign_pki: DevPki, run: Runner) -> None:
    server = server_context(foreign_pki.ats_server_cert, foreign_pki.ats_server_key, foreign_pki.ca_cert,
                            require_client_cert=False)
    proxy_as_client = client_context(pki.proxy_client_cert, pki.proxy_client_key, pki.ca_cert)
    out = run(connect(server, proxy_as_client))
    assert out.refused, out
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)
    assert out.client_reason is Reason.TLS_UNKNOWN_CA
    assert out.server_error is not None  # asyncio sends no alert: the server sees only the reset


def test_client_checks_server_hostname(pki: DevPki, run: Runner) -> None:
    server = server_context(pki.ats_server_cert, pki.ats_server_key, pki.ca_cert)
    checked = client_context(pki.proxy_client_cert, pki.proxy_client_key, pki.ca_cert)
    out = run(connect(server, checked, server_hostname="ats.example.net"))
    assert not out.accepted
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)
    assert out.client_reason is Reason.TLS_HANDSHAKE_FAILED

    unchecked = client_context(pki.proxy_client_cert, pki.proxy_client_key, pki.ca_cert, check_hostname=False)
    out = run(connect(server, unchecked, server_hostname="ats.example.net"))
    assert out.accepted, out
    assert out.server_saw is not None and out.server_saw.san_uris == ("fix://proxy/fixproxy",)
    assert compids_from_identity(out.server_saw) == ()


def test_unchecked_hostname_still_verifies_chain(pki: DevPki, foreign_pki: DevPki, run: Runner) -> None:
    server = server_context(foreign_pki.ats_server_cert, foreign_pki.ats_server_key, foreign_pki.ca_cert,
                            require_client_cert=False)
    client = client_context(pki.proxy_client_cert, pki.proxy_client_key, pki.ca_cert, check_hostname=False)
    out = run(connect(server, client))
    assert not out.accepted
    assert out.client_reason is Reason.TLS_UNKNOWN_CA


# -- posture of the contexts themselves ----------------------------------------------------------


def test_context_posture(pki: DevPki) -> None:
    cert, key = pki.clients["OMS1"]
    contexts = [default_server(pki, crl=pki.crl), oms_client(pki, cert, key)]
    for ctx in contexts:
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
        assert ctx.maximum_version is ssl.TLSVersion.TLSv1_3
        for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_NO_TICKET):
            assert ctx.options & flag
        assert ctx.verify_mode is ssl.CERT_REQUIRED
        assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
        # The private CA and nothing else in the trust store.
        assert ctx.cert_store_stats()["x509_ca"] == 1
        assert len(ctx.get_ca_certs()) == 1
        tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12 and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n) for n in tls12)
    server = contexts[0]
    assert server.num_tickets == 0
    assert server.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert server.cert_store_stats()["crl"] == 1
    assert contexts[1].check_hostname
    assert default_server(pki).verify_flags & ssl.VERIFY_CRL_CHECK_LEAF == 0
    assert default_server(pki, require_client_cert=False).verify_mode is ssl.CERT_OPTIONAL
    unchecked = oms_client(pki, cert, key, check_hostname=False)
    assert not unchecked.check_hostname and unchecked.verify_mode is ssl.CERT_REQUIRED
    assert default_server(pki, min_version="TLSv1.2").minimum_version is ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("version", ["TLSv1.1", "TLSv1", "SSLv3", "tls1.3", ""])
def test_only_tls12_and_tls13_can_be_asked_for(pki: DevPki, version: str) -> None:
    with pytest.raises(ValueError, match="min_version"):
        default_server(pki, min_version=version)
    with pytest.raises(ValueError, match="min_version"):
        oms_client(pki, None, None, min_version=version)


# -- pure functions ------------------------------------------------------------------------------


def identity(*uris: str) -> PeerIdentity:
    return PeerIdentity(subject="CN=x", common_name="x", san_uris=uris, fingerprint_sha256="00" * 32,
                        not_after=datetime.now(UTC), serial=1)


def test_compids_from_identity() -> None:
    assert compids_from_identity(identity()) == ()
    assert compids_from_identity(identity("fix://compid/OMS1")) == ("OMS1",)
    assert compids_from_identity(
        identity("fix://compid/OMS1", "FIX://CompID/OMS2", "fix://compid/OMS1", "fix://admin/operator")
    ) == ("OMS1", "OMS2")
    # Anything that is not exactly fix://compid/<X> binds nothing.
    for uri in ("fix://compid/", "fix://compid", "fix://compid/A/B", "fix://compid/A?x=1", "fix://compid/A#f",
                "fix://compid/A?", "fix://user@compid/A", "fix://compid:99/A", "https://compid/A",
                "fix://proxy/fixproxy", "fix:compid/A", "fix:///compid/A"):
        assert compids_from_identity(identity(uri)) == (), uri


def test_classify_plain_errors() -> None:
    assert classify_handshake_error(TimeoutError()) is Reason.HANDSHAKE_TIMEOUT
    assert classify_handshake_error(ConnectionResetError()) is Reason.TLS_HANDSHAKE_FAILED
    assert classify_handshake_error(asyncio.IncompleteReadError(b"", 1)) is Reason.TLS_HANDSHAKE_FAILED
    assert classify_handshake_error(ssl.SSLError("something else")) is Reason.TLS_HANDSHAKE_FAILED
    assert classify_handshake_error(ssl.SSLError(1, "[SSL] peer did not return a certificate")) \
        is Reason.TLS_NO_CERT


def test_classify_looks_through_wrappers() -> None:
    inner = ssl.SSLCertVerificationError(1, "certificate verify failed: certificate has expired")
    inner.verify_code = 10
    try:
        try:
            raise inner
        except ssl.SSLError as exc:
            raise ConnectionError("handshake with OMS1 failed") from exc
    except ConnectionError as outer:
        assert classify_handshake_error(outer) is Reason.TLS_EXPIRED


# -- alerts, with blocking sockets (OpenSSL sends the alert before closing) ---------------------


def connect_blocking(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> Outcome:
    out = Outcome()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        try:
            tls = server_ctx.wrap_socket(conn, server_side=True)
        except Exception as exc:
            out.server_error = exc
            conn.close()
            return
        with tls:
            out.server_saw = peer_identity(tls)
            tls.sendall(GREETING)
            with contextlib.suppress(OSError):
                tls.recv(1)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            try:
                with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                    while len(out.received) < len(GREETING):
                        chunk = tls.recv(len(GREETING) - len(out.received))
                        if not chunk:
                            break
                        out.received += chunk
            except Exception as exc:
                out.client_error = exc
    finally:
        thread.join(TIMEOUT)
        listener.close()
    return out


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_no_session_resumption(pki: DevPki, version: str) -> None:
    server = default_server(pki, min_version="TLSv1.2")
    client = oms_client(pki, *pki.clients["OMS1"], min_version="TLSv1.2")
    client.maximum_version = ssl.TLSVersion[version.replace(".", "_")]
    sessions: list[ssl.SSLSession | None] = [None]
    for attempt in range(2):
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(TIMEOUT)

        def serve(listener: socket.socket = listener) -> None:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(GREETING)
                with contextlib.suppress(OSError):
                    tls.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as raw, \
                client.wrap_socket(raw, server_hostname="localhost", session=sessions[-1]) as tls:
            assert tls.recv(len(GREETING)) == GREETING
            assert tls.version() == version
            assert not tls.session_reused, f"attempt {attempt} resumed a session"
            sessions.append(tls.session)
        thread.join(TIMEOUT)
        listener.close()


def _no_cert(pki: DevPki, foreign: DevPki) -> tuple[Path | None, Path | None]:
    return None, None


def _foreign(pki: DevPki, foreign: DevPki) -> tuple[Path | None, Path | None]:
    return foreign.clients["OMS1"]


def _expired(pki: DevPki, foreign: DevPki) -> tuple[Path | None, Path | None]:
    now = datetime.now(UTC)
    return issue_client_cert(pki, "OMS2", name="alert-expired", not_before=now - timedelta(days=2),
                             not_after=now - timedelta(hours=1))


def _revoked(pki: DevPki, foreign: DevPki) -> tuple[Path | None, Path | None]:
    cert, key = issue_client_cert(pki, "OMS2", name="alert-revoked")
    revoke(pki, cert)
    return cert, key


@pytest.mark.parametrize(
    ("make_cert", "reason"),
    [(_no_cert, Reason.TLS_NO_CERT), (_foreign, Reason.TLS_UNKNOWN_CA), (_expired, Reason.TLS_EXPIRED),
     (_revoked, Reason.TLS_REVOKED)],
    ids=["no-cert", "unknown-ca", "expired", "revoked"],
)
def test_refused_client_classifies_the_alert(
    pki: DevPki,
    foreign_pki: DevPki,
    make_cert: Callable[[DevPki, DevPki], tuple[Path | None, Path | None]],
    reason: Reason,
) -> None:
    cert, key = make_cert(pki, foreign_pki)
    out = connect_blocking(default_server(pki, crl=pki.crl), oms_client(pki, cert, key))
    assert out.refused, out
    assert out.server_reason is reason
    # TLS 1.3: the client's handshake succeeded; the alert arrives on its first read.
    assert isinstance(out.client_error, ssl.SSLError), out
    assert out.client_reason is reason


def test_refused_server_hears_the_clients_alert(pki: DevPki, foreign_pki: DevPki) -> None:
    server = server_context(foreign_pki.ats_server_cert, foreign_pki.ats_server_key, foreign_pki.ca_cert,
                            require_client_cert=False)
    out = connect_blocking(server, client_context(pki.proxy_client_cert, pki.proxy_client_key, pki.ca_cert))
    assert out.refused, out
    assert out.client_reason is Reason.TLS_UNKNOWN_CA
    assert out.server_reason is Reason.TLS_UNKNOWN_CA  # "tlsv1 alert unknown ca"


def test_plaintext_on_the_tls_port_is_its_own_reason(pki: DevPki) -> None:
    """A plain FIX Logon (or an HTTP probe) sent to the TLS port is not a failed TLS negotiation:
    the server's error is classified as tls_plaintext."""
    import socket
    import threading

    server = default_server(pki)
    for first_bytes in (b"8=FIX.4.4\x019=5\x0135=A\x0110=000\x01", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
        ls = socket.create_server(("127.0.0.1", 0))
        errors: list[BaseException] = []

        def serve(ls: socket.socket = ls, errors: list[BaseException] = errors) -> None:
            conn, _ = ls.accept()
            with conn:
                try:
                    server.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    errors.append(exc)

        t = threading.Thread(target=serve)
        t.start()
        with socket.create_connection(ls.getsockname()) as c:
            c.sendall(first_bytes)
            t.join(10)
        ls.close()
        assert len(errors) == 1 and classify_handshake_error(errors[0]) is Reason.TLS_PLAINTEXT, errors
