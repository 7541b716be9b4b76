"""Private files: what holds records, canary state or mirrored traffic is the gateway user's.

Files are created ``0600`` and directories ``0700`` (the mode given at creation: a umask can
only take bits away); existing ones are left as they are. :func:`check_private_dir` refuses a
directory tiergate would trust but another user could have prepared (e.g. in ``/dev/shm``).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from gateway.kernel.errors import UnsafePathError

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(path: Path) -> None:
    """``mkdir -p path``, each directory it creates ``0700`` (``Path.mkdir(parents=True)``
    gives the parents the default mode)."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile (another gateway process)
            directory.mkdir(mode=DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode ``0600`` unless it exists; whether it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def check_private_dir(path: Path) -> None:
    """Raise :class:`UnsafePathError` unless ``path`` is a directory (not a link to one) owned
    by this process's user that neither its group nor others can write to."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise UnsafePathError(f"{path}: {exc.strerror}") from exc
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(f"{path} is not a directory (a symbolic link?)")
    if info.st_uid != os.geteuid():
        raise UnsafePathError(f"{path} belongs to uid {info.st_uid}, not to the gateway's user "
                              f"(uid {os.geteuid()})")
    if mode & 0o022:
        raise UnsafePathError(f"{path} is writable by its group or others (mode {mode:04o})")


def writable_by_others(path: Path) -> bool:
    """Whether another user may write to the existing directory ``path`` (a warning's case)."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    return info.st_uid != os.geteuid() or bool(stat.S_IMODE(info.st_mode) & 0o022)
