"""OAuth2 against a real token issuer: panva's oidc-provider on loopback issues the tokens,
and a resource server in front of Orthanc's DICOMweb admits a request only when the
issuer's introspection endpoint says its token is active.

Client credentials and refresh tokens (obtained through the provider's own login and
consent pages) both reach the archive; a token that expires is renewed before it is
refused, a revoked one is renewed on the 401; a token endpoint that is down or refuses
the client is a clear error, and no secret reaches an output."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
import requests
from distributed import Client

import dicomflow
from dicomflow.api import DicomwebPeerConfig, load_spec
from dicomflow.connectors.dicomweb.address import (
    DicomwebAddress,
    DicomwebError,
    DicomwebOptions,
    open_client,
)
from dicomflow.connectors.dicomweb.oauth import OAuth2Bearer
from dicomflow.errors import ConfigError
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.helpers import ct_series
from tests.peers.oidc import Gate, Issuer, oidc_provider_available, running_gate, running_issuer
from tests.peers.orthanc import Orthanc, free_port, orthanc_binary, running_orthanc

SECRET_ENV = "DICOMFLOW_TEST_OAUTH_SECRET"
REFRESH_ENV = "DICOMFLOW_TEST_OAUTH_REFRESH"


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return ct_series(tmp_path_factory.mktemp("ct"), 4)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, series: list[Path]) -> Iterator[Orthanc]:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True) as server:
        for path in [PYDICOM_TEST_FILES / "MR_small.dcm", *series]:
            assert server.upload(path)
        yield server


def _issuer(tmp_path_factory: pytest.TempPathFactory, seconds: int) -> Iterator[Issuer]:
    require(oidc_provider_available(), "oidc-provider (npm, installed by make test) and node")
    with running_issuer(tmp_path_factory.mktemp("oidc"), access_token_seconds=seconds) as issuer:
        yield issuer


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    """Tokens that outlive every test (so only a revocation ends one)."""
    yield from _issuer(tmp_path_factory, 3600)


@pytest.fixture(scope="module")
def brief_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    """Tokens that live two seconds: every run outlives several."""
    yield from _issuer(tmp_path_factory, 2)


@pytest.fixture
def gate(issuer: Issuer, orthanc: Orthanc) -> Iterator[Gate]:
    with running_gate(issuer, orthanc.rest) as running:
        yield running


@pytest.fixture
def brief_gate(brief_issuer: Issuer, orthanc: Orthanc) -> Iterator[Gate]:
    with running_gate(brief_issuer, orthanc.rest) as running:
        yield running


@pytest.fixture
def secret(issuer: Issuer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SECRET_ENV, issuer.client_secret)
    return issuer.client_secret


def _client_credentials(issuer: Issuer, **more: object) -> DicomwebOptions:
    return DicomwebOptions(
        attempts=1,
        oauth_token_url=issuer.token_url,
        oauth_client_id="dicomflow",
        oauth_client_secret_env=SECRET_ENV,
        oauth_scope="dicomweb",
        **more,  # type: ignore[arg-type]
    )


def _studies(gate: Gate, options: DicomwebOptions) -> list[dict]:
    client = open_client(DicomwebAddress.parse(gate.url), options)
    return list(client.search_for_studies())


def _cli(
    *args: str, env_secret: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_secret is not None:
        env[SECRET_ENV] = env_secret
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _oauth_flags(issuer: Issuer) -> list[str]:
    return [
        *("--oauth-token-url", issuer.token_url, "--oauth-client-id", "dicomflow"),
        *("--oauth-client-secret-env", SECRET_ENV, "--oauth-scope", "dicomweb"),
    ]


def test_the_gate_refuses_a_request_without_a_token(gate: Gate) -> None:
    """The resource server is a real check: no token, no answer."""
    with pytest.raises(DicomwebError, match="HTTP 401"):
        try:
            _studies(gate, DicomwebOptions(attempts=1))
        except Exception as exc:
            raise DicomwebError.wrap("QIDO-RS", exc) from None
    assert gate.refused == [""]


def test_client_credentials_query_equals_the_open_archive(
    gate: Gate, issuer: Issuer, orthanc: Orthanc, tmp_path: Path
) -> None:
    """`dicomflow query` through the gate, with the client-credentials grant, finds what a
    query of the unprotected archive finds; the secret is in no output."""
    done = _cli(
        *("query", gate.url, "--level", "series", "-q", "Modality=*"),
        *("--out", str(tmp_path / "gated.parquet"), *_oauth_flags(issuer)),
        env_secret=issuer.client_secret,
    )
    assert done.returncode == 0, done.stderr
    assert issuer.client_secret not in done.stdout + done.stderr
    gated = pq.read_table(tmp_path / "gated.parquet")
    open_archive = dicomflow.query(orthanc.dicomweb, level="series", keys={"Modality": "*"})
    assert sorted(gated.column("SeriesInstanceUID").to_pylist()) == sorted(
        open_archive.column("SeriesInstanceUID").to_pylist()
    )
    assert gated.num_rows == 2
    assert gate.seen and not gate.refused
    assert issuer.introspect(gate.seen[0])["client_id"] == "dicomflow"


def test_a_revoked_token_is_renewed_on_the_401(gate: Gate, issuer: Issuer, secret: str) -> None:
    """An administrator revokes the token mid-run: the next request is refused once, a new
    token is obtained, and the request goes through."""
    options = _client_credentials(issuer)
    client = open_client(DicomwebAddress.parse(gate.url), options)
    assert len(client.search_for_studies()) == 2
    first = gate.seen[-1]
    issuer.revoke(first)
    assert issuer.introspect(first)["active"] is False
    assert len(client.search_for_studies()) == 2
    assert gate.refused == [first]
    second = gate.seen[-1]
    assert second != first and issuer.introspect(second)["active"] is True
    bearer = client._session.auth
    assert isinstance(bearer, OAuth2Bearer) and bearer.issued == 2
    assert secret not in repr(bearer) and first not in repr(bearer)


def test_an_expiring_token_is_renewed_before_it_is_refused(
    brief_gate: Gate, brief_issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens live two seconds; a client that waits past that asks for a new one before
    its next request, so the archive never has to refuse it."""
    monkeypatch.setenv(SECRET_ENV, brief_issuer.client_secret)
    client = open_client(DicomwebAddress.parse(brief_gate.url), _client_credentials(brief_issuer))
    assert len(client.search_for_studies()) == 2
    time.sleep(2.2)
    assert len(client.search_for_studies()) == 2
    assert len(set(brief_gate.seen)) == 2 and brief_gate.refused == []
    assert client._session.auth.issued == 2


def test_a_refresh_token_ingest_through_the_gate_equals_the_open_archive(
    brief_gate: Gate,
    brief_issuer: Issuer,
    orthanc: Orthanc,
    series: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A user logs in once (the authorization code flow, through the provider's own pages)
    and hands the refresh token to a scheduled ingest. Tokens live two seconds, so the run
    renews them as it goes; the lake equals an ingest of the unprotected archive."""
    monkeypatch.setenv(SECRET_ENV, brief_issuer.client_secret)
    monkeypatch.setenv(REFRESH_ENV, brief_issuer.refresh_token_by_login())
    study = str(pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
    options = DicomwebOptions(
        oauth_token_url=brief_issuer.token_url,
        oauth_client_id="dicomflow",
        oauth_client_secret_env=SECRET_ENV,
        oauth_refresh_token_env=REFRESH_ENV,
    )
    client = open_client(DicomwebAddress.parse(brief_gate.url), options)
    assert len(client.search_for_studies()) == 2
    assert brief_issuer.introspect(brief_gate.seen[-1])["sub"] == "alice"  # the user's token
    time.sleep(2.2)
    assert len(client.search_for_studies()) == 2
    assert brief_issuer.introspect(brief_gate.seen[-1])["sub"] == "alice"
    assert len(set(brief_gate.seen)) == 2 and brief_gate.refused == []

    query = {"StudyInstanceUID": study}
    gated = tmp_path / "gated"
    # In-process workers: they see the variables this test sets (spawned worker processes
    # inherit the environment their forkserver started with).
    with Client(processes=False, n_workers=1, threads_per_worker=2) as dask_client:
        dicomflow.ingest(
            brief_gate.url,
            out=str(gated),
            query=query,
            dicomweb=options,
            progress=False,
            client=dask_client,
        )
        dicomflow.ingest(
            orthanc.dicomweb,
            out=str(tmp_path / "open"),
            query=query,
            progress=False,
            client=dask_client,
        )
    mine = dicomflow.read_lake(str(gated))
    theirs = dicomflow.read_lake(str(tmp_path / "open"))
    assert mine.errors().num_rows == 0
    assert sorted(mine.instances().column("SOPInstanceUID").to_pylist()) == sorted(
        theirs.instances().column("SOPInstanceUID").to_pylist()
    )
    assert mine.instances().num_rows == len(series)
    assert len(brief_gate.seen) > 2 and all(brief_gate.seen)


def test_a_token_endpoint_that_is_down_is_a_clear_error(
    gate: Gate, issuer: Issuer, tmp_path: Path
) -> None:
    """Nothing listens at the token URL: the scan ends quickly, names the token endpoint,
    and prints no secret."""
    down = f"http://127.0.0.1:{free_port()}/token"
    flags = _oauth_flags(issuer)
    flags[flags.index(issuer.token_url)] = down
    started = time.monotonic()
    done = _cli(
        *("scan", gate.url, "-q", "Modality=*", "--out", str(tmp_path / "lake")),
        *("--no-progress", "--workers", "1", *flags),
        env_secret=issuer.client_secret,
        timeout=120,
    )
    assert done.returncode != 0
    assert "OAuth2 token endpoint cannot be reached" in done.stderr
    assert "Traceback" not in done.stderr
    assert issuer.client_secret not in done.stdout + done.stderr
    assert time.monotonic() - started < 60


def test_a_wrong_client_secret_is_refused_by_name(
    gate: Gate, issuer: Issuer, tmp_path: Path
) -> None:
    wrong = "not-the-secret-" + issuer.client_secret[:6]
    done = _cli(
        *("query", gate.url, "--level", "study", "-q", "PatientID=*"),
        *("--out", str(tmp_path / "t.parquet"), *_oauth_flags(issuer)),
        env_secret=wrong,
        timeout=120,
    )
    assert done.returncode != 0
    assert "refused the client credentials grant: invalid_client" in done.stderr
    assert wrong not in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert gate.seen == []  # no request reached the archive without a token


def test_oauth_settings_are_checked_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="https"):
        DicomwebOptions(
            oauth_token_url="http://idp.example/token",
            oauth_client_id="c",
            oauth_client_secret_env="S",
        )
    with pytest.raises(ConfigError, match="one way to authenticate"):
        DicomwebOptions(
            token_env="T",
            oauth_token_url="https://idp.example/token",
            oauth_client_id="c",
            oauth_client_secret_env="S",
        )
    with pytest.raises(ConfigError, match="oauth_client_id"):
        DicomwebOptions(oauth_token_url="https://idp.example/token", oauth_client_secret_env="S")
    with pytest.raises(ConfigError, match="oauth_token_url"):
        DicomwebOptions(oauth_client_id="c")
    monkeypatch.delenv(SECRET_ENV, raising=False)
    unset = DicomwebOptions(
        oauth_token_url="https://idp.example/token",
        oauth_client_id="c",
        oauth_client_secret_env=SECRET_ENV,
    )
    with pytest.raises(ConfigError, match=SECRET_ENV):
        open_client(DicomwebAddress.parse("dicomweb+https://pacs.example/dw"), unset)


def test_print_spec_carries_oauth_by_variable_name(issuer: Issuer, tmp_path: Path) -> None:
    """The spec a command line means names the variables, never their values; it
    validates as a spec."""
    done = _cli(
        *("ingest", "dicomweb+https://pacs.example/dw", "-q", "PatientID=P1"),
        *("--out", str(tmp_path / "lake"), "--print-spec", *_oauth_flags(issuer)),
        env_secret=issuer.client_secret,
    )
    assert done.returncode == 0, done.stderr
    assert f"oauth_client_secret_env: {SECRET_ENV}" in done.stdout
    assert f"oauth_token_url: {issuer.token_url}" in done.stdout
    assert issuer.client_secret not in done.stdout
    spec = tmp_path / "spec.yaml"
    spec.write_text(done.stdout)
    source = load_spec(str(spec)).source
    assert isinstance(source, DicomwebPeerConfig) and source.oauth_client_id == "dicomflow"


def _unauthorized(request: requests.PreparedRequest) -> requests.Response:
    response = requests.Response()
    response.status_code = 401
    response.request = request
    response._content = b""
    return response


def test_a_401_after_a_redirect_to_another_host_never_gets_the_token() -> None:
    """requests drops our header when a redirect leaves the host; the 401 that host answers
    must come back as it is, without a token fetched or sent (the token URL here is
    unreachable: asking it would raise)."""
    from dicomflow.connectors.dicomweb.oauth import OAuth2Bearer, TokenGrant

    bearer = OAuth2Bearer(
        TokenGrant(f"http://127.0.0.1:{free_port()}/token", "dicomflow", "secret")
    )
    redirected = requests.Request("GET", "https://elsewhere.example/dicom-web/studies").prepare()
    answer = _unauthorized(redirected)
    assert bearer._retry_unauthorized(answer) is answer
    assert bearer.issued == 0 and "Authorization" not in redirected.headers


def test_a_streamed_body_is_not_sent_twice(issuer: Issuer, secret: str) -> None:
    """A 401 to a request whose body was a generator (dicomweb-client streams STOW bodies
    over 1 MB): the token is renewed for the next request, and the 401 comes back."""
    from dicomflow.connectors.dicomweb.oauth import OAuth2Bearer, TokenGrant

    bearer = OAuth2Bearer(TokenGrant(issuer.token_url, "dicomflow", secret))
    request = requests.Request(
        "POST", "http://127.0.0.1:9/dicom-web/studies", data=(b"x" for _ in range(3))
    ).prepare()
    bearer(request)
    first = bearer._access_token
    answer = _unauthorized(request)
    assert bearer._retry_unauthorized(answer) is answer
    assert bearer.issued == 2 and bearer._access_token != first
