"""Shared fixtures. Keep them generic: tests that need special certificates issue their own."""

from __future__ import annotations

import pytest

from fixproxy.certs import DevPki, init_dev_pki

# The CompIDs every test PKI has a client certificate for.
TEST_COMPIDS = ("OMS1", "OMS2")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """One development PKI for the whole test session (EC keys: milliseconds to build).

    Tests may add extra certificates (issue_client_cert) and revoke those, but must not revoke or
    replace the standard ones: other modules share this PKI.
    """
    return init_dev_pki(tmp_path_factory.mktemp("pki"), TEST_COMPIDS)


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A second, unrelated PKI: same file names and CompIDs, different CA (for unknown-CA tests)."""
    return init_dev_pki(tmp_path_factory.mktemp("foreign_pki"), TEST_COMPIDS)


@pytest.fixture(scope="session")
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory, pki: DevPki):
    """A real mosquitto for the whole test session (tests/mosquitto.py): ``.host``, ``.port``
    (plaintext, anonymous) and ``.tls_port`` (server certificate from ``pki``, client certificate
    optional but verified against ``pki.ca_cert`` when offered).

    Shared: do not stop or restart it (start your own ``mosquitto.Mosquitto`` for that), and use
    topics or client ids of your own.
    """
    from mosquitto import Mosquitto  # tests/mosquitto.py

    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), pki=pki).start()
    yield broker
    broker.stop()
