"""fide.resources: cores from affinity and cgroup quota, thread set-up, memory estimate."""

import os

import pytest
import torch

from fide import resources


@pytest.fixture
def restore_threads():
    threads, env = torch.get_num_threads(), dict(os.environ)
    yield
    torch.set_num_threads(threads)
    os.environ.clear()
    os.environ.update(env)


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert resources.cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert resources.cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert resources.cgroup_cpu_limit(tmp_path) == 4.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert resources.cgroup_cpu_limit(tmp_path) is None
    assert resources.cgroup_cpu_limit(tmp_path / "absent") is None


def test_available_cpus_is_affinity_capped_by_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(resources, "cgroup_cpu_limit", lambda: 3.5)  # a container given 3.5 of 64 cores
    assert resources.available_cpus() == 4
    monkeypatch.setattr(resources, "cgroup_cpu_limit", lambda: None)
    assert resources.available_cpus() == 64
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert resources.available_cpus() == 1


@pytest.mark.usefixtures("restore_threads")
def test_configure_threads_default_explicit_and_environment(monkeypatch):
    monkeypatch.setattr(resources, "available_cpus", lambda: 3)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resources.configure_threads() == 3 and torch.get_num_threads() == 3
    assert os.environ["OMP_NUM_THREADS"] == "3" and os.environ["MKL_NUM_THREADS"] == "3"  # for child processes
    assert resources.configure_threads(1) == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own setting wins over the detected count
    assert resources.configure_threads() == 2
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        resources.configure_threads(0)


def test_thread_environment_sets_the_thread_counts_only():
    env = resources.thread_environment(2)
    assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}


@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, "1000"), ({"OMP_WAIT_POLICY": "PASSIVE"}, None), ({"GOMP_SPINCOUNT": "50"}, "50")],
)
def test_commands_bound_openmp_spinning_unless_the_user_chose(given, expected):
    """``import fide.cli`` (before torch, in a fresh interpreter) sets GOMP_SPINCOUNT only where nothing was chosen."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | given
    code = "import os, fide.cli; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


def test_memory_estimate_follows_the_measured_table():
    mib = 2**20
    # benchmarks/memory.py, fixed = moving: 1437 MiB at 2048², 3794 MiB at 4096² (docs/operations.md)
    assert abs(resources.estimate_pair_memory_bytes((2048, 2048), (2048, 2048)) / mib - 1437) < 150
    assert abs(resources.estimate_pair_memory_bytes((4096, 4096), (4096, 4096)) / mib - 3794) < 300
    assert resources.available_memory_bytes() is None or resources.available_memory_bytes() > 0


def _rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(resources.glibc() is None, reason="glibc's malloc_trim only")
def test_freed_heap_goes_back_to_the_system_after_a_pair():
    """What a pair leaves behind: many freed blocks below a block still in use, which glibc keeps resident (free()
    trims only the heap's top). :func:`release_free_heap` returns them."""
    import ctypes

    libc = resources.glibc()
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = 64 * 1024  # below any mmap threshold: heap blocks, as a pair's small tensors are
    blocks = [libc.malloc(block) for _ in range(1600)]  # 100 MiB
    for address in blocks:
        ctypes.memset(address, 1, block)  # resident
    kept = libc.malloc(block)  # still in use above them: the heap cannot shrink from its top
    before = _rss_mib()
    for address in blocks:
        libc.free(address)
    freed = _rss_mib()
    resources.release_free_heap()
    after = _rss_mib()
    libc.free(kept)
    assert freed > before - 20  # free() alone keeps nearly all of it
    assert after < freed - 60  # the release gives most of the 100 MiB back
