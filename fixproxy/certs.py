"""A development PKI for fixproxy, built with ``cryptography`` (no openssl CLI needed).

One private CA signs every certificate the demo and the tests need: the proxy's two faces (server
certificate for OMS clients, client certificate towards the ATS), the matching engine's TLS
terminator, an operator (admin) certificate and one client certificate per CompID. The CompID a
client certificate may log on as is bound in its SAN as the URI ``fix://compid/<COMPID>``; the TLS
layer reads it back with :func:`fixproxy.tls.compids_from_identity`.

Layout of a PKI directory (names are fixed so :func:`load_dev_pki` can re-read it)::

    ca.pem  ca.key  crl.pem
    proxy-server.pem  proxy-server.key      SAN DNS localhost, IP 127.0.0.1, ::1; EKU serverAuth
    proxy-client.pem  proxy-client.key      SAN URI fix://proxy/fixproxy; EKU clientAuth
    ats-server.pem    ats-server.key        SAN DNS localhost, IP 127.0.0.1, ::1; EKU serverAuth
    admin.pem         admin.key             SAN URI fix://admin/<name>; EKU clientAuth
    clients/<COMPID>.pem  clients/<COMPID>.key
    extra/<name>.pem      extra/<name>.key  certificates from issue_client_cert (tests: expired, ...)

This is for development and tests only: keys are written unencrypted (mode 0600) and must never be
committed (the repository's .gitignore ignores *.pem, *.key, *.crl and certs/dev/).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

StrPath = str | os.PathLike[str]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

COMPID_URI_PREFIX = "fix://compid/"
PROXY_URI = "fix://proxy/fixproxy"
ADMIN_URI_PREFIX = "fix://admin/"
DEFAULT_ADMIN_NAME = "operator"

CA_CERT, CA_KEY, CRL = "ca.pem", "ca.key", "crl.pem"
PROXY_SERVER, PROXY_CLIENT, ATS_SERVER, ADMIN = "proxy-server", "proxy-client", "ats-server", "admin"
CLIENTS_DIR, EXTRA_DIR = "clients", "extra"

_ORG = "fixproxy development"
# Backdate notBefore a little: a peer whose clock runs slightly behind ours must not see a fresh
# certificate (or CRL) as "not yet valid".
_SKEW = timedelta(minutes=5)
# A CompID ends up in a file name and in a URI: keep it to characters that are safe in both, so
# neither a path traversal nor a URI that parses differently from how it reads can be produced.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SERVER_NAMES: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
)


@dataclass(frozen=True)
class DevPki:
    """Paths of one development PKI. ``clients`` maps CompID -> (cert, key)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    crl: Path
    proxy_server_cert: Path  # presented by fixproxy to OMS clients
    proxy_server_key: Path
    proxy_client_cert: Path  # presented by fixproxy to the ATS
    proxy_client_key: Path
    ats_server_cert: Path  # presented by the matching engine's TLS terminator
    ats_server_key: Path
    admin_cert: Path  # operator certificate (SAN URI fix://admin/<name>)
    admin_key: Path
    # A dict is not hashable; leave it out of the generated __hash__ so a DevPki stays usable as a key.
    clients: dict[str, tuple[Path, Path]] = field(hash=False)


# -- small helpers -------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _check_name(name: str, what: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} must match {_SAFE_NAME.pattern}")
    return name


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename, so a reader (a proxy reloading the CRL, say) never
    sees half a file. mkstemp creates the file 0600, so a key is never readable by others, not even
    for an instant; certificates are widened to ``mode`` afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())  # P-256: fast, and every TLS stack has it
    if key_type == "rsa":
        # For peers without EC support. 2048 bits: acceptable (NIST) through 2030 and several times
        # faster to generate than 3072, which matters for a PKI rebuilt by every test run.
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


def _write_key(path: Path, key: PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomic(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_cert(path: StrPath) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _load_key(path: StrPath) -> PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def _same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


# -- the CA --------------------------------------------------------------------------------------


def _make_ca(days: int, key_type: str) -> tuple[x509.Certificate, PrivateKey]:
    key = _new_key(key_type)
    now = _now()
    serial = x509.random_serial_number()
    # A per-CA suffix in the name: two dev PKIs (two checkouts, the tests' "foreign CA") must not
    # look alike in logs, and OpenSSL then never even considers the wrong CA as a candidate issuer.
    subject = _name(f"fixproxy dev CA {serial & 0xFFFFFFFF:08x}")  # 8 hex digits tell CAs apart
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + timedelta(days=days))
        # path_length=0: this CA signs leaves only, never an intermediate.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _ca_usable(ca_cert: Path, ca_key: Path) -> tuple[x509.Certificate, PrivateKey] | None:
    """The existing CA, if both files are there, match, and the CA has not expired."""
    if not (ca_cert.is_file() and ca_key.is_file()):
        return None
    cert, key = _load_cert(ca_cert), _load_key(ca_key)
    if not _same_public_key(cert, key) or cert.not_valid_after_utc <= _now():
        return None
    return cert, key


# -- leaves --------------------------------------------------------------------------------------


def _issue(
    ca: x509.Certificate,
    ca_key: PrivateKey,
    *,
    common_name: str,
    sans: Iterable[x509.GeneralName],
    eku: Iterable[x509.ObjectIdentifier],
    key_type: str,
    not_before: datetime,
    not_after: datetime,
) -> tuple[x509.Certificate, PrivateKey]:
    key = _new_key(key_type)
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # digitalSignature only: TLS 1.3 (and the ECDHE-only TLS 1.2 we allow) never uses the
            # certificate key for key encipherment or key agreement.
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256()), key


def _validity(ca: x509.Certificate, days: int) -> tuple[datetime, datetime]:
    now = _now()
    # A leaf must not outlive its CA: verifiers would reject it (or worse, some would not).
    return now - _SKEW, min(now + timedelta(days=days), ca.not_valid_after_utc)


def _leaf_usable(
    cert_path: Path, key_path: Path, ca: x509.Certificate, sans: list[x509.GeneralName], revoked: frozenset[int]
) -> bool:
    """Keep an existing leaf only if it is intact, signed by *this* CA, unexpired, not revoked and
    names what it should (a changed admin name, say, means a new certificate)."""
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert, key = _load_cert(cert_path), _load_key(key_path)
        cert.verify_directly_issued_by(ca)
        if cert.serial_number in revoked:
            return False
        current = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return _same_public_key(cert, key) and cert.not_valid_after_utc > _now() and current == sans


def _client_sans(compid: str) -> list[x509.GeneralName]:
    return [x509.UniformResourceIdentifier(COMPID_URI_PREFIX + compid)]


# -- the CRL -------------------------------------------------------------------------------------


def _write_crl(
    path: Path,
    ca: x509.Certificate,
    ca_key: PrivateKey,
    revoked: Iterable[x509.RevokedCertificate],
    validity: timedelta,
    number: int,
) -> None:
    now = _now()
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - _SKEW)
        .next_update(now + validity)
        # CRLNumber lets a verifier (and a human) tell which of two CRLs is the newer one.
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_atomic(path, crl.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _keep_or_refresh_crl(
    path: Path, ca: x509.Certificate, ca_key: PrivateKey, days: int, *, fresh_ca: bool
) -> None:
    """An empty CRL for a new CA; an existing one is kept, and re-signed (entries kept) only if it
    has lapsed, because a lapsed CRL makes every CRL-checking handshake fail closed."""
    crl: x509.CertificateRevocationList | None = None
    if not fresh_ca and path.is_file():
        try:
            crl = _load_crl(path)
        except ValueError:
            crl = None
    # A CRL from another CA (the CA was replaced) would make every CRL check fail: start afresh.
    if crl is not None and crl.issuer == ca.subject and crl.is_signature_valid(ca_key.public_key()):
        next_update = crl.next_update_utc
        if next_update is not None and next_update > _now():
            return
        _write_crl(path, ca, ca_key, list(crl), timedelta(days=days), _crl_number(crl) + 1)
        return
    _write_crl(path, ca, ca_key, [], timedelta(days=days), 1)


# -- public API ----------------------------------------------------------------------------------


def _paths(directory: Path, clients: dict[str, tuple[Path, Path]]) -> DevPki:
    def pair(stem: str) -> tuple[Path, Path]:
        return directory / f"{stem}.pem", directory / f"{stem}.key"

    ps, pc, ats, adm = pair(PROXY_SERVER), pair(PROXY_CLIENT), pair(ATS_SERVER), pair(ADMIN)
    return DevPki(
        directory=directory,
        ca_cert=directory / CA_CERT,
        ca_key=directory / CA_KEY,
        crl=directory / CRL,
        proxy_server_cert=ps[0], proxy_server_key=ps[1],
        proxy_client_cert=pc[0], proxy_client_key=pc[1],
        ats_server_cert=ats[0], ats_server_key=ats[1],
        admin_cert=adm[0], admin_key=adm[1],
        clients=clients,
    )


def init_dev_pki(
    directory: StrPath,
    compids: Iterable[str],
    *,
    days: int = 365,
    key_type: str = "ec",
    admin_name: str = DEFAULT_ADMIN_NAME,
) -> DevPki:
    """Create (or complete) a development PKI in ``directory`` and return its paths.

    Idempotent, so ``make demo`` can be re-run: an existing, unexpired CA is kept, and so is every
    certificate that is intact, signed by that CA, unexpired and not revoked; only what is missing
    (a new CompID, say) or unusable is (re)issued. So after a demo revoked OMS2's certificate, a
    re-run gives OMS2 a fresh one while the CRL keeps the old serial revoked. A new CA means every
    leaf is re-issued and the CRL starts empty.
    ``key_type`` ("ec" for P-256, or "rsa") applies to keys generated by this call only.
    Client certificates of CompIDs not named in ``compids`` but already present are kept.
    """
    if days < 1:
        raise ValueError("days must be >= 1")
    wanted = [_check_name(c, "CompID") for c in compids]
    _check_name(admin_name, "admin name")
    if key_type not in ("ec", "rsa"):  # fail before touching the disk
        raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    (root / CLIENTS_DIR).mkdir(exist_ok=True)

    existing = _ca_usable(root / CA_CERT, root / CA_KEY)
    fresh_ca = existing is None
    if existing is None:
        ca, ca_key = _make_ca(days, key_type)
        _write_key(root / CA_KEY, ca_key)
        _write_cert(root / CA_CERT, ca)
    else:
        ca, ca_key = existing
    _keep_or_refresh_crl(root / CRL, ca, ca_key, days, fresh_ca=fresh_ca)
    revoked = revoked_serials(root)

    clients = {p.stem: (p, p.with_suffix(".key")) for p in sorted((root / CLIENTS_DIR).glob("*.pem"))}
    for compid in wanted:
        # Not Path.with_suffix: a CompID may contain a dot ("OMS.1").
        where = root / CLIENTS_DIR
        clients.setdefault(compid, (where / f"{compid}.pem", where / f"{compid}.key"))
    pki = _paths(root, clients)

    server = [ExtendedKeyUsageOID.SERVER_AUTH]
    client = [ExtendedKeyUsageOID.CLIENT_AUTH]
    leaves: list[tuple[Path, Path, str, list[x509.GeneralName], list[x509.ObjectIdentifier]]] = [
        (pki.proxy_server_cert, pki.proxy_server_key, "fixproxy", list(_SERVER_NAMES), server),
        (pki.proxy_client_cert, pki.proxy_client_key, "fixproxy", [x509.UniformResourceIdentifier(PROXY_URI)],
         client),
        (pki.ats_server_cert, pki.ats_server_key, "ats", list(_SERVER_NAMES), server),
        (pki.admin_cert, pki.admin_key, admin_name,
         [x509.UniformResourceIdentifier(ADMIN_URI_PREFIX + admin_name)], client),
    ]
    leaves += [(c, k, compid, _client_sans(compid), client) for compid, (c, k) in clients.items()]
    for cert_path, key_path, cn, sans, eku in leaves:
        if not fresh_ca and _leaf_usable(cert_path, key_path, ca, sans, revoked):
            continue
        not_before, not_after = _validity(ca, days)
        cert, key = _issue(ca, ca_key, common_name=cn, sans=sans, eku=eku, key_type=key_type,
                           not_before=not_before, not_after=not_after)
        _write_key(key_path, key)  # key first: a crash in between leaves a mismatch, re-issued next run
        _write_cert(cert_path, cert)
    return pki


def load_dev_pki(directory: StrPath) -> DevPki:
    """The paths of an existing PKI directory (made by :func:`init_dev_pki`); nothing is created."""
    root = Path(directory)
    clients_dir = root / CLIENTS_DIR
    clients = (
        {p.stem: (p, p.with_suffix(".key")) for p in sorted(clients_dir.glob("*.pem"))}
        if clients_dir.is_dir()
        else {}
    )
    pki = _paths(root, clients)
    required = [pki.ca_cert, pki.ca_key, pki.crl, pki.proxy_server_cert, pki.proxy_server_key,
                pki.proxy_client_cert, pki.proxy_client_key, pki.ats_server_cert, pki.ats_server_key,
                pki.admin_cert, pki.admin_key, *(p for pair in clients.values() for p in pair)]
    missing = [str(p) for p in required if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"not a complete dev PKI directory, missing: {', '.join(missing)}")
    return pki


def issue_client_cert(
    pki: DevPki,
    compid: str,
    *,
    name: str | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    client_auth: bool = True,
) -> tuple[Path, Path]:
    """Issue an extra client certificate for ``compid`` (SAN URI fix://compid/<COMPID>, CN=<COMPID>)
    into ``extra/<name>.pem`` / ``.key`` and return (cert, key).

    Meant for tests: ``not_after`` in the past gives an expired certificate; ``client_auth=False``
    gives one whose EKU is serverAuth only (wrong purpose for a client). The PKI's standard client
    certificate for the CompID (``pki.clients``) is never touched. ``name`` defaults to a unique
    ``<COMPID>-<serial>``; an existing ``name`` is overwritten. Naive datetimes are taken as UTC.
    """
    _check_name(compid, "CompID")
    ca, ca_key = _load_cert(pki.ca_cert), _load_key(pki.ca_key)
    now = _now()
    default_after = min(now + timedelta(days=365), ca.not_valid_after_utc)
    after = _aware(not_after) if not_after is not None else default_after
    before = _aware(not_before) if not_before is not None else min(now - _SKEW, after - timedelta(days=1))
    if after <= before:
        raise ValueError("not_after must be later than not_before")
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [ExtendedKeyUsageOID.SERVER_AUTH]
    key_type = "ec" if isinstance(ca_key, ec.EllipticCurvePrivateKey) else "rsa"
    cert, key = _issue(ca, ca_key, common_name=compid, sans=_client_sans(compid), eku=eku, key_type=key_type,
                       not_before=before, not_after=after)
    stem = _check_name(name, "name") if name is not None else f"{compid}-{cert.serial_number:x}"[:64]
    cert_path, key_path = pki.directory / EXTRA_DIR / f"{stem}.pem", pki.directory / EXTRA_DIR / f"{stem}.key"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def revoke(pki_or_dir: DevPki | StrPath, cert_path: StrPath) -> None:
    """Add ``cert_path``'s serial to the CRL and re-sign ``crl.pem``, keeping earlier entries.

    Revoking an already revoked certificate changes nothing but the CRL's dates. A certificate not
    issued by this PKI's CA is refused (ValueError): its serial would mean nothing in this CRL.
    The new CRL keeps the previous one's validity period (nextUpdate - lastUpdate).
    Running proxies see it when they build a new server context (reload).
    """
    root = pki_or_dir.directory if isinstance(pki_or_dir, DevPki) else Path(pki_or_dir)
    ca, ca_key = _load_cert(root / CA_CERT), _load_key(root / CA_KEY)
    cert = _load_cert(cert_path)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ValueError(f"{cert_path} was not issued by the CA in {root}") from exc
    crl_path = root / CRL
    old = _load_crl(crl_path)
    entries = list(old)
    last, nxt = old.last_update_utc, old.next_update_utc
    validity = (nxt - last - _SKEW) if nxt is not None else timedelta(days=365)
    if old.get_revoked_certificate_by_serial_number(cert.serial_number) is None:
        entries.append(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(_now())
            .build()
        )
    _write_crl(crl_path, ca, ca_key, entries, max(validity, timedelta(days=1)), _crl_number(old) + 1)


def revoked_serials(pki_or_dir: DevPki | StrPath) -> frozenset[int]:
    """The serial numbers currently in the PKI's CRL."""
    root = pki_or_dir.directory if isinstance(pki_or_dir, DevPki) else Path(pki_or_dir)
    return frozenset(entry.serial_number for entry in _load_crl(root / CRL))


def fingerprint_sha256(cert_path: StrPath) -> str:
    """SHA-256 of the certificate's DER encoding: lower-case hex, no colons (what
    :class:`fixproxy.tls.PeerIdentity` carries, so config can pin a certificate by it)."""
    return _load_cert(cert_path).fingerprint(hashes.SHA256()).hex()


def serial_number(cert_path: StrPath) -> int:
    """The certificate's serial number (what the CRL lists)."""
    return _load_cert(cert_path).serial_number
