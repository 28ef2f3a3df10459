"""Where things go in a lake, and the rule for path components made from DICOM values."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs

from dicomflow.errors import ConfigError
from dicomflow.urls import in_scheme_of

_UID = re.compile(r"^[0-9.]{1,64}$")
TABLES = ("instances", "errors", "series")
TABLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")  # what an operator may name a table
PIXELS_ROOT = "pixels.zarr"  # stacks at pixels.zarr/<study>/<series>/<stack>
STACK_DEPTH = 4  # path components from the lake root to a stack


def safe_uid_component(value: str) -> str:
    """A path component from a DICOM value: the UID itself if it is one, else a hash of it."""
    if _UID.fullmatch(value) and value not in (".", "..") and ".." not in value:
        return value
    return "h" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class LakeLayout:
    """A lake root plus storage options; pickles by its arguments like an fsspec URL."""

    root: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigError("the lake path is empty")
        if "://" not in self.root:
            # Resolved here, on the client: workers may run in another directory.
            object.__setattr__(self, "root", str(Path(self.root).absolute()))

    def filesystem(self) -> tuple[Any, str]:
        """The lake's filesystem and root path. Listings cached by an earlier call are
        dropped: other processes (workers, other runs) write to the lake too."""
        fs, path = url_to_fs(self.root, **self.storage_options)
        fs.invalidate_cache()
        return fs, path.rstrip("/")

    def is_local(self) -> bool:
        """True when the lake is a local directory (renames are atomic there)."""
        return self._local

    @functools.cached_property
    def _local(self) -> bool:  # asked several times a stack; the answer never changes
        fs, _ = self.filesystem()
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        return bool({"file", "local"} & set(protocols))

    def url(self, path: str) -> str:
        """``path`` (as :meth:`filesystem` paths are) as a URL any process can open; a
        plain path for a local lake."""
        fs, _ = self.filesystem()
        return path if self.is_local() else in_scheme_of(self.root, fs, path)

    def table_dir(self, table: str) -> str:
        """The folder of a table: a built-in one, or one an operator declared (snake_case,
        so a name never leaves the lake's top level)."""
        if table not in TABLES and not TABLE_NAME.fullmatch(table):
            raise ConfigError(f"not a lake table name: {table!r}")
        _, root = self.filesystem()
        return f"{root}/{table}"
