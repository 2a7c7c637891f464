"""fide.executors: one runner over serial, process and Dask executors; Dask's faults and results on a local cluster.

The Dask tests start loopback-only local clusters (127.0.0.1, no dashboard). Faults are real: a pair's worker
function kills its own worker process (``os._exit``) halfway through writing its field.
"""

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import FAST_CONFIG
from conftest import read_results as _table
from conftest import val_pairs as _pairs

from fide.cli.main import main
from fide.config import FideConfig, config_from_dict
from fide.executors import (
    DASK_MISSING,
    LOST_TWICE,
    ClusterError,
    ProcessExecutor,
    SerialExecutor,
    WorkerLost,
    make_executor,
)
from fide.features import ModalityEncoders
from fide.io import atomic_path, read_disp, write_disp
from fide.pair_task import PairTask
from fide.pipeline import RegistrationResult
from fide.runner import _lost, register_pairs

distributed = pytest.importorskip("distributed")


@dataclass(frozen=True)
class ZeroWorker:
    """A picklable ``worker(pair, encoders)`` that writes a zero field, records its call, and can die.

    ``die_once``: pairs whose first attempt kills the worker process (a marker file tells the retry); ``die_always``:
    pairs that kill every worker they run on. Both leave half a field behind, as a death mid-write would. The
    result's notes carry the worker's pid, its encoders' id and its torch threads.
    """

    output: Path
    die_once: tuple[str, ...] = ()
    die_always: tuple[str, ...] = ()
    seconds: float = 0.0
    markers: Path = field(default=Path("."))

    def __call__(self, pair, encoders=None) -> RegistrationResult:
        target = self.output / pair.disp_name
        with open(self.markers / "calls.txt", "a") as calls:
            calls.write(pair.name + "\n")
        first = False
        if pair.name in self.die_once:
            try:
                os.close(os.open(self.markers / f"died-{pair.disp_name}", os.O_CREAT | os.O_EXCL))
                first = True
            except FileExistsError:
                pass
        time.sleep(self.seconds)
        if first or pair.name in self.die_always:
            atomic_path(target).write_bytes(b"\x1f\x8b half a field")
            os._exit(9)
        write_disp(target, torch.zeros(2, 64, 64))
        held = None if encoders is None else id(encoders)
        notes = [f"pid {os.getpid()}", f"encoders {held}", f"threads {torch.get_num_threads()}"]
        return RegistrationResult(torch.zeros(1, 2, 64, 64), torch.eye(3), 0.5, notes=notes)


def _calls(markers: Path) -> list[str]:
    path = markers / "calls.txt"
    return path.read_text().split() if path.is_file() else []


def _register_with(worker: ZeroWorker, pairs, executor, **kwargs):
    return register_pairs(
        pairs,
        worker.output,
        FideConfig(),
        worker=worker,
        is_complete=lambda pair: (worker.output / pair.disp_name).is_file(),
        executor=executor,
        resume=True,
        **kwargs,
    )


def _no_partials(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".part" in p.name]


# ---- the seam: one runner, three executors ----


def test_make_executor_picks_the_executor_and_refuses_bad_combinations():
    assert isinstance(make_executor(), SerialExecutor) and isinstance(make_executor(2, 2), ProcessExecutor)
    assert type(make_executor(dask="local:2")).__name__ == "DaskExecutor"
    with pytest.raises(ValueError, match="--dask and --jobs exclude each other"):
        make_executor(2, dask="local:2")
    with pytest.raises(ValueError, match="local:N needs N >= 1"):
        make_executor(dask="local:zero")
    with pytest.raises(ValueError, match="give jobs or an executor"):
        register_pairs([], Path("."), FideConfig(), jobs=2, executor=SerialExecutor())


def test_without_dask_the_option_says_how_to_install_it(task, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails as if not installed
    monkeypatch.delitem(sys.modules, "fide.executors.dask_cluster", raising=False)
    with pytest.raises(ValueError) as err:
        make_executor(dask="local:2")
    assert str(err.value) == DASK_MISSING == "--dask needs dask.distributed: pip install 'fide[dask]'"
    with pytest.raises(SystemExit, match=r"^fide register: --dask needs dask.distributed: pip install 'fide\[dask\]'$"):
        main(["register", str(task), "-o", str(tmp_path / "out"), "--method", "zero", "--dask", "local:2"])
    assert not (tmp_path / "out" / "results.csv").exists()


def test_a_lost_worker_fails_its_pair_only_its_partials_go_and_an_identity_field_is_written(task, tmp_path):
    pairs, out = _pairs(task), tmp_path / "out"
    out.mkdir()
    mine, other = atomic_path(out / pairs[0].disp_name), atomic_path(out / pairs[1].disp_name)
    mine.write_bytes(b"half")
    other.write_bytes(b"another pair, still being written")
    row = _lost(PairTask(pairs[0], out / pairs[0].disp_name, FideConfig()), WorkerLost(LOST_TWICE))
    assert (row.status, row.message) == ("failed", LOST_TWICE)
    assert not mine.exists() and other.exists()
    assert torch.count_nonzero(read_disp(out / pairs[0].disp_name, (64, 64))) == 0


def test_serial_and_process_executors_run_the_same_worker_tasks(task, tmp_path):
    pairs = _pairs(task)
    for name, executor in {"serial": SerialExecutor(1), "processes": ProcessExecutor(2, 2)}.items():
        (tmp_path / name).mkdir()
        worker = ZeroWorker(tmp_path / name / "out", markers=tmp_path / name)
        table = _register_with(worker, pairs, executor)
        assert table["status"].tolist() == ["ok"] * 4 and sorted(_calls(tmp_path / name)) == sorted(table["pair"])


def test_every_pair_gives_its_freed_heap_back_after_it_ran_failed_ones_too(task, tmp_path, monkeypatch):
    """Each executor's pairs run through process_pair, which releases the freed heap once after each (issue 27)."""
    from fide import pair_task

    events = []
    monkeypatch.setattr(pair_task, "release_free_heap", lambda: events.append("release"))

    def worker(pair, encoders=None):
        events.append(pair.name)
        if pair.name == pairs[1].name:
            raise ValueError("a bad pair")
        return RegistrationResult(torch.zeros(1, 2, 64, 64), torch.eye(3), 0.5)

    pairs = _pairs(task)
    table = register_pairs(pairs, tmp_path, FideConfig(), worker=worker, executor=SerialExecutor(1))
    assert table["status"].tolist() == ["ok", "failed", "ok", "ok"]
    assert events == [e for p in pairs for e in (p.name, "release")]


# ---- Dask on a local cluster ----


def test_dask_gives_bit_identical_fields_the_same_table_and_resumes(task, tmp_path):
    """``fide register --dask local:2`` (a real, fast registration with the learned encoders, 2 worker processes
    of 1 thread) against one process of 1 thread: the same fields bit for bit, the same table but for the seconds;
    a pair failing on a worker fails alone; a rerun resumes."""
    pairs = _pairs(task)
    pairs[2].moving.unlink()
    settings = {**FAST_CONFIG, "encoder": {"features": "learned"}}
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(settings))
    cfg = config_from_dict(settings)
    from fide.features.select import resolve_encoders

    single = register_pairs(pairs, tmp_path / "one", cfg, encoders=resolve_encoders(cfg.encoder), threads=1)
    args = ["register", str(task), "-o", str(tmp_path / "two"), "--config", str(config), "--seed", "0"]
    assert main([*args, "--dask", "local:2", "--threads", "2"]) == 1  # exit 1: a pair failed
    one, two = _table(tmp_path / "one"), _table(tmp_path / "two")
    assert two.index.tolist() == single["pair"].tolist() == [p.name for p in pairs]
    assert one.drop(columns="seconds").equals(two.drop(columns="seconds"))
    assert two["status"].iloc[2] == "failed" and "not found" in two["message"].iloc[2]
    for pair in pairs:
        assert torch.equal(read_disp(tmp_path / "one" / pair.disp_name), read_disp(tmp_path / "two" / pair.disp_name))
    stamp = os.stat(tmp_path / "two" / pairs[0].disp_name).st_mtime_ns
    assert main([*args, "--dask", "local:1"]) == 1  # resumes: only the failed pair is tried again
    assert os.stat(tmp_path / "two" / pairs[0].disp_name).st_mtime_ns == stamp
    assert not _no_partials(tmp_path / "two")


def test_dask_worker_deaths_cost_one_retry_then_fail_the_pair_alone(task, tmp_path):
    """Pair 1 kills its worker once (retried on another worker: ok), pair 2 kills every worker (failed after two
    deaths, with the reason); the others finish; nothing half-written is left. Each worker process gets the
    encoders once and its share of the threads."""
    pairs = _pairs(task)
    once, always = (pairs[1].name,), (pairs[2].name,)
    worker = ZeroWorker(tmp_path / "out", die_once=once, die_always=always, seconds=0.5, markers=tmp_path)
    encoders = ModalityEncoders(out_channels=1, features=(4, 4, 4, 4, 4, 4))
    notes = []
    executor = make_executor(threads=2, dask="local:2")
    table = _register_with(worker, pairs, executor, encoders=encoders, on_result=lambda p, r: notes.append(r.notes))
    assert table["status"].tolist() == ["ok", "ok", "failed", "ok"]
    assert table["message"][2] == LOST_TWICE
    assert LOST_TWICE == "worker process ended abruptly (killed, e.g. for memory) twice while registering"
    calls = _calls(tmp_path)  # a pair whose result died with its worker before the client had it reruns
    assert calls.count(pairs[2].name) == 2 and calls.count(pairs[1].name) >= 2 and set(calls) == set(table["pair"])
    assert not _no_partials(tmp_path / "out") and not (tmp_path / "out" / pairs[2].disp_name).exists()
    per_worker = {}
    for pid, encoders_id, threads in notes:
        per_worker.setdefault(pid, set()).add(encoders_id)
        assert threads == "threads 1"  # 2 threads split between 2 workers
    assert all(len(ids) == 1 for ids in per_worker.values())  # one copy of the encoders per worker process
    assert "encoders None" not in {e for ids in per_worker.values() for e in ids}


def test_local_dask_workers_run_no_profiler_and_one_arena_even_after_a_restart():
    """Dask's profiler keeps a history that grows with the run, and a thread's glibc arena keeps freed memory
    resident (benchmarks/soak.py): ``local:N`` turns the one off and the other to one arena in every worker, one the
    nanny restarted included."""
    from contextlib import ExitStack

    from fide.executors.dask_cluster import DaskExecutor

    def profiling(dask_worker):
        import os

        import dask

        callbacks = sorted(name for name in dask_worker.periodic_callbacks if name.startswith("profile"))
        arenas = os.environ.get("MALLOC_ARENA_MAX")  # glibc reads it when the worker process starts
        return dask.config.get("distributed.worker.profile.enabled"), tuple(callbacks), arenas

    with ExitStack() as stack, DaskExecutor("local:2", threads=2)._client(stack) as (client, _):
        before = client.run(profiling)
        client.restart_workers([sorted(before)[0]])
        after = client.run(profiling)
    assert len(before) == len(after) == 2
    # Dask's defaults: (True, ("profile", "profile-cycle"), None)
    assert set(before.values()) == set(after.values()) == {(False, (), "1")}


def test_losing_the_dask_scheduler_stops_the_run_and_a_rerun_resumes(task, tmp_path):
    pairs = _pairs(task)
    worker = ZeroWorker(tmp_path / "out", seconds=1.0, markers=tmp_path)
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    address = cluster.scheduler_address
    try:
        with pytest.raises(ClusterError, match=f"^lost the Dask scheduler at {address}; rerun to resume$"):
            _register_with(worker, pairs, make_executor(dask=address), on_result=lambda p, r: cluster.close())
    finally:
        cluster.close()
    done = _table(tmp_path / "out")  # current when the scheduler went: the pairs finished until then
    assert 1 <= len(done) < 4 and (done["status"] == "ok").all()
    before, written = _calls(tmp_path), {p.name for p in pairs if (tmp_path / "out" / p.disp_name).is_file()}
    again = _register_with(worker, pairs, SerialExecutor()).set_index("pair")
    # rows kept, fields written after the client's last row kept as "skipped", the rest registered
    assert again.loc[list(done.index), "seconds"].tolist() == done["seconds"].tolist()
    assert set(again.index[again["status"] == "skipped"]) == written - set(done.index)
    assert sorted(_calls(tmp_path)[len(before) :]) == sorted({p.name for p in pairs} - written)
    assert not _no_partials(tmp_path / "out")


def test_an_unreachable_scheduler_is_one_line_and_the_cli_names_it(task, tmp_path, monkeypatch):
    from fide.executors.dask_cluster import DaskExecutor

    executor = DaskExecutor("tcp://127.0.0.1:9", connect_timeout_s=1)
    with pytest.raises(ClusterError, match=r"^cannot reach the Dask scheduler at tcp://127.0.0.1:9 \("):
        list(executor.map_pairs({0: PairTask(_pairs(task)[0], tmp_path / "x.nii.gz", FideConfig())}))
    import fide.cli.register as register

    def lost(*args, **kwargs):
        raise ClusterError("lost the Dask scheduler at tcp://127.0.0.1:8786; rerun to resume")

    monkeypatch.setattr(register, "register_pairs", lost)
    with pytest.raises(SystemExit, match=r"^fide register: lost the Dask scheduler at tcp://127.0.0.1:8786; rerun"):
        main(["register", str(task), "-o", str(tmp_path / "out"), "--dask", "tcp://127.0.0.1:8786"])


def test_the_failure_reason_counts_the_deaths_the_scheduler_allowed():
    from fide.executors.dask_cluster import _deaths

    assert _deaths(distributed.KilledWorker("fide-pair-1", None, 1)) == LOST_TWICE  # local:N
    assert _deaths(distributed.KilledWorker("fide-pair-1", None, 3)) == (  # Dask's default allowed-failures
        "worker process ended abruptly (killed, e.g. for memory) 4 times while registering"
    )
