"""Local paths for inputs that may live in a bucket: what C-STORE and STOW need.

pynetdicom and the STOW writer read files from disk. Local inputs are used
where they are; remote ones (``s3://``, ``gs://``, …) are fetched with fsspec
into a private temporary folder that is removed afterwards.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem


@contextmanager
def local_copies(
    urls: Sequence[str], storage_options: dict[str, Any] | None = None
) -> Iterator[dict[str, Path]]:
    """Yield ``{url: local path}`` for every URL; raises ``OSError`` if one cannot be
    fetched. Fetched copies are named by position, never by a value from the URL."""
    local: dict[str, Path] = {}
    remote: list[str] = []
    for url in urls:
        if "://" not in url:  # a plain local path, used as it is
            local[url] = Path(url)
            continue
        fs, path = url_to_fs(url, **(storage_options or {}))
        if isinstance(fs, LocalFileSystem):
            local[url] = Path(path)
        else:
            remote.append(url)
    if not remote:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="dicomflow-send-") as scratch:
        for number, url in enumerate(remote):
            fs, path = url_to_fs(url, **(storage_options or {}))
            target = Path(scratch) / f"{number}.dcm"
            fs.get_file(path, str(target))
            local[url] = target
        yield local
