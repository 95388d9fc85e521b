"""minitorch_cnn.files: atomic writes, the temporaries of killed writers, writability checks."""
import os
import subprocess
import sys

import pytest

from minitorch_cnn.files import (atomic_replace_text, atomic_write, check_writable,
                                 remove_stale_temporaries)


def dead_pid():
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.txt"
    atomic_replace_text(path, "first")

    def fails_half_way(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, fails_half_way)
    assert path.read_text() == "first" and os.listdir(tmp_path) == ["a.txt"]


def test_the_next_write_removes_temporaries_of_dead_writers_only(tmp_path):
    stale = tmp_path / f".checkpoint.npz.{dead_pid()}.k3j2h1g0.tmp"
    live = tmp_path / f".checkpoint.npz.{os.getppid()}.a1b2c3d4.tmp"  # a writer still running
    other = tmp_path / ".notes.tmp"  # not a name atomic_write makes
    for p in (stale, live, other):
        p.write_bytes(b"x" * 100)
    atomic_replace_text(tmp_path / "summary.json", "{}")
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path) == []


def test_a_kill_9_mid_write_leaves_a_temporary_the_next_write_removes(tmp_path):
    """A real writer killed while it writes: its temporary stays, the target is untouched,
    and the next write into the folder cleans up."""
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    code = ("import sys, time; from minitorch_cnn.files import atomic_write\n"
            "def slow(f):\n"
            "    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
            f"atomic_write({str(target)!r}, slow)\n")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.kill()
        writer.wait(timeout=30)
        writer.stdout.close()
    left = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(left) == 1 and target.read_bytes() == b"old"
    atomic_replace_text(tmp_path / "other.txt", "new")
    assert sorted(os.listdir(tmp_path)) == ["big.bin", "other.txt"]


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "c.npz")  # folders are made
    assert (tmp_path / "new" / "deeper").is_dir()
    (tmp_path / "c.npz").mkdir()
    with pytest.raises(IsADirectoryError, match="c.npz is a folder"):
        check_writable(tmp_path / "c.npz")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="cannot be created or written to"):
        check_writable(tmp_path / "file" / "c.npz")  # a file where a folder must be


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="ro cannot be created or written to"):
            check_writable(folder / "c.npz")
    finally:
        folder.chmod(0o755)
