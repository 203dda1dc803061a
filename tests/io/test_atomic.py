"""Atomic writes: a file or folder appears complete under its name or not at all, readable under the umask."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest

from medvit.io.atomic import atomic_dir, atomic_file, atomic_files, current_umask, file_lock


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _write_tree(folder):
    (folder / "sub").mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    os.chmod(folder / "sub" / "b.txt", 0o600)  # as mkstemp makes them
    os.chmod(folder / "sub", 0o700)  # as mkdtemp makes them


def test_current_umask_reads_without_changing(umask022):
    assert current_umask() == 0o022
    assert os.umask(0o022) == 0o022


def test_atomic_dir_success_sets_modes_and_renames(tmp_path, umask022):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.") and tmp.name.endswith(".tmp")
        assert not target.exists()
        _write_tree(tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "sub" / "b.txt").read_text() == "b"
    assert _mode(target) == _mode(target / "sub") == 0o755
    assert _mode(target / "a.txt") == _mode(target / "sub" / "b.txt") == 0o644


def test_atomic_dir_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            _write_tree(tmp)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "out" / "sub") == 0o750
    assert _mode(tmp_path / "out" / "sub" / "b.txt") == 0o640


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_dir_failure_removes_the_temp_and_keeps_the_target(tmp_path, error):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(type(error)):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]


def test_atomic_dir_does_not_overwrite_unless_asked(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]


def test_atomic_dir_overwrite_replaces(tmp_path):
    target = tmp_path / "deep" / "out"  # the parent is created
    with atomic_dir(target) as tmp:
        (tmp / "old.txt").write_text("old")
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in target.parent.iterdir()] == ["out"]  # the old one moved aside is gone


def test_atomic_dir_overwrite_replaces_a_link_not_what_it_points_to(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (tmp_path / "cache").mkdir()
    target = tmp_path / "cache" / "out"
    target.symlink_to(elsewhere, target_is_directory=True)
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert not target.is_symlink() and [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


def test_atomic_file_mode_and_cleanup(tmp_path, umask022):
    target = tmp_path / "m.nii.gz"
    with atomic_file(target) as tmp:
        assert tmp.name.endswith(".tmp.nii.gz") and _mode(tmp) == 0o600
        tmp.write_text("x")
    assert _mode(target) == 0o644
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"] and target.read_text() == "x"


@pytest.mark.parametrize("error", [None, ValueError("boom"), KeyboardInterrupt()])
def test_atomic_files_all_or_none(tmp_path, umask022, error):
    out = tmp_path / "out"
    with pytest.raises(type(error)) if error else contextlib.nullcontext():
        with atomic_files(out, ["a.json", "b.png"], stage="case") as stage:
            assert stage.parent == out and stage.name.startswith(".case.") and stage.name.endswith(".partial")
            for name in ("a.json", "b.png"):
                (stage / name).write_text(name)
                os.chmod(stage / name, 0o600)
            if error:
                raise error
    names = sorted(p.name for p in out.iterdir())
    assert names == ([] if error else ["a.json", "b.png"])
    assert all(_mode(out / n) == 0o644 for n in names)


def test_file_lock_excludes_other_processes_and_removes_its_file(tmp_path):
    import subprocess
    import sys

    lock = tmp_path / ".x.lock"
    probe = (
        "import sys; from medvit.io.atomic import file_lock\n"
        "try:\n    with file_lock(sys.argv[1], wait=False): print('got')\n"
        "except BlockingIOError: print('busy')"
    )

    def other() -> str:
        return subprocess.run(
            [sys.executable, "-c", probe, str(lock)], capture_output=True, text=True
        ).stdout.strip()

    with file_lock(lock):
        assert lock.exists() and other() == "busy"  # flock is per open file: another process is refused
    assert not lock.exists() and other() == "got"  # released and removed
    assert not lock.exists()


def test_file_lock_waiter_follows_a_removed_file(tmp_path):
    """A process that waited on a lock file its holder removed locks a fresh file, not the removed one."""
    import threading

    lock, order = tmp_path / ".x.lock", []
    with file_lock(lock):
        waiter = threading.Thread(target=lambda: order.append(_hold(lock)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive()  # waiting
        order.append("released")
    waiter.join(5)
    assert order == ["released", "held"] and not lock.exists()


def _hold(lock) -> str:
    with file_lock(lock):
        assert lock.exists()
        return "held"


def test_file_lock_refuses_a_link(tmp_path):
    (tmp_path / "target").write_text("keep")
    (tmp_path / ".x.lock").symlink_to(tmp_path / "target")
    with pytest.raises(OSError), file_lock(tmp_path / ".x.lock"):
        pass
    assert (tmp_path / "target").read_text() == "keep"
