"""Periodic housekeeping of a serving process, and the memory allocator's settings.

* :func:`tune_allocator`: glibc's malloc serves large requests from the heap once the dynamic mmap
  threshold has grown (up to 32 MiB), and the heap keeps freed memory, so a burst of large uploads left
  the process hundreds of MiB above its resting size. A fixed threshold (``settings.malloc_mmap_threshold``,
  256 KiB by default) keeps every large buffer in its own mapping, returned to the system when freed.
  ``MALLOC_MMAP_THRESHOLD_`` in the environment wins. No-op off glibc.
* :func:`housekeeping_loop`: every ``settings.housekeeping_seconds``, remove the temporary media files
  (``.tmp-*``) older than ``settings.orphan_grace_seconds`` that a killed upload left (not only at
  start), and hand freed heap memory back to the system (``malloc_trim``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
from typing import Any

from service.settings import Settings
from service.store.storage import clean_temporary

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3


def _libc() -> Any | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # pragma: no cover
        return None


def tune_allocator(settings: Settings) -> bool:
    """Fix glibc's mmap threshold (see the module docstring). Returns whether it was set."""
    if settings.malloc_mmap_threshold <= 0 or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(settings.malloc_mmap_threshold)))


def trim_heap() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def housekeep(settings: Settings) -> int:
    """One round: old temporary media files, then the heap. Returns the files removed."""
    removed = clean_temporary(settings.media_path, grace_seconds=settings.orphan_grace_seconds)
    trim_heap()
    return removed


async def housekeeping_loop(settings: Settings) -> None:
    """Run :func:`housekeep` every ``settings.housekeeping_seconds`` until cancelled."""
    while True:
        await asyncio.sleep(settings.housekeeping_seconds)
        try:
            await asyncio.to_thread(housekeep, settings)
        except Exception:  # never let housekeeping take the service down
            logger.warning("housekeeping failed", exc_info=True)


def start_housekeeping(state: Any, settings: Settings) -> None:
    """Start the loop as a task kept on ``state`` (see :func:`stop_housekeeping`)."""
    state.housekeeping = (asyncio.get_running_loop().create_task(housekeeping_loop(settings))
                          if settings.housekeeping_seconds > 0 else None)


async def stop_housekeeping(state: Any) -> None:
    task = getattr(state, "housekeeping", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
