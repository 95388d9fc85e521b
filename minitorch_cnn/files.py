"""Writing files so that a crash, a kill or a full disk never leaves a half-written one.

Every output of the engine (checkpoints, metrics, plots, summaries) goes through
:func:`atomic_write`: the bytes go to a temporary file in the target's folder, which is
flushed and fsynced, then renamed over the target, so a reader sees the old file or the
new one, never a mix. A process killed mid-write (``kill -9``, a power cut) leaves its
temporary file behind; the next write into the same folder removes the ones whose
writer is gone (:func:`remove_stale_temporaries`).

:func:`check_writable` answers, before any work is done, whether a file can be written
where a run will want to write it.
"""
import os
import re
import tempfile

import numpy as np

# A temporary file is ".<target name>.<writer's pid>.<random>.tmp": the pid tells a
# later writer whether the file's writer still runs.
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def atomic_write(path, write):
    """Create or replace ``path`` atomically: ``write(f)`` fills a binary temporary file
    in the same folder, which is flushed, fsynced, then renamed over ``path``. On any
    error (or Ctrl-C) the temporary file is removed and ``path`` is left as it was.
    Temporary files that killed writers left in the folder are removed first."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp",
                               dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file open()'s mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(folder)
    return path


def atomic_savez(path, arrays):
    """Write ``arrays`` (name -> NumPy array) to ``path`` as an uncompressed ``.npz``, atomically."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_replace_text(path, text):
    """Write the string ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temporaries(folder):
    """Remove the temporary files of :func:`atomic_write` in ``folder`` whose writing
    process no longer runs; return their paths. Files of live writers stay."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMP_NAME.match(name)
        if match and not _process_runs(int(match.group(1))):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
            except OSError:  # another writer cleaned it first, or it is not ours to remove
                pass
    return removed


def check_writable(path):
    """Raise OSError, with a message naming ``path``, unless a file can be written there:
    its folder can be created and written to, and ``path`` is not a folder itself."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise type(e)(f"folder {folder} cannot be created or written to "
                      f"({e.strerror or e})") from None


def _process_runs(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder):
    """Make the rename itself durable where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["atomic_write", "atomic_savez", "atomic_replace_text", "remove_stale_temporaries",
           "check_writable"]
