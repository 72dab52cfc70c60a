"""Writing files and folders so that a crash or a bad input never leaves a half-written one behind.

Everything the package writes (memory states, adapters, checkpoints, results, figures, caches) goes through
these helpers: the content is written to a temporary sibling, which then replaces the target in one rename. A
reader sees the old file or the new one, never a mixture. With ``durable=True`` the data and the rename are also
flushed to disk before the call returns, for writes that are acknowledged to someone (a server's append).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _read_umask() -> int:
    """The process's umask, read once at import (setting it to read it is not safe once threads run)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _as_created(path: str | os.PathLike, folder: bool = False) -> None:
    """Gives a temporary file or folder the permissions ``open`` or ``mkdir`` would have (mkstemp and mkdtemp make
    them private to the owner, so results written through them were unreadable to others on a shared machine)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_UMASK)


def _sync_dir(directory: Path) -> None:
    """Flushes a folder's entries (a rename) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_file(path: str | os.PathLike) -> None:
    """Deletes ``path`` (if it is there) and flushes its folder, so that a crash cannot bring it back."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _sync_dir(path.parent)


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yields a temporary path next to ``path`` (same suffix, so writers that go by it still work); when the block
    ends without an error, the file written there replaces ``path``. On an error it is removed and ``path`` is
    left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    _as_created(tmp)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            _sync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes, durable: bool = False) -> None:
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)


def output_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot take an output file (a folder there, or no folder for it), or None: checked before a
    long run, so that its result is not lost at the end."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder; give a file name"
    if not path.parent.is_dir():
        return f"{path.parent} does not exist; create it first"
    return None


def write_text(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    with atomic_path(path, durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, value, durable: bool = False) -> None:
    """Indented JSON with a trailing newline."""
    write_text(path, json.dumps(value, indent=2) + "\n", durable)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary folder next to ``path``; when the block ends without an error it replaces
    ``path`` (an existing folder is moved aside first, then removed). On an error the temporary folder is removed
    and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    _as_created(tmp, folder=True)
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            old.rmdir()
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_figure(path: str | os.PathLike, draw, dpi: int = 150) -> None:
    """Saves the matplotlib ``Figure`` that ``draw()`` returns as a PNG (atomically), then frees it. A figure is a
    web of reference cycles that waits for Python's rare full collection: a grid that redraws its heatmap after
    every cell grew by about 1.5 MiB per drawing (72 -> 116 MiB over 30 heatmaps; flat with the collection here),
    which showed up in its peak RSS. Only this function holds the figure, so the collection finds all of it."""
    import gc

    figure = draw()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    del figure
    gc.collect()
