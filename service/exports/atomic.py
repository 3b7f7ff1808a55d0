"""Write a file so that a reader never sees half of it: a temporary file next to the target, renamed."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(out: Path, mode: str = "w", **open_args: Any) -> Iterator[IO[Any]]:
    """Open a temporary file in ``out``'s folder; on success it replaces ``out``, on any error it is removed.

    ``mode`` and ``open_args`` are those of :func:`open` (``"wb"``, or ``"w"`` with ``newline=""`` and an
    encoding).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, mode, **open_args) as fh:
            yield fh
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
