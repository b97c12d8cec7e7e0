"""One run per output directory: an exclusive lock that names its holder to the process it refuses.

The lock is the kernel's (`fcntl.flock` on a small file): it drops it when the process ends, however it ends (kill -9
included), so a lock file left behind never blocks a rerun; forked children (DataLoader workers) close their copy, so
none outlives the run. The file holds the holder's pid, host and command line, and is removed on release. `synthesize` and `distill` keep it inside OUT (`LOCK_NAME`, never a shard name),
`export` beside OUT (its OUT appears only when complete). Under torchrun rank 0 holds it for every rank (`held`).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from synth.common.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None

if TYPE_CHECKING:
    from synth.common.distributed import Ranks

LOCK_NAME = ".dfkd-lock"
_REFUSED = (errno.EACCES, errno.EAGAIN)  # another process holds it
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS)
_HELD: dict[str, int] = {}  # lock file -> descriptor, for this process's locks


class OutputLock:
    """A held lock; `release` removes the file, then the directory when this lock created it and it stayed empty."""

    def __init__(self, path: Optional[Path] = None, fd: Optional[int] = None, created: tuple[Path, ...] = ()):
        self.path, self._fd, self._created = path, fd, created

    def release(self) -> None:
        """Give the lock back (once): unlink while still holding it, so no process takes a file no longer there."""
        if self._fd is not None and _HELD.get(os.path.realpath(self.path)) == self._fd:  # not in a forked child
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            del _HELD[os.path.realpath(self.path)]
        self._fd = None
        for folder in self._created:  # deepest first, each only when empty: a refused run leaves no directory
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = ()


def lock_file(out: str | Path, beside: bool = False) -> Path:
    """Where OUT's lock lives: OUT/.dfkd-lock, or `.NAME.dfkd-lock` next to OUT (`beside`)."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}{LOCK_NAME}" if beside else out / LOCK_NAME


def acquire(out: str | Path, beside: bool = False, message: Optional[Callable[[str], None]] = None) -> OutputLock:
    """Take OUT's lock (creating OUT, or with `beside` its parent, when missing), or refuse at once with a UserError
    naming the holder. A directory this process cannot write gets no lock (the run cannot write there either)."""
    out = Path(out)
    if not beside and out.exists() and not out.is_dir():
        raise UserError(f"output '{out}' exists and is not a directory")
    folder = out.absolute().parent if beside else out
    if folder.exists() and not folder.is_dir():
        raise UserError(f"'{folder}' is not a folder, so it cannot hold '{out.name}'")
    path = lock_file(out, beside)
    if os.path.realpath(path) in _HELD:
        raise UserError(f"'{out}' is already in use by this process; choose another output directory")
    created = _make_folder(folder)
    try:
        fd = _take(out, path, message)
    except BaseException:
        OutputLock(created=created).release()
        raise
    if fd is None:
        return OutputLock(created=created)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(holder()).encode())
    _HELD[os.path.realpath(path)] = fd
    return OutputLock(path, fd, created)


def _take(out: Path, path: Path, message: Optional[Callable[[str], None]]) -> Optional[int]:
    """The locked file descriptor of `path`; None where there is nothing to lock (no fcntl, a folder this process
    cannot write, a file system without locks)."""
    if fcntl is None:
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return None  # read-only here: this run can damage nothing, and a finished rerun writes nothing
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in _REFUSED:
                raise UserError(_refusal(out, path)) from None
            if exc.errno in _UNSUPPORTED:
                (message or _stderr)(f"note: '{path.parent}' has no file locks; make sure no other run writes there")
                return None
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)  # its holder removed it while we opened it: take the new one


@contextmanager
def held(
    out: str | Path,
    ranks: Optional[Ranks] = None,
    message: Optional[Callable[[str], None]] = None,
    beside: bool = False,
) -> Iterator[None]:
    """Hold OUT's lock for the block. Under torchrun rank 0 takes it while the other ranks wait, and all of them
    raise when it is refused (`Ranks.together`): the ranks of one run count as one, and a refused run does nothing."""
    lock = None
    if ranks is None or not ranks.distributed:
        lock = acquire(out, beside, message)
    else:
        with ranks.together():
            if ranks.rank == 0:
                lock = acquire(out, beside, message)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def holder() -> dict:
    """What the lock file says about this process."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command_line(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def command_line(limit: int = 300) -> str:
    """This process's command line as a shell would show it (`python -m dfkd` for dfkd's __main__), cut to `limit`."""
    argv = list(sys.argv) or ["python"]
    name = Path(argv[0]).name
    head = ["python", "-m", Path(argv[0]).parent.name] if name == "__main__.py" else [name]
    text = shlex.join(head + argv[1:])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refusal(out: Path, path: Path) -> str:
    """The one line for a refused process: who holds OUT."""
    info = _read_holder(path)
    if info is None:
        who = "another process"
    else:
        who = f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}: {info.get('command')}"
    return f"'{out}' is in use by another dfkd run ({who}); wait for it to end or choose another output directory"


def _read_holder(path: Path, wait: float = 1.0) -> Optional[dict]:
    """The holder's record; a holder that has just taken the lock may not have written it yet (wait a little)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json.loads(path.read_text())
            if isinstance(info, dict):
                return info
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) closes its copies: the lock stays the parent's alone, and ends with it."""
    for fd in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _make_folder(folder: Path) -> tuple[Path, ...]:
    """Create `folder` and its missing parents; the folders created, deepest first."""
    missing = []
    while not folder.exists() and folder.parent != folder:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return tuple(missing)


def _same_file(fd: int, path: Path) -> bool:
    """True when `path` still names the file `fd` has open."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)
