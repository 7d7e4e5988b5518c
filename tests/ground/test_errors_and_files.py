"""Errors are one printable line; files are written atomically with the umask's mode and read with a
bound, refusing anything that is not a regular file before reading it."""
import os
import stat
import threading

import pytest

from ground.errors import PlannerError, first_line, printable
from ground.files import check_writable, read_bounded, write_text_atomic


def test_first_line_of_an_empty_message_is_the_type():   # compile.py used to raise IndexError here
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(ValueError("\n\n  second\nthird")) == "second"


def test_printable_escapes_control_characters():
    assert printable("a\nb\x1b[31mred") == "a\\nb\\x1b[31mred" and "\n" not in printable("x\n" * 500)


def test_atomic_write_uses_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "sub" / "f.txt", "hello")
    finally:
        os.umask(old)
    assert path.read_text() == "hello" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not [p for p in path.parent.iterdir() if p.name != "f.txt"]   # no temporary left behind


def test_bounded_read_refuses_big_files_fifos_and_devices(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    (tmp_path / "ok").write_bytes(b"y" * 100)
    assert read_bounded(tmp_path / "ok", 100) == b"y" * 100
    with pytest.raises(PlannerError, match="larger than 100 bytes"):
        read_bounded(big, 100)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = []
    reader = threading.Thread(target=lambda: done.append(pytest.raises(PlannerError, read_bounded, fifo, 10)))
    reader.start()
    reader.join(5)
    assert done, "reading a FIFO must not wait for a writer"
    with pytest.raises(PlannerError, match="not a regular file"):
        read_bounded("/dev/zero", 10)
    with pytest.raises(PlannerError, match="not a regular file"):
        read_bounded(tmp_path, 10)   # a folder
    with pytest.raises(PlannerError, match="no such"):
        read_bounded(tmp_path / "missing", 10)


def test_check_writable_creates_folders_or_refuses(tmp_path):
    assert check_writable(tmp_path / "a" / "b" / "plan.yaml", "--out").parent.is_dir()
    with pytest.raises(PlannerError, match="is a folder"):
        check_writable(tmp_path, "--out")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() != 0:   # root writes anywhere
            with pytest.raises(PlannerError, match="not writable"):
                check_writable(locked / "plan.yaml", "--out")
    finally:
        locked.chmod(0o700)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PlannerError, match="cannot create folder|not a folder"):
        check_writable(blocker / "plan.yaml", "--out")
