"""The central's files are its own, whatever the umask: data directory 0700; the database (and
the -wal/-shm files SQLite adds beside it), the SSH key and every secret 0600.

The database holds every password hash, token hash and agent secret, so "readable by other
local users" is the same as "handed to them". SQLite creates its -wal and -shm files with the
mode of the database file itself, so a database created 0600 keeps them 0600 too.

Run as root on a data directory that belongs to the central's own user (an operator's
`sudo central ...`), new files are given to that user, as SQLite does for its own files, so
the central can still open them afterwards.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
DB_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _owner_of(directory: Path) -> tuple[int, int] | None:
    """(uid, gid) new files in directory should get: its owner's, when we are root and it is not."""
    if os.geteuid() != 0:
        return None
    st = directory.stat()
    return (st.st_uid, st.st_gid) if st.st_uid != 0 else None


def _tighten(path: Path, mode: int) -> None:
    """chmod path to mode if it is ours and looser (never follows a link)."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or (st.st_uid != os.geteuid() and os.geteuid() != 0):
        return
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
        log.warning("%s was mode %o, now %o (the central's files are for its own user only)",
                    path, stat.S_IMODE(st.st_mode), mode)


def private_dir(path: str | Path) -> Path:
    """Create directory path (and missing parents) and make it 0700; returns it."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        owner = _owner_of(path.parent)
        if owner:
            os.chown(path, *owner)
    _tighten(path, DIR_MODE)
    return path


def create_private(path: str | Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write a new file (FileExistsError if there is one) with exactly mode, whatever the umask."""
    path = Path(path)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; mode is what was asked for
        owner = _owner_of(path.parent)
        if owner:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
    finally:
        if fd >= 0:
            os.close(fd)


def private_file(path: str | Path) -> None:
    """Make an existing file of ours 0600 (a key or secret written before this rule)."""
    _tighten(Path(path), FILE_MODE)


def prepare_database(path: str | Path) -> None:
    """Before SQLite opens path: a missing directory is created 0700, the database file exists
    0600 (so -wal/-shm are created 0600 too), and files of an older install are tightened."""
    path = Path(path)
    if not path.parent.is_dir():
        private_dir(path.parent)
    if not path.exists():
        try:
            create_private(path, b"")
        except FileExistsError:  # another process created it just now
            pass
    for suffix in DB_SUFFIXES:
        extra = Path(str(path) + suffix)
        if extra.exists():
            _tighten(extra, FILE_MODE)


class AlreadyServing(Exception):
    """Another process holds the data directory's serve lock; args: (lock path, its pid or None)."""


#: the open lock file of this process' `central serve` (held until the process ends)
_serve_lock: int | None = None


def lock_data_dir(data_dir: str | Path) -> Path:
    """Take the exclusive lock on DATA_DIR/serve.lock for the life of this process (flock:
    released by the kernel when the process ends, however it ends) and write our pid in it.
    Raise AlreadyServing with the holder's pid when another `central serve` has it."""
    import fcntl

    global _serve_lock
    path = Path(data_dir) / "serve.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        raise AlreadyServing(path, int(text) if text.isdigit() else None) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    if _serve_lock is not None:
        os.close(_serve_lock)
    _serve_lock = fd
    return path


def unlock_data_dir() -> None:
    """Release the serve lock this process holds (when `central serve` returns)."""
    global _serve_lock
    if _serve_lock is not None:
        os.close(_serve_lock)
        _serve_lock = None
