"""DICOM TLS against Orthanc with certificates generated for the test (trustme)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from dicomflow.connectors.dimse import DimseAddress, DimseOptions, c_echo
from dicomflow.connectors.dimse.address import TlsOptions
from dicomflow.connectors.dimse.association import DimseError
from tests.conftest import require
from tests.peers.orthanc import Orthanc, OrthancTls, orthanc_binary, running_orthanc


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("dicomflow-client")
    stranger = trustme.CA().issue_cert("dicomflow-client")
    paths = {
        "ca": folder / "ca.pem",
        "server_cert": folder / "server.pem",
        "server_key": folder / "server.key",
        "client_cert": folder / "client.pem",
        "client_key": folder / "client.key",
        "stranger_cert": folder / "stranger.pem",
        "stranger_key": folder / "stranger.key",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server_cert"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    stranger.cert_chain_pems[0].write_to_path(str(paths["stranger_cert"]))
    stranger.private_key_pem.write_to_path(str(paths["stranger_key"]))
    return paths


@pytest.fixture(scope="module")
def tls_orthanc(
    tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]
) -> Iterator[Orthanc]:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    tls = OrthancTls(pki["server_cert"], pki["server_key"], pki["ca"])
    with running_orthanc(tmp_path_factory.mktemp("orthanc-tls"), tls=tls) as server:
        yield server


def _options(pki: dict[str, Path], who: str = "client") -> DimseOptions:
    return DimseOptions(
        tls=TlsOptions(str(pki["ca"]), str(pki[f"{who}_cert"]), str(pki[f"{who}_key"])),
        acse_timeout=5,
        connect_timeout=5,
    )


def test_mutual_tls_echo_succeeds(tls_orthanc: Orthanc, pki: dict[str, Path]) -> None:
    result = c_echo(DimseAddress.parse(tls_orthanc.url), _options(pki))
    assert result.round_trip_ms > 0


def test_plaintext_client_is_rejected(tls_orthanc: Orthanc) -> None:
    with pytest.raises(DimseError):
        c_echo(
            DimseAddress.parse(tls_orthanc.url),
            DimseOptions(acse_timeout=5, connect_timeout=5, network_timeout=5),
        )


def test_untrusted_client_certificate_is_rejected(
    tls_orthanc: Orthanc, pki: dict[str, Path]
) -> None:
    with pytest.raises(DimseError):
        c_echo(DimseAddress.parse(tls_orthanc.url), _options(pki, "stranger"))


def test_server_not_signed_by_our_ca_is_refused(
    tls_orthanc: Orthanc, pki: dict[str, Path], tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    options = DimseOptions(
        tls=TlsOptions(str(other_ca), str(pki["client_cert"]), str(pki["client_key"])),
        acse_timeout=5,
        connect_timeout=5,
    )
    with pytest.raises(DimseError):
        c_echo(DimseAddress.parse(tls_orthanc.url), options)


@pytest.mark.parametrize(
    ("ca", "cert", "key"),
    [
        (None, None, None),
        ("ca.pem", None, None),
        (None, "me.pem", "me.key"),
        ("ca.pem", "me.pem", "me.key"),
    ],
)
def test_cli_and_spec_map_tls_files_the_same_way(
    ca: str | None, cert: str | None, key: str | None
) -> None:
    """A DIMSE peer with a certificate but no CA uses TLS from a spec exactly as from the CLI
    (specs used to need ``tls_ca`` and silently went plaintext without it)."""
    from dicomflow.api import peer_options
    from dicomflow.pipelines.endpoints import dimse_options as _dimse_options
    from dicomflow.schemas.spec import DimseSink, DimseSource

    cli, _ = peer_options(tls_ca=ca, tls_cert=cert, tls_key=key)
    files = {"tls_ca": ca, "tls_cert": cert, "tls_key": key}
    source = DimseSource(url="dimse://PACS@127.0.0.1:104", query={"PatientID": "1"}, **files)
    sink = DimseSink(url="dimse://PACS@127.0.0.1:104", **files)
    assert _dimse_options(source).tls == _dimse_options(sink).tls == cli.tls
    assert (cli.tls is None) == (ca is None and cert is None)
