"""Run fsspec filesystems' closing finalizers while their event loop still runs.

zarr opens a bucket lake's filesystem on zarr's own event loop and stops that loop at
interpreter exit. adlfs closes its Azure clients in a ``weakref.finalize`` that calls
``fsspec.asyn.sync(loop, …)``; run after zarr's exit hook, it finds the loop stopped
and prints "RuntimeError: Loop is not running" after every command that wrote pixels
to ``az://`` (fsspec/adlfs#495); one made inside zarr's loop even holds no loop at all.
An exit hook registered after zarr's runs before it (atexit runs hooks last in, first
out): each such finalizer runs on its own loop, or on zarr's when it names none.
"""

from __future__ import annotations

import atexit
import functools
import logging
import weakref

from fsspec.asyn import sync

logger = logging.getLogger(__name__)


@functools.cache
def close_filesystems_before_loops_stop() -> None:
    """Register, once per process, the exit hook; call it after zarr is imported."""
    atexit.register(_run_loop_finalizers)


def _run_loop_finalizers() -> None:
    from zarr.core.sync import sync as zarr_sync  # imported already: the hook follows zarr

    registry = getattr(weakref.finalize, "_registry", {})
    for finalizer in list(registry):
        pending = finalizer.peek()
        if pending is None or pending[1] is not sync or len(pending[2]) < 2:
            continue
        loop, close, *arguments = pending[2]
        try:
            if loop is None:  # made inside zarr's loop: close it there
                finalizer.detach()
                zarr_sync(close(*arguments))
            elif loop.is_running():
                finalizer()
        except Exception as exc:  # closing a client must never fail the exit
            logger.debug("closing a filesystem at exit failed (%s)", type(exc).__name__)
