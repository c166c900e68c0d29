"""TLS contexts and peer identity for fixproxy. No sockets here: callers hand the contexts to
asyncio (or anything else) and pass the resulting SSL object back to :func:`peer_identity`.

Posture (zero trust; in line with the FIX-over-TLS guidance):

* TLS 1.3 only by default. TLS 1.2 only when asked for (``min_version="TLSv1.2"``), and then
  with ECDHE key exchange and AEAD ciphers only. Nothing older, ever.
* Mutual TLS: the server requires a client certificate; both sides trust the private CA alone
  (the system trust store is never loaded), with strict X.509 checks; optional CRL (leaf) check.
* No compression, no renegotiation, no session tickets (and zero TLS 1.3 tickets), so every
  connection is authenticated by a full handshake. Python has no switch for OpenSSL's per-context
  session-ID cache; TLS 1.2 resumption does not happen in practice either (tests/test_tls.py
  checks both versions), and a reload builds a new context, with an empty cache, in any case.

Server-side handshake failures must reach the proxy to be classified and counted:

* ``asyncio.start_server(..., ssl=ctx)`` / ``loop.create_server(..., ssl=ctx)``: they never do.
  The connection is dropped before the callback runs, and the error is at most debug-logged.
* ``start_server`` without ssl, then ``writer.start_tls(ctx)`` in the handler: racy. On uvloop
  the transport starts reading before the handler runs, so the StreamReader swallows the
  ClientHello and the handshake hangs until its timeout (seen with uvloop 0.23; the stdlib loop
  happens to schedule the handler first).
* What works on both loops: ``conn, addr = await loop.sock_accept(listener)`` then
  ``await loop.connect_accepted_socket(factory, conn, ssl=ctx, ssl_handshake_timeout=...)``.
  The SSL protocol owns the socket from its first byte, and a failed handshake is raised there,
  for :func:`classify_handshake_error`. (tests/test_tls.py does exactly this.)

Neither event loop flushes the TLS alert when a handshake fails, so a refused peer sees EOF or a
reset rather than "certificate expired"; the reason is only known, and recorded, on our side.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from fixproxy.reasons import Reason

StrPath = str | os.PathLike[str]

COMPID_URI_SCHEME = "fix"
COMPID_URI_HOST = "compid"

# Only forward-secret key exchange with authenticated encryption, for TLS 1.2 when allowed. TLS 1.3
# suites are all AEAD + (EC)DHE already and are not affected by this string.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
}

# OpenSSL X509_V_ERR_* codes, as found in ssl.SSLCertVerificationError.verify_code.
_V_ERR_UNABLE_TO_GET_ISSUER_CERT = 2
_V_ERR_CERT_SIGNATURE_FAILURE = 7
_V_ERR_CERT_HAS_EXPIRED = 10
_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18
_V_ERR_SELF_SIGNED_CERT_IN_CHAIN = 19
_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
_V_ERR_CERT_REVOKED = 23

_VERIFY_CODES: dict[int, Reason] = {
    _V_ERR_CERT_HAS_EXPIRED: Reason.TLS_EXPIRED,
    _V_ERR_CERT_REVOKED: Reason.TLS_REVOKED,
    # "Not chained to our CA" in its various forms. A signature failure means a certificate that
    # names our CA as issuer but was not signed by it: also not from a CA we trust.
    _V_ERR_UNABLE_TO_GET_ISSUER_CERT: Reason.TLS_UNKNOWN_CA,
    _V_ERR_CERT_SIGNATURE_FAILURE: Reason.TLS_UNKNOWN_CA,
    _V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: Reason.TLS_UNKNOWN_CA,
    _V_ERR_SELF_SIGNED_CERT_IN_CHAIN: Reason.TLS_UNKNOWN_CA,
    _V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: Reason.TLS_UNKNOWN_CA,
    _V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: Reason.TLS_UNKNOWN_CA,
}

# OpenSSL reason names (ssl.SSLError.reason). The first two are what the server sees when the
# client sent no certificate; the alerts are what a *client* sees when the server refused it (with
# TLS 1.3 typically only on its first read, since the client finishes its handshake first).
_SSL_REASONS: dict[str, Reason] = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": Reason.TLS_NO_CERT,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": Reason.TLS_NO_CERT,
    "TLSV1_ALERT_UNKNOWN_CA": Reason.TLS_UNKNOWN_CA,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": Reason.TLS_EXPIRED,
    "SSLV3_ALERT_CERTIFICATE_REVOKED": Reason.TLS_REVOKED,
    "UNSUPPORTED_PROTOCOL": Reason.TLS_PROTOCOL_VERSION,  # a ClientHello below minimum_version
    "TLSV1_ALERT_PROTOCOL_VERSION": Reason.TLS_PROTOCOL_VERSION,  # the alert such a client receives
    "WRONG_VERSION_NUMBER": Reason.TLS_PLAINTEXT,  # the first bytes are not a TLS record
    "HTTP_REQUEST": Reason.TLS_PLAINTEXT,
}
# Fallback on the message text, for builds whose errors carry no reason name.
_SSL_MESSAGES: tuple[tuple[str, Reason], ...] = (
    ("peer did not return a certificate", Reason.TLS_NO_CERT),
    ("certificate required", Reason.TLS_NO_CERT),
    ("alert unknown ca", Reason.TLS_UNKNOWN_CA),
    ("alert certificate expired", Reason.TLS_EXPIRED),
    ("alert certificate revoked", Reason.TLS_REVOKED),
    ("unsupported protocol", Reason.TLS_PROTOCOL_VERSION),
    ("alert protocol version", Reason.TLS_PROTOCOL_VERSION),
    ("wrong version number", Reason.TLS_PLAINTEXT),
)


def _version(min_version: str) -> ssl.TLSVersion:
    try:
        return _VERSIONS[min_version]
    except KeyError:
        raise ValueError(f"min_version must be one of {sorted(_VERSIONS)}, not {min_version!r}") from None


def _harden(ctx: ssl.SSLContext, min_version: str, ca: StrPath, crl: StrPath | None) -> None:
    """What server and client contexts share: versions, ciphers, options, trust store."""
    ctx.minimum_version = _version(min_version)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    # The private CA only; load_default_certs() is deliberately never called: a certificate from
    # any public CA must not authenticate anyone here.
    ctx.load_verify_locations(cafile=os.fspath(ca))
    # Strict RFC 5280 checks (what Python 3.13 turns on by default); the dev PKI satisfies them.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if crl is not None:
        # A PEM CRL loads into the same X509 store as the CA. CHECK_LEAF: our CA issues leaves only.
        # With the flag set and no valid CRL for the issuer, verification fails closed.
        ctx.load_verify_locations(cafile=os.fspath(crl))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def server_context(
    cert: StrPath,
    key: StrPath,
    ca: StrPath,
    *,
    crl: StrPath | None = None,
    require_client_cert: bool = True,
    min_version: str = "TLSv1.3",
) -> ssl.SSLContext:
    """The context fixproxy listens with (towards OMS clients).

    ``require_client_cert=False`` still asks for and verifies a certificate if the client offers
    one (CERT_OPTIONAL): a presented certificate is never accepted unchecked. To pick up a new CRL
    or certificate, build a new context; connections already up keep the old one.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, min_version, ca, crl)
    # OP_NO_TICKET alone still lets an OpenSSL TLS 1.3 server issue (stateful) tickets; with zero
    # tickets no TLS 1.3 resumption is possible at all.
    ctx.num_tickets = 0
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    return ctx


def client_context(
    cert: StrPath | None,
    key: StrPath | None,
    ca: StrPath,
    *,
    min_version: str = "TLSv1.3",
    check_hostname: bool = True,
    crl: StrPath | None = None,
) -> ssl.SSLContext:
    """The context fixproxy connects to the ATS with (and what test clients use).

    The server's certificate is always verified against ``ca``; ``check_hostname=False`` only
    skips the name check. ``cert``/``key`` may be None for a client without a certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    _harden(ctx, min_version, ca, crl)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED  # setting check_hostname=False must not weaken this
    if cert is not None:
        ctx.load_cert_chain(os.fspath(cert), None if key is None else os.fspath(key))
    return ctx


@dataclass(frozen=True)
class PeerIdentity:
    """Who is at the other end, from the verified peer certificate."""

    subject: str  # RFC 4514 string, e.g. "CN=OMS1,O=fixproxy development"
    common_name: str | None
    san_uris: tuple[str, ...]
    fingerprint_sha256: str  # lower-case hex, no colons (same as fixproxy.certs.fingerprint_sha256)
    not_after: datetime  # timezone-aware, UTC
    serial: int


def identity_from_der(der: bytes) -> PeerIdentity:
    """A PeerIdentity from a DER certificate (what :func:`peer_identity` uses)."""
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    return PeerIdentity(
        subject=cert.subject.rfc4514_string(),
        common_name=cn if isinstance(cn, str) else None,
        san_uris=uris,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
    )


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> PeerIdentity | None:
    """The peer's identity after a completed handshake, or None if it presented no certificate.

    Parsed with ``cryptography`` from the DER form: ``getpeercert()`` without binary_form returns
    an empty dict whenever the context does not verify, and it drops fields we need. Raises
    ValueError if the handshake has not completed (that is a caller bug, not an anonymous peer).
    With asyncio: ``peer_identity(writer.get_extra_info("ssl_object"))``.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return identity_from_der(der)


def compids_from_identity(ident: PeerIdentity) -> tuple[str, ...]:
    """The CompIDs the certificate is bound to: X in each SAN URI ``fix://compid/X``, in
    certificate order, without duplicates. The CN is deliberately not used: the binding is the SAN.

    Scheme and host compare case-insensitively (RFC 3986); the CompID itself is taken verbatim, no
    percent-decoding, so what is matched is exactly what the CA signed. URIs with a further path
    segment, query, fragment, user or port are ignored rather than guessed at.
    """
    found: list[str] = []
    for uri in ident.san_uris:
        try:
            parts = urlsplit(uri)
        except ValueError:
            continue
        if parts.scheme.lower() != COMPID_URI_SCHEME or parts.netloc.lower() != COMPID_URI_HOST:
            continue
        compid = parts.path[1:] if parts.path.startswith("/") else ""
        if not compid or "/" in compid or parts.query or parts.fragment or "?" in uri or "#" in uri:
            continue
        if compid not in found:
            found.append(compid)
    return tuple(found)


def classify_handshake_error(exc: BaseException) -> Reason:
    """The reason code for a failed TLS handshake, on either side of it.

    Certificate verification failures are classified by OpenSSL's verify code (10 expired,
    23 revoked, 2/7/18/19/20/21 not from our CA); "peer did not return a certificate" and the
    TLS 1.3 "certificate required" alert mean no certificate; the matching alerts a refused client
    receives map to the same reasons. A ClientHello below the minimum version (TLS 1.0/1.1) is
    TLS_PROTOCOL_VERSION; bytes that are not TLS at all (plain FIX, HTTP) are TLS_PLAINTEXT. A
    timeout is HANDSHAKE_TIMEOUT. Everything else (cipher mismatch, wrong certificate purpose,
    hostname mismatch, CRL problems, not yet valid, a reset mid-handshake) is TLS_HANDSHAKE_FAILED.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    # Look through wrappers (an exception raised "from" the SSL error) for the most specific cause.
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        reason = _classify_one(current)
        if reason is not None:
            return reason
        current = current.__cause__ or current.__context__
    return Reason.TLS_HANDSHAKE_FAILED


def _classify_one(exc: BaseException) -> Reason | None:
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError since 3.11
        return Reason.HANDSHAKE_TIMEOUT
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if isinstance(code, int) and code in _VERIFY_CODES:
            return _VERIFY_CODES[code]
        return Reason.TLS_HANDSHAKE_FAILED if isinstance(code, int) and code else None
    if isinstance(exc, ssl.SSLError):
        name = getattr(exc, "reason", None)
        if isinstance(name, str) and name in _SSL_REASONS:
            return _SSL_REASONS[name]
        text = str(exc).lower()
        for needle, reason in _SSL_MESSAGES:
            if needle in text:
                return reason
    return None
