"""Output folders as untrusted ground: checked before any computing, locked while written, files staged and renamed.

* :func:`prepare_folder` refuses an empty name, a folder under a file, a file where the folder should be and a
  folder that cannot be written — in milliseconds, before a network is loaded; it creates the folder.
* :class:`FolderLock` holds an exclusive lock (``fcntl.flock`` on ``.cnnkit.lock``) while a command writes into the
  folder: a second command naming the same folder is refused, naming the holder (its pid, host, start and command
  line). The operating system drops the lock when the holder ends, even by ``kill -9``.
* :class:`Staging` gives each output a hidden temporary name beside its final one (created with the user's umask) and
  renames them all into place once every one is complete (:meth:`Staging.commit`). A final name that is a symlink is
  replaced by the file, never written through; an error (a full disk, a damaged input) removes the temporary files,
  so nothing appears under a final name.

Examples:
    >>> import tempfile, os
    >>> out = prepare_folder(os.path.join(tempfile.mkdtemp(), "predictions"))
    >>> with FolderLock(out), Staging() as staging:
    ...     _ = open(staging.path(out / "a.txt"), "w").write("done")
    >>> sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    ['a.txt']
    >>> prepare_folder("")
    Traceback (most recent call last):
    ...
    cnnkit.errors.CnnkitError: --out must name a folder. Received out=''.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import socket
import sys
from pathlib import Path

from cnnkit.errors import CnnkitError
from cnnkit.rasters.boundary import disk_full

__all__ = ["LOCK_NAME", "FolderLock", "Staging", "prepare_folder", "remove_leftovers"]

LOCK_NAME = ".cnnkit.lock"
"""The lock file a writing command holds in its output folder (left in place: removing it would race)."""

_LEFTOVER = re.compile(r"^\..+\.\d+\.(partial|staged|cog)(\.[^.]+)?(\.aux\.xml)?$")
"""Temporary names of cnnkit's writers: ``.NAME.PID.partial.EXT``, ``.NAME.PID.staged.EXT``, ``.NAME.PID.cog.tif``."""


def prepare_folder(out: str | os.PathLike, option: str = "--out") -> Path:
    """Check that ``out`` can be a writable output folder and create it; return it as a :class:`~pathlib.Path`.

    Args:
        out: The folder.
        option: How the user named it (in messages).

    Raises:
        CnnkitError: an empty name, a file at ``out`` or above it, or a folder that cannot be created or written
            (naming the option, the rule and the value).
    """
    text = os.fspath(out)
    if not text.strip():
        raise CnnkitError(f"{option} must name a folder. Received out={text!r}.")
    path = Path(text)
    for above in (path, *path.parents):
        if above.exists() or above.is_symlink():
            if not above.is_dir():
                where = "is" if above == path else f"lies under {os.fspath(above)!r}, which is"
                raise CnnkitError(f"{option} must be a folder. Received out={text!r}, which {where} a file.")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".cnnkit-probe.{os.getpid()}"
        probe.unlink(missing_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
        probe.unlink()
    except OSError as err:
        raise CnnkitError(f"{option} {text!r} cannot be written: {err.strerror or err}. Choose a folder you can "
                          "write to.") from err
    return path


class FolderLock:
    """An exclusive lock on an output folder while a command writes into it (``with FolderLock(out): ...``).

    Raises:
        CnnkitError: another command holds it (naming its pid, host, start time and command line).
    """

    def __init__(self, folder: str | os.PathLike, command: str | None = None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self._file = None

    def acquire(self) -> FolderLock:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as err:
            raise CnnkitError(f"Could not lock the output folder {os.fspath(self.folder)!r}: {err.strerror or err}.") \
                from err
        file = os.fdopen(fd, "r+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = file.read().strip()
            file.close()
            try:
                who = json.loads(holder)
                named = (f"pid {who.get('pid')} on {who.get('host')}, started {who.get('started')}: "
                         f"{who.get('command')}")
            except (ValueError, AttributeError):
                named = "another process"
            raise CnnkitError(f"The output folder {os.fspath(self.folder)!r} is being written by another command "
                              f"({named}). Wait for it to finish, or choose another --out.") from None
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                               "command": self.command}))
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.seek(0)
                self._file.truncate()
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files an interrupted run left in ``folder`` (hidden ``.NAME.PID.partial.EXT``,
    ``.NAME.PID.staged.EXT``, ``.NAME.PID.cog.tif``); call it only while holding the folder's :class:`FolderLock`.
    Returns what was removed."""
    removed = []
    for entry in Path(folder).iterdir():
        if _LEFTOVER.match(entry.name) and (entry.is_file() or entry.is_symlink()):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


class Staging:
    """Temporary names for a group of output files, renamed into place together once all are complete.

    ``with Staging() as staging:`` — write each output to ``staging.path(final)``; leaving the block without an
    error renames every one into place (``os.replace``: a symlink under the final name is replaced, its target
    untouched); an error removes them all and is raised again (an ``OSError`` as a :class:`CnnkitError` naming the
    file, a full disk said so).
    """

    def __init__(self):
        self._pairs: list[tuple[Path, Path]] = []

    def path(self, final: str | os.PathLike) -> Path:
        """The temporary name for ``final`` (in the same folder, so the rename is atomic)."""
        final = Path(final)
        temporary = final.with_name(f".{final.name}.{os.getpid()}.staged{final.suffix}")
        temporary.unlink(missing_ok=True)
        self._pairs.append((temporary, final))
        return temporary

    @property
    def finals(self) -> list[Path]:
        return [final for _, final in self._pairs]

    def commit(self) -> list[Path]:
        """Rename every staged file into place; returns the final names."""
        for temporary, final in self._pairs:
            try:
                if final.is_dir() and not final.is_symlink():
                    raise CnnkitError(f"Could not write {final}: a folder has that name.")
                os.replace(temporary, final)
            except OSError as err:
                raise CnnkitError(f"Could not write {final}: {err.strerror or err}.") from err
        finals, self._pairs = self.finals, []
        return finals

    def abort(self) -> None:
        """Remove every staged file (nothing appears under a final name)."""
        for temporary, _ in self._pairs:
            for leftover in (temporary, temporary.with_name(temporary.name + ".aux.xml")):
                leftover.unlink(missing_ok=True)
        self._pairs = []

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
            return
        names = ", ".join(final.name for final in self.finals)
        self.abort()
        if isinstance(error, OSError):
            what = "the disk is full (or a file size limit was reached)" if disk_full(error) else (
                error.strerror or str(error))
            raise CnnkitError(f"Could not write {names}: {what}. The partial files were removed.") from error
        if isinstance(error, CnnkitError) and disk_full(error):
            raise CnnkitError(f"{error} The partial files were removed ({names}).") from error
