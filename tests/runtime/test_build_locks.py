"""Build locks left by a killed compile are cleared; a live builder's lock, or one that may belong to another node,
is kept. End to end: a process that joins the process group past a stale lock of DeepSpeed's op finishes (it used
to wait forever: CI hung 80 minutes)."""

import os
import subprocess
import sys
import time

import pytest

from rlwork.runtime.build_locks import clear_stale_build_locks, extensions_root, lock_files, open_files
from rlwork.runtime.dist import ranks_all_local


def _lock(root, op, age_s):
    folder = root / op
    folder.mkdir(parents=True)
    (folder / "build.ninja").write_text("")
    lock = folder / "lock"
    lock.touch()
    then = time.time() - age_s
    for path in folder.iterdir():
        os.utime(path, (then, then))
    return lock


def test_an_old_lock_nobody_holds_is_removed_and_the_ops_files_stay(tmp_path):
    lock = _lock(tmp_path, "deepspeed_shm_comm", age_s=60)
    assert clear_stale_build_locks(tmp_path, ranks_all_local=True) == [lock]
    assert not lock.exists() and (tmp_path / "deepspeed_shm_comm" / "build.ninja").exists()


def test_torchs_default_layout_nests_the_ops_one_level_deeper(tmp_path):
    lock = _lock(tmp_path / "py311_cpu", "cpu_adam", age_s=60)
    assert lock_files(tmp_path) == [lock]
    assert clear_stale_build_locks(tmp_path, ranks_all_local=True) == [lock]


def test_a_lock_a_live_process_holds_open_is_kept(tmp_path):
    lock = _lock(tmp_path, "cpu_adam", age_s=3600)
    holder = subprocess.Popen([sys.executable, "-c", "import os, sys, time\n"
                               f"fd = os.open({str(lock)!r}, os.O_RDONLY); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock.resolve() in open_files()
        assert clear_stale_build_locks(tmp_path, ranks_all_local=True) == [] and lock.exists()
    finally:
        holder.kill()
        holder.wait()
    assert clear_stale_build_locks(tmp_path, ranks_all_local=True) == [lock]  # its holder died


def test_a_folder_that_just_changed_is_left_alone(tmp_path):
    """A builder closes its lock an instant before removing it, just after writing the op."""
    lock = _lock(tmp_path, "cpu_adam", age_s=3600)
    (tmp_path / "cpu_adam" / "cpu_adam.so").write_bytes(b"")  # written now
    assert clear_stale_build_locks(tmp_path, ranks_all_local=True, held=set()) == []
    later = time.time() + 10
    assert clear_stale_build_locks(tmp_path, ranks_all_local=True, held=set(), now=later) == [lock]


def test_across_nodes_only_locks_older_than_any_compile_are_stale(tmp_path):
    young = _lock(tmp_path, "young", age_s=120)
    old = _lock(tmp_path, "old", age_s=1200)
    assert clear_stale_build_locks(tmp_path, ranks_all_local=False, held=set()) == [old]
    assert young.exists()


@pytest.mark.parametrize(("env", "local"), [
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, True),  # torchrun, one node
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, False),
    ({"WORLD_SIZE": "2", "LOCAL_SIZE": "2"}, True),  # the DeepSpeed launcher
    ({"WORLD_SIZE": "2"}, False),  # unknown
])
def test_ranks_all_local_reads_the_launchers_variables(env, local):
    assert ranks_all_local(env) is local


def test_joining_the_process_group_past_a_killed_compiles_lock_finishes(tmp_path):
    """DeepSpeed compiles its shared-memory op as it starts; a stale lock in that op's folder made it wait forever.
    Uses the tests' extensions folder (the op compiles once) and removes the lock whatever happens."""
    lock = extensions_root() / "deepspeed_shm_comm" / "lock"
    if lock.exists() and lock.resolve() in open_files():
        pytest.fail(f"{lock} is held: another process is building DeepSpeed's op in the tests' folder right now")
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    then = time.time() - 60
    os.utime(lock, (then, then))
    code = "from rlwork.runtime.dist import init_distributed; init_distributed(); print('joined')"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                              cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("init_distributed still waits on the stale lock after 300 s")
    finally:
        lock.unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "joined" in done.stdout
    assert f"removed {lock}" in done.stderr
