"""fixproxy.certs: the development PKI, checked with cryptography (and by OpenSSL itself in
test_tls.py, where these certificates are used in real handshakes)."""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fixproxy.certs import (
    DevPki,
    fingerprint_sha256,
    init_dev_pki,
    issue_client_cert,
    load_dev_pki,
    revoke,
    revoked_serials,
    serial_number,
)

SERVER_AUTH, CLIENT_AUTH = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH


def cert_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def crl_of(pki: DevPki) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(pki.crl.read_bytes())


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    value = ext(cert, x509.SubjectAlternativeName).value
    assert isinstance(value, x509.SubjectAlternativeName)
    return value


def ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    value = ext(cert, x509.ExtendedKeyUsage).value
    assert isinstance(value, x509.ExtendedKeyUsage)
    return list(value)


def all_leaves(pki: DevPki) -> list[tuple[Path, Path]]:
    return [(pki.proxy_server_cert, pki.proxy_server_key), (pki.proxy_client_cert, pki.proxy_client_key),
            (pki.ats_server_cert, pki.ats_server_key), (pki.admin_cert, pki.admin_key), *pki.clients.values()]


@pytest.fixture
def fresh(tmp_path: Path) -> DevPki:
    """A PKI of the test's own, for tests that revoke or re-initialise."""
    return init_dev_pki(tmp_path / "pki", ["OMS1", "OMS2"])


# -- the CA --------------------------------------------------------------------------------------


def test_ca(pki: DevPki) -> None:
    ca = cert_of(pki.ca_cert)
    assert ca.subject == ca.issuer
    basic = ext(ca, x509.BasicConstraints)
    assert basic.critical and basic.value.ca  # type: ignore[attr-defined]
    usage = ext(ca, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign  # type: ignore[attr-defined]
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    ca.verify_directly_issued_by(ca)


def test_two_pkis_have_distinct_cas(pki: DevPki, foreign_pki: DevPki) -> None:
    assert cert_of(pki.ca_cert).subject != cert_of(foreign_pki.ca_cert).subject


# -- leaves --------------------------------------------------------------------------------------


def test_every_leaf_is_signed_by_the_ca_with_key_ids(pki: DevPki) -> None:
    ca = cert_of(pki.ca_cert)
    ca_ski = ext(ca, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]
    for cert_path, key_path in all_leaves(pki):
        cert = cert_of(cert_path)
        cert.verify_directly_issued_by(ca)
        assert not ext(cert, x509.BasicConstraints).value.ca  # type: ignore[attr-defined]
        assert ext(cert, x509.KeyUsage).value.digital_signature  # type: ignore[attr-defined]
        assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski  # type: ignore[attr-defined]
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        ski = ext(cert, x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())  # type: ignore[arg-type]
        assert cert.not_valid_after_utc <= ca.not_valid_after_utc


def test_private_keys_are_owner_only(pki: DevPki) -> None:
    for key in [pki.ca_key, *(k for _, k in all_leaves(pki))]:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert not list(pki.directory.rglob("*.tmp"))  # atomic writes leave nothing behind


def test_server_certs(pki: DevPki) -> None:
    for path in (pki.proxy_server_cert, pki.ats_server_cert):
        cert = cert_of(path)
        names = sans(cert)
        assert "localhost" in names.get_values_for_type(x509.DNSName)
        assert "127.0.0.1" in [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
        assert ekus(cert) == [SERVER_AUTH]


def test_proxy_client_and_admin_certs(pki: DevPki) -> None:
    proxy = cert_of(pki.proxy_client_cert)
    assert sans(proxy).get_values_for_type(x509.UniformResourceIdentifier) == ["fix://proxy/fixproxy"]
    assert ekus(proxy) == [CLIENT_AUTH]
    admin = cert_of(pki.admin_cert)
    assert sans(admin).get_values_for_type(x509.UniformResourceIdentifier) == ["fix://admin/operator"]
    assert ekus(admin) == [CLIENT_AUTH]


def test_client_certs_bind_the_compid(pki: DevPki) -> None:
    assert set(pki.clients) == {"OMS1", "OMS2"}
    for compid, (cert_path, _) in pki.clients.items():
        cert = cert_of(cert_path)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == compid
        assert sans(cert).get_values_for_type(x509.UniformResourceIdentifier) == [f"fix://compid/{compid}"]
        assert ekus(cert) == [CLIENT_AUTH]


def test_validity_follows_days(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path, ["OMS1"], days=30)
    cert = cert_of(pki.clients["OMS1"][0])
    now = datetime.now(UTC)
    assert cert.not_valid_before_utc <= now
    assert abs(cert.not_valid_after_utc - (now + timedelta(days=30))) < timedelta(minutes=1)
    assert abs(crl_of(pki).next_update_utc - (now + timedelta(days=30))) < timedelta(minutes=1)  # type: ignore[operator]


@pytest.mark.parametrize("compid", ["", "../x", "a/b", "OMS 1", "-x", "x" * 65, "é"])
def test_unsafe_compids_refused(tmp_path: Path, compid: str) -> None:
    with pytest.raises(ValueError, match="CompID"):
        init_dev_pki(tmp_path, [compid])
    assert not (tmp_path / "ca.pem").exists()  # refused before anything was written


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key_type"):
        init_dev_pki(tmp_path, ["OMS1"], key_type="dsa")
    with pytest.raises(ValueError, match="days"):
        init_dev_pki(tmp_path, ["OMS1"], days=0)


def test_rsa_keys(tmp_path: Path) -> None:
    pki = init_dev_pki(tmp_path, ["OMS1"], key_type="rsa")
    cert = cert_of(pki.clients["OMS1"][0])
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    cert.verify_directly_issued_by(cert_of(pki.ca_cert))
    expired, _ = issue_client_cert(pki, "OMS1", not_after=datetime.now(UTC) - timedelta(days=1))
    assert isinstance(cert_of(expired).public_key(), rsa.RSAPublicKey)


# -- idempotency and re-reading ------------------------------------------------------------------


def test_init_is_idempotent_and_adds_missing_clients(fresh: DevPki) -> None:
    before = {p: p.read_bytes() for p in fresh.directory.rglob("*") if p.is_file()}
    again = init_dev_pki(fresh.directory, ["OMS1", "OMS2"])
    assert again == fresh
    assert {p: p.read_bytes() for p in fresh.directory.rglob("*") if p.is_file()} == before

    more = init_dev_pki(fresh.directory, ["OMS3"])
    assert set(more.clients) == {"OMS1", "OMS2", "OMS3"}  # earlier CompIDs are kept
    for path, data in before.items():
        assert path.read_bytes() == data, path
    cert_of(more.clients["OMS3"][0]).verify_directly_issued_by(cert_of(more.ca_cert))


def test_init_keeps_revocations_and_replaces_revoked_certs(fresh: DevPki) -> None:
    old_serial = serial_number(fresh.clients["OMS2"][0])
    oms1 = fresh.clients["OMS1"][0].read_bytes()
    revoke(fresh, fresh.clients["OMS2"][0])
    init_dev_pki(fresh.directory, ["OMS1", "OMS2"])
    assert revoked_serials(fresh) == {old_serial}  # the revocation stands
    new_serial = serial_number(fresh.clients["OMS2"][0])  # and OMS2 has a usable certificate again
    assert new_serial != old_serial and new_serial not in revoked_serials(fresh)
    assert fresh.clients["OMS1"][0].read_bytes() == oms1


def test_init_reissues_what_is_broken(fresh: DevPki) -> None:
    ca_before = fresh.ca_cert.read_bytes()
    oms1_before = fresh.clients["OMS1"][0].read_bytes()
    fresh.clients["OMS2"][1].unlink()  # lost key: the certificate is useless
    fresh.proxy_server_key.write_bytes(b"garbage")  # half-written key
    pki = init_dev_pki(fresh.directory, ["OMS1", "OMS2"])
    assert pki.ca_cert.read_bytes() == ca_before
    assert pki.clients["OMS1"][0].read_bytes() == oms1_before
    ca = cert_of(pki.ca_cert)
    for cert_path, key_path in (pki.clients["OMS2"], (pki.proxy_server_cert, pki.proxy_server_key)):
        cert = cert_of(cert_path)
        cert.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
            key.public_key()  # type: ignore[arg-type]
        )


def test_new_ca_reissues_everything(fresh: DevPki) -> None:
    revoke(fresh, fresh.clients["OMS2"][0])
    old = {p: p.read_bytes() for p, _ in all_leaves(fresh)}
    fresh.ca_key.unlink()  # CA lost: a new one is made, and nothing signed by the old one can stay
    pki = init_dev_pki(fresh.directory, ["OMS1", "OMS2"])
    ca = cert_of(pki.ca_cert)
    for cert_path, _ in all_leaves(pki):
        assert cert_path.read_bytes() != old[cert_path]
        cert_of(cert_path).verify_directly_issued_by(ca)
    crl = crl_of(pki)
    assert crl.issuer == ca.subject and len(list(crl)) == 0


def test_admin_name_change_reissues_admin_cert(fresh: DevPki) -> None:
    pki = init_dev_pki(fresh.directory, [], admin_name="alice")
    uris = sans(cert_of(pki.admin_cert)).get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["fix://admin/alice"]


def test_load_dev_pki(pki: DevPki, tmp_path: Path) -> None:
    assert load_dev_pki(pki.directory) == pki
    assert load_dev_pki(str(pki.directory)) == pki
    with pytest.raises(FileNotFoundError, match=r"ca\.pem"):
        load_dev_pki(tmp_path)


# -- extra certificates --------------------------------------------------------------------------


def test_issue_expired_and_wrong_purpose(pki: DevPki) -> None:
    now = datetime.now(UTC)
    cert_path, key_path = issue_client_cert(pki, "OMS1", name="certs-expired", not_after=now - timedelta(days=1))
    cert = cert_of(cert_path)
    assert cert.not_valid_after_utc < now
    assert cert.not_valid_before_utc < cert.not_valid_after_utc
    assert sans(cert).get_values_for_type(x509.UniformResourceIdentifier) == ["fix://compid/OMS1"]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert.verify_directly_issued_by(cert_of(pki.ca_cert))

    wrong, _ = issue_client_cert(pki, "OMS1", name="certs-server-only", client_auth=False)
    assert ekus(cert_of(wrong)) == [SERVER_AUTH]


def test_issue_leaves_the_standard_certs_alone(pki: DevPki) -> None:
    standard = pki.clients["OMS1"][0].read_bytes()
    first, _ = issue_client_cert(pki, "OMS1")
    second, _ = issue_client_cert(pki, "OMS1")
    assert first != second  # unique default names
    assert first.parent.name == "extra"
    assert pki.clients["OMS1"][0].read_bytes() == standard
    assert load_dev_pki(pki.directory).clients == pki.clients


def test_issue_naive_datetimes_are_utc(pki: DevPki) -> None:
    start = datetime(2020, 1, 1, 12, 0, 0)
    cert_path, _ = issue_client_cert(pki, "OMS2", name="certs-naive", not_before=start,
                                     not_after=start + timedelta(days=1))
    assert cert_of(cert_path).not_valid_before_utc == start.replace(tzinfo=UTC)
    with pytest.raises(ValueError, match="not_after"):
        issue_client_cert(pki, "OMS2", name="certs-backwards", not_before=start, not_after=start)


# -- CRL -----------------------------------------------------------------------------------------


def test_crl_starts_empty_and_signed(pki: DevPki, fresh: DevPki) -> None:
    crl = crl_of(fresh)
    ca = cert_of(fresh.ca_cert)
    assert len(list(crl)) == 0
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - datetime.now(UTC) > timedelta(days=364)
    assert pki.crl.is_file()


def test_revoke_keeps_earlier_entries(fresh: DevPki) -> None:
    first, second = fresh.clients["OMS1"][0], fresh.clients["OMS2"][0]
    revoke(fresh, first)
    number_1 = crl_of(fresh).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    revoke(fresh.directory, second)  # a directory works as well as a DevPki
    crl = crl_of(fresh)
    assert {entry.serial_number for entry in crl} == {serial_number(first), serial_number(second)}
    assert revoked_serials(fresh) == {serial_number(first), serial_number(second)}
    assert crl.is_signature_valid(cert_of(fresh.ca_cert).public_key())  # type: ignore[arg-type]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number_1 + 1
    assert crl.next_update_utc - datetime.now(UTC) > timedelta(days=364)  # type: ignore[operator]

    revoke(fresh, first)  # again: no duplicate entry
    assert len(list(crl_of(fresh))) == 2


def test_revoke_refuses_foreign_cert(fresh: DevPki, foreign_pki: DevPki) -> None:
    with pytest.raises(ValueError, match="not issued"):
        revoke(fresh, foreign_pki.clients["OMS1"][0])
    assert len(list(crl_of(fresh))) == 0


def test_fingerprint(pki: DevPki) -> None:
    cert_path = pki.clients["OMS1"][0]
    fp = fingerprint_sha256(cert_path)
    der = cert_of(cert_path).public_bytes(serialization.Encoding.DER)
    assert fp == hashlib.sha256(der).hexdigest()
    assert len(fp) == 64 and fp == fp.lower() and ":" not in fp
