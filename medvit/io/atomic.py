"""Atomic writes: a temporary file or folder beside the target, then a rename.

A failure at any point (an exception in the writer, a failed check after writing, Ctrl-C) removes the
temporary file or folder, so a reader never sees a partial output under the final name. What is renamed
into place gets the permissions of a new file under the process umask (``0o644``/``0o755`` under umask
``022``), not the owner-only modes that :mod:`tempfile` creates, so colleagues can read shared outputs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path


def _suffix(path: Path) -> str:
    """Keep multi-part suffixes such as ``.nii.gz`` so that writers that sniff the name still work."""
    name = path.name
    for multi in (".nii.gz", ".tar.gz"):
        if name.endswith(multi):
            return multi
    return path.suffix


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``), else set and restored."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def _file_mode(mode: int, umask: int) -> int:
    """A new file's permissions (executables stay executable)."""
    return (0o777 if mode & stat.S_IXUSR else 0o666) & ~umask


def _set_modes(folder: Path, umask: int) -> None:
    """Folders ``0o777 & ~umask``, files ``0o666 & ~umask`` under ``folder`` (itself included); links untouched."""
    os.chmod(folder, 0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                os.chmod(path, 0o777 & ~umask)
            elif stat.S_ISREG(st.st_mode):
                os.chmod(path, _file_mode(st.st_mode, umask))


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree (a link is removed, never followed)."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    The parent folder is created if needed and the file gets ``0o666 & ~umask``. On any exception
    (``KeyboardInterrupt`` included) the temporary file is removed and the exception propagates; an existing
    ``target`` is left untouched.
    """
    target = Path(target)
    umask = current_umask()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + _suffix(target), dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode(os.stat(tmp).st_mode, umask))
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


atomic_path = atomic_file  # the former name (medvit.io's writers, backbones.checkpoints.save_backbone)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success rename it onto ``target``.

    The folder is ``.{name}.XXXXXXXX.tmp`` in ``target``'s parent (created if needed). On success everything
    the writer made gets the modes of new files and folders under the umask (``0o644``/``0o755`` under
    ``022``), then the folder is renamed onto ``target``. With ``overwrite`` an existing ``target`` is first
    moved aside, the new folder renamed in, then the old one removed: a reader finds the old folder, the new
    one, or (for that instant) neither, never a mixture; writers that may race hold a :func:`file_lock`. On
    any exception (``KeyboardInterrupt`` included) the temporary folder is removed, the exception propagates
    and an existing ``target`` is untouched.

    Raises:
        FileExistsError: ``target`` exists (checked when the writer is done) and ``overwrite`` is false.
    """
    target = Path(target)
    umask = current_umask()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _set_modes(tmp, umask)
        _rename_dir(tmp, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on the file ``path`` for the block, and remove the file when
    the block ends; the lock is released when the process dies. ``path`` is created if needed and never
    followed when it is a link. A process that waited on a file that its holder then removed locks the new
    file instead (it compares the inodes), so two processes never both hold ``path``.

    Raises:
        BlockingIOError: ``wait`` is false and another process holds the lock.
        OSError: ``path`` cannot be created or opened.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            try:
                held = os.fstat(fd)
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue  # the holder removed it while we waited: lock the next one
            if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                continue
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # before the lock is released, so no one locks a removed file
            return
        finally:
            os.close(fd)


STAGING_SUFFIX = ".partial"


def remove_stale_staging(folder: str | os.PathLike) -> None:
    """Remove staging folders that :func:`atomic_files` left in ``folder`` when its process was killed. Call it
    only while no other writer uses ``folder`` (predict holds the folder's lock)."""
    for stale in Path(folder).glob(f".*{STAGING_SUFFIX}"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike, names: Iterable[str], *, stage: str = "") -> Iterator[Path]:
    """Yield a hidden staging folder inside ``folder``; on success move each of ``names`` from it into ``folder``.

    For several files that belong together (one case's outputs in a shared output folder): the writer writes
    them under their own names into the staging folder (``.{stage}.XXXXXXXX.partial``), and they are moved
    into ``folder`` (replacing files of those names) with the modes of new files under the umask only once the
    writer is done. On any exception (``KeyboardInterrupt`` included) none is moved and the staging folder is
    removed.
    """
    folder = Path(folder)
    names = list(names)
    umask = current_umask()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stage}.", suffix=STAGING_SUFFIX, dir=folder))
    try:
        yield tmp
        for name in names:
            os.chmod(tmp / name, _file_mode(os.stat(tmp / name).st_mode, umask))
        for name in names:
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rename_dir(tmp: Path, target: Path, *, overwrite: bool) -> None:
    exists = os.path.lexists(target)
    if exists and not overwrite:
        raise FileExistsError(errno.EEXIST, "already exists", str(target))
    if not exists:
        try:
            os.rename(tmp, target)
        except OSError as exc:  # created meanwhile (renaming a folder onto a full one fails with ENOTEMPTY)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(errno.EEXIST, "already exists", str(target)) from None
            raise
        return
    aside = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(aside, target)
        raise
    _remove(aside)
