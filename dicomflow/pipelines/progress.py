"""A progress bar with count, rate and ETA, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
from types import TracebackType

from tqdm import tqdm


class Progress:
    """Counts inputs as partitions finish. Silent when output is not a terminal."""

    def __init__(
        self,
        total: int,
        *,
        enabled: bool | None = None,
        unit: str = "file",
        description: str | None = None,
    ) -> None:
        show = sys.stderr.isatty() if enabled is None else enabled
        self._bar = tqdm(
            total=total,
            unit=unit,
            desc=description,
            disable=not show,
            dynamic_ncols=True,
            smoothing=0.1,
        )

    def advance(self, n: int) -> None:
        self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.close()
