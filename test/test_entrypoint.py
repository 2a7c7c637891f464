"""The container entry point on a container-shaped layout: read-only input, separate output, exit-code rule."""

import importlib.util
import os
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import FAST_CONFIG

from fide.config import config_from_dict
from fide.io import load_dataset, read_disp

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def entrypoint():
    spec = importlib.util.spec_from_file_location("fide_entrypoint", REPO / "entrypoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def template(tiny_task):
    return tiny_task.parent


def _read_only_copy(template, target):
    shutil.copytree(template, target)
    for path in [target, *target.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return target


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def layout(template, tmp_path):
    """(input, output): a read-only copy of the task and an empty output folder beside it."""
    input_dir = _read_only_copy(template, tmp_path / "input")
    output_dir = tmp_path / "output"
    output_dir.mkdir()
    yield input_dir, output_dir
    for path in [input_dir, *input_dir.rglob("*")]:  # let pytest clean up
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _fast(monkeypatch, entrypoint, stages="prealign"):
    def make(seed=0):
        cfg = config_from_dict(FAST_CONFIG)
        cfg.stages, cfg.seed = stages, seed
        return cfg

    monkeypatch.setattr(entrypoint, "FideConfig", make)


def test_fills_the_output_and_never_writes_under_the_input(entrypoint, layout, monkeypatch, fast_engine):
    input_dir, output_dir = layout
    _fast(monkeypatch, entrypoint)
    before = _snapshot(input_dir)
    assert entrypoint.main(["--input", str(input_dir), "--output", str(output_dir), "--device", "cpu"]) == 0
    assert _snapshot(input_dir) == before
    dataset = load_dataset(next(input_dir.glob("*_dataset.json")))
    for pair in dataset.split("val"):
        assert read_disp(output_dir / pair.disp_name, (96, 96)).shape == (2, 96, 96)
    table = pd.read_csv(output_dir / "results.csv")
    assert len(table) == 2 and set(table["status"]) <= {"ok", "flagged"}


def test_a_corrupt_image_fails_its_pair_only_and_exit_stays_0(entrypoint, template, tmp_path, monkeypatch, fast_engine):
    _fast(monkeypatch, entrypoint)
    source = shutil.copytree(template, tmp_path / "source")
    broken = sorted((source / "imagesTr").glob("*_0002_0001.nii.gz"))[0]
    broken.write_bytes(broken.read_bytes()[:200])  # truncated
    input_dir = _read_only_copy(source, tmp_path / "input")
    try:
        code = entrypoint.main(["--input", str(input_dir), "--output", str(tmp_path / "out"), "--device", "cpu"])
    finally:
        for path in [input_dir, *input_dir.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert code == 0
    table = pd.read_csv(tmp_path / "out/results.csv")
    assert table["status"].tolist()[1] == "failed" and "cannot read image" in table["message"][1]
    assert len(list((tmp_path / "out").glob("disp_*.nii.gz"))) == 2


def test_missing_descriptor_is_exit_2(entrypoint, tmp_path):
    (tmp_path / "empty").mkdir()
    assert entrypoint.main(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    assert entrypoint.main(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]) == 2


def test_two_descriptors_are_exit_2_and_the_message_names_dataset(entrypoint, tmp_path, caplog):
    for name in ("A", "B"):
        (tmp_path / "in" / name).mkdir(parents=True)
        (tmp_path / "in" / name / f"{name}_dataset.json").write_text("{}")
    assert entrypoint.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 2
    assert "2 descriptors found" in caplog.text and "choose one with --dataset" in caplog.text


def test_output_under_the_input_is_refused(entrypoint, layout):
    input_dir, _ = layout
    assert entrypoint.main(["--input", str(input_dir), "--output", str(input_dir / "out")]) == 2


def test_shard_passthrough_writes_its_own_table(entrypoint, layout, monkeypatch, fast_engine):
    input_dir, output_dir = layout
    _fast(monkeypatch, entrypoint)
    args = ["--input", str(input_dir), "--output", str(output_dir), "--device", "cpu", "--shard", "1/2"]
    assert entrypoint.main(args) == 0
    assert [p.name for p in output_dir.glob("results*.csv")] == ["results.shard-1-of-2.csv"]
    assert len(list(output_dir.glob("disp_*.nii.gz"))) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_input_really_is_read_only(layout):
    input_dir, _ = layout
    with pytest.raises(PermissionError):
        (input_dir / "probe").touch()


def test_threads_follow_the_container_quota_unless_given(entrypoint, layout, monkeypatch, fast_engine):
    """The entry point sizes torch's threads from the cores it may use (cgroup quota), or from --threads."""
    import fide.resources as resources

    input_dir, output_dir = layout
    _fast(monkeypatch, entrypoint)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(resources, "available_cpus", lambda: 1)  # e.g. docker run --cpus 1 on a bigger host
    threads = torch.get_num_threads()
    try:
        args = ["--input", str(input_dir), "--output", str(output_dir), "--device", "cpu"]
        assert entrypoint.main(args) == 0 and torch.get_num_threads() == 1
        assert entrypoint.main([*args, "--threads", "2"]) == 0 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
