"""GDCM's codecs write their messages to the process's standard error themselves.

The OpenJPEG built into python-gdcm prints straight to file descriptor 2
(OpenJPEG's "Invalid number of tiles…" for a damaged codestream), past Python's
logging and past ``gdcm.Trace``, which governs GDCM's own messages only. Those lines
went raw to the terminal, through the progress bar, although the failure is already
an error row. While pydicom's GDCM plugin decodes a frame, descriptor 2 points at a
temporary file here; what the codecs wrote becomes DEBUG lines of
``dicomflow.libraries.gdcm`` (``-vv``), one a line, as the other libraries' records do.

Descriptor 2 belongs to the whole process, so anything another thread writes to it
during a GDCM decode is demoted the same way; a lock keeps two decodes from swapping
it at once. Workers run one task thread each, and a frame decodes in milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.pixels.decoders.base import Decoder

from dicomflow.logs import LIBRARIES

LABEL = "gdcm"  # pydicom's name for its python-gdcm plugin
MAX_KEPT = 64 * 1024  # bytes of a decode's messages kept; a codec looping on a message stops here
logger = logging.getLogger(f"{LIBRARIES}.{LABEL}")
_swap = threading.Lock()


@contextlib.contextmanager
def standard_error_at_debug(target: logging.Logger = logger) -> Iterator[None]:
    """Point file descriptor 2 at a temporary file while the block runs, then log each
    line written there at DEBUG on ``target``."""
    written = b""
    try:
        with _swap, tempfile.TemporaryFile() as capture:
            with contextlib.suppress(Exception):
                sys.stderr.flush()  # Python's own buffered text goes out where it was meant to
            saved = os.dup(2)
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                written = capture.read(MAX_KEPT)
    finally:  # a failed decode is when codecs have most to say
        for line in written.decode("utf-8", "replace").splitlines():
            if line.strip():
                target.debug("%s", line.strip())


class QuietFrameDecoder:
    """A pydicom frame decoder (``(src, runner) -> bytes``) run under
    :func:`standard_error_at_debug`."""

    def __init__(self, decode_frame: Callable[[bytes, Any], bytes]) -> None:
        self.decode_frame = decode_frame

    def __call__(self, src: bytes, runner: Any) -> bytes:
        with standard_error_at_debug():
            return self.decode_frame(src, runner)


def quiet_gdcm(decoder: Decoder) -> None:
    """Wrap ``decoder``'s GDCM plugin in :class:`QuietFrameDecoder`, in place, keeping
    pydicom's order of plugins (idempotent). pydicom has no public call that replaces
    a plugin where it stands: removing and adding it again would move GDCM last and
    change which backend decodes JPEG-LS and colour JPEG."""
    plugins = getattr(decoder, "_available", None)
    if not isinstance(plugins, dict):
        return
    plugin = plugins.get(LABEL)
    if plugin is not None and not isinstance(plugin, QuietFrameDecoder):
        plugins[LABEL] = QuietFrameDecoder(plugin)
