"""Writing a file so that readers never see half of it: write a temp file beside it, then rename.

A rename within one directory is atomic, so a reader (a resumed sweep, kubectl, tritonserver,
a report viewer) sees the old file or the new one. The new file gets the mode a plain write
would give it (0666 less the umask), not mkstemp's private 0600: these files are for sharing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing", "shared_file_mode", "write_text_atomic"]


def shared_file_mode() -> int:
    """rw for everyone the umask allows, as ``open(path, "w")`` would create the file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temp path beside ``path``; write it, and on a clean exit it replaces ``path``.

    On an exception the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, shared_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temp file, flushed to disk before the rename."""
    with replacing(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)
