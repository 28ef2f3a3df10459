"""The safe-private list (PS3.15 E.3.10): private attributes kept by Retain Safe Private.

Entries are keyed by private creator, group and element offset within the
block, because the same private tag means different things under different
creators. The shipped list can be extended per project.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

SAFE_PRIVATE_FILE = "safe_private.json"

SafePrivateKey = tuple[int, str, int]  # (group, creator, element offset 0x00-0xFF)


def safe_private_key(group: int, creator: str, offset: int) -> SafePrivateKey:
    return (group, creator.strip().upper(), offset)


def _entries(rows: Iterable[Mapping[str, Any]]) -> frozenset[SafePrivateKey]:
    return frozenset(
        safe_private_key(int(row["group"], 16), str(row["creator"]), int(row["element"], 16))
        for row in rows
    )


@cache
def default_safe_private() -> frozenset[SafePrivateKey]:
    """The safe private attributes shipped with the package."""
    text = resources.files("dicomflow.anonymize").joinpath("data", SAFE_PRIVATE_FILE).read_text()
    return _entries(json.loads(text)["attributes"])


def load_safe_private(path: str) -> frozenset[SafePrivateKey]:
    """Extra entries from a project JSON file with the same ``attributes`` rows."""
    with Path(path).open(encoding="utf-8") as fp:
        return _entries(json.load(fp)["attributes"])
