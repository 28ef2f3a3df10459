"""Object-store emulators for tests: Google Cloud Storage and Azure Blob Storage on loopback.

- ``gcp-storage-emulator`` (PyPI, the ``dev`` extra) serves the GCS JSON API that
  gcsfs speaks.
- Azurite (npm, installed into ``.tools/`` by ``.ci/run``) is Microsoft's own Blob
  Storage emulator, which adlfs reaches through a connection string.

Each yields a :class:`Bucket`: the URL scheme, the fsspec options a user would pass with
``--storage-option``, and the secret in them that must never reach an output.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fsspec

from tests.peers.dcmtk import running_process
from tests.peers.orthanc import free_port

REPO = Path(__file__).resolve().parents[2]

# Azurite's well-known development account (published in Azure's documentation).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass(frozen=True)
class Bucket:
    """A running object store: its scheme, the fsspec options to reach it, its secret."""

    scheme: str
    storage_options: dict
    port: int
    secret: str | None = None

    def url(self, path: str) -> str:
        return f"{self.scheme}://{path}"

    def through(self, port: int) -> Bucket:
        """The same store reached through another loopback port (a proxy in front)."""
        options = {
            key: value.replace(f"127.0.0.1:{self.port}", f"127.0.0.1:{port}")
            for key, value in self.storage_options.items()
        }
        return Bucket(self.scheme, options, port, self.secret)

    def filesystem(self) -> fsspec.AbstractFileSystem:

        return fsspec.filesystem(self.scheme, skip_instance_cache=True, **self.storage_options)


def gcs_emulator_binary() -> str | None:
    candidate = Path(sys.executable).parent / "gcp-storage-emulator"
    return str(candidate) if candidate.exists() else shutil.which("gcp-storage-emulator")


def azurite_binary() -> str | None:
    candidate = REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    return str(candidate) if candidate.exists() else shutil.which("azurite-blob")


@contextmanager
def running_gcs_emulator(workdir: Path) -> Iterator[Bucket]:
    """gcp-storage-emulator in memory; anonymous access, as the emulator has no accounts."""
    binary = gcs_emulator_binary()
    if binary is None:
        raise FileNotFoundError("gcp-storage-emulator is not installed")
    port = free_port()
    command = [binary, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"]
    with running_process(
        command, port, workdir / "gcs-emulator.log", "gcp-storage-emulator", env=None, timeout=60
    ):
        yield Bucket(
            "gs",
            {"endpoint_url": f"http://127.0.0.1:{port}", "token": "anon", "project": "test"},
            port,
        )


@contextmanager
def running_azurite(workdir: Path) -> Iterator[Bucket]:
    """Azurite's blob service, its data under ``workdir``; reached with a connection string."""
    binary = azurite_binary()
    if binary is None:
        raise FileNotFoundError("Azurite is not installed (npm install --prefix .tools azurite)")
    port = free_port()
    command = [
        binary,
        *("--blobHost", "127.0.0.1", "--blobPort", str(port)),
        *("--location", str(workdir / "azurite"), "--silent"),
        "--skipApiVersionCheck",  # adlfs's SDK may be newer than the emulator
        "--loose",
    ]
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )
    with running_process(command, port, workdir / "azurite.log", "Azurite", env=None, timeout=60):
        yield Bucket("az", {"connection_string": connection}, port, secret=AZURITE_KEY)
