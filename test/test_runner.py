"""fide.runner: failure isolation, resume, sharding, determinism, and ``fide register`` around it."""

import os
import shutil

import pandas as pd
import pytest
import torch
from conftest import FAST_CONFIG

from fide.cli.main import main
from fide.cli.register import parse_shard
from fide.config import FideConfig, config_from_dict
from fide.io import load_dataset, read_disp, read_image, write_disp
from fide.pipeline import RegistrationResult, register_pair
from fide.runner import METHODS, merge_results, register_pairs, select_shard
from fide.synth import make_task

# the shared fast configuration, with a short deformable stage for the runs that include it
FAST = {**FAST_CONFIG, "deformable": {"size_px": 96, "iterations": 5}}


def fast_config(stages: str = "affine") -> FideConfig:
    cfg = config_from_dict(FAST)
    cfg.stages = stages
    return cfg


@pytest.fixture(scope="module")
def task_template(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("template"), 4, 64, seed=2).parent


@pytest.fixture
def task(task_template, tmp_path):
    """A fresh copy of a 4-pair 64 px task; returns its descriptor path."""
    root = shutil.copytree(task_template, tmp_path / "task")
    return next(root.glob("*_dataset.json"))


def _pairs(descriptor):
    return load_dataset(descriptor, check_files=False).split("val")


def _table(output, name="results.csv"):
    return pd.read_csv(output / name, keep_default_na=False).set_index("pair")


def test_corrupt_truncated_and_missing_images_fail_alone(task, tmp_path):
    pairs = _pairs(task)
    pairs[1].moving.write_bytes(b"this is not a NIfTI file at all" * 10)  # corrupt
    data = pairs[2].fixed.read_bytes()
    pairs[2].fixed.write_bytes(data[: len(data) // 2])  # truncated gzip: header readable, pixels not
    pairs[3].moving.unlink()  # missing
    table = register_pairs(pairs, tmp_path / "out", FideConfig(), method="zero").set_index("pair")
    assert list(table["status"]) == ["ok", "failed", "failed", "failed"]
    on_disk = _table(tmp_path / "out")
    assert list(on_disk["status"]) == ["ok", "failed", "failed", "failed"]
    assert "cannot read image" in on_disk.loc[pairs[1].name, "message"]
    assert pairs[2].fixed.name in on_disk.loc[pairs[2].name, "message"]
    assert "not found" in on_disk.loc[pairs[3].name, "message"]
    for pair in pairs:  # every pair has a field of the fixed size: computed, or identity from the header
        field = read_disp(tmp_path / "out" / pair.disp_name, (64, 64))
        assert pair is pairs[0] or torch.count_nonzero(field) == 0


def test_register_cli_exit_code_says_whether_a_pair_failed(task, tmp_path):
    pairs = _pairs(task)
    args = ["register", str(task), "-o", str(tmp_path / "out"), "--method", "zero"]
    assert main(args) == 0
    stamp = os.stat(tmp_path / "out" / pairs[1].disp_name).st_mtime_ns
    assert main(args) == 0  # the CLI resumes: valid fields are kept
    assert os.stat(tmp_path / "out" / pairs[1].disp_name).st_mtime_ns == stamp
    pairs[0].moving.unlink()  # a missing image is one failed pair, not an unusable descriptor
    assert main([*args, "--force"]) == 1
    assert list(_table(tmp_path / "out")["status"]) == ["failed", "ok", "ok", "ok"]
    assert os.stat(tmp_path / "out" / pairs[1].disp_name).st_mtime_ns != stamp  # --force recomputed


def test_engine_exception_is_isolated_and_named(task, tmp_path, monkeypatch):
    pairs = _pairs(task)

    def flaky(fixed, moving, *rest):
        if float(fixed.sum()) == float(read_image(pairs[2].fixed).sum()):
            raise IndexError("index 7 is out of bounds")
        return METHODS["zero"](fixed, moving, *rest)

    monkeypatch.setitem(METHODS, "flaky", flaky)
    seen = []
    table = register_pairs(pairs, tmp_path / "out", FideConfig(), method="flaky", on_result=lambda p, r: seen.append(p))
    assert list(table["status"]) == ["ok", "ok", "failed", "ok"]
    assert table["message"][2] == "IndexError: index 7 is out of bounds"
    assert seen == [pairs[0], pairs[1], pairs[3]]


def test_callback_error_does_not_fail_the_pair(task, tmp_path):
    def broken(pair, result):
        raise RuntimeError("QC drawing failed")

    table = register_pairs(_pairs(task)[:2], tmp_path / "out", FideConfig(), method="zero", on_result=broken)
    assert list(table["status"]) == ["ok", "ok"]


def _counting(monkeypatch):
    calls = []

    def method(*args):
        calls.append(1)
        return METHODS["zero"](*args)

    monkeypatch.setitem(METHODS, "counting", method)
    return calls


def test_resume_keeps_valid_fields_and_earlier_rows(task, tmp_path, monkeypatch):
    calls, pairs, out = _counting(monkeypatch), _pairs(task), tmp_path / "out"
    pairs[3].moving.unlink()
    first = register_pairs(pairs, out, FideConfig(), method="counting", resume=True)
    assert len(calls) == 3 and first["status"].tolist() == ["ok", "ok", "ok", "failed"]
    stamp = os.stat(out / pairs[0].disp_name).st_mtime_ns

    calls.clear()
    again = register_pairs(pairs, out, FideConfig(), method="counting", resume=True)
    assert len(calls) == 0  # 3 valid fields kept; the failed pair is retried (and fails again without reading)
    assert again["status"].tolist() == ["ok", "ok", "ok", "failed"]
    assert again["seconds"][:3].tolist() == pytest.approx(first["seconds"][:3].tolist(), abs=1e-3)  # earlier rows
    assert os.stat(out / pairs[0].disp_name).st_mtime_ns == stamp

    damaged = out / pairs[1].disp_name  # a truncated field is recomputed (read_disp alone reads it, zero-filled)
    write_disp(damaged, torch.randn(2, 64, 64))
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    (out / "results.csv").unlink()  # without an earlier row a kept field is "skipped"
    calls.clear()
    third = register_pairs(pairs, out, FideConfig(), method="counting", resume=True)
    # the identity field of the failed pair is indistinguishable from a result without its row: kept too
    assert len(calls) == 1 and third["status"].tolist() == ["skipped", "ok", "skipped", "skipped"]

    calls.clear()
    register_pairs(pairs, out, FideConfig(), method="counting")  # the API default recomputes
    assert len(calls) == 3


def test_resume_rejects_a_field_of_the_wrong_shape(task, tmp_path, monkeypatch):
    calls, pairs, out = _counting(monkeypatch), _pairs(task)[:1], tmp_path / "out"
    write_disp(out / pairs[0].disp_name, torch.zeros(2, 32, 64))
    register_pairs(pairs, out, FideConfig(), method="counting", resume=True)
    assert len(calls) == 1 and read_disp(out / pairs[0].disp_name).shape == (2, 64, 64)


def test_shards_are_disjoint_deterministic_and_cover_all(task, tmp_path):
    pairs = _pairs(task)
    shards = [select_shard(pairs, i, 3) for i in range(3)]
    assert [p.name for s in shards for p in s] == [p.name for p in pairs[0::3] + pairs[1::3] + pairs[2::3]]
    assert sorted(p.name for s in shards for p in s) == sorted(p.name for p in pairs)
    for index in range(3):
        register_pairs(pairs, tmp_path / "out", FideConfig(), method="zero", shard=(index, 3))
    assert sorted(f.name for f in (tmp_path / "out").glob("results*.csv")) == [
        f"results.shard-{i}-of-3.csv" for i in range(3)
    ]
    assert len(_table(tmp_path / "out", "results.shard-0-of-3.csv")) == 2
    merged = merge_results(tmp_path / "out")
    assert merged["pair"].tolist() == sorted(p.name for p in pairs) and (tmp_path / "out/results.csv").is_file()
    assert len(list((tmp_path / "out").glob("disp_*.nii.gz"))) == 4


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1/0", "a/b", "1", "1/2/3"])
def test_invalid_shard_is_rejected(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="I/N"):
        parse_shard(text)
    with pytest.raises(ValueError, match="shard"):
        select_shard([], 2, 2)


def test_register_cli_shard_and_merge(task, tmp_path):
    out = str(tmp_path / "out")
    for index in (0, 1):
        assert main(["register", str(task), "-o", out, "--method", "zero", "--shard", f"{index}/2"]) == 0
    assert main(["register", str(task), "-o", out, "--merge-shards"]) == 0
    assert len(_table(tmp_path / "out")) == 4


def test_register_cli_merge_reports_missing_pairs(task, tmp_path):
    out = str(tmp_path / "out")
    assert main(["register", str(task), "-o", out, "--method", "zero", "--shard", "0/2"]) == 0
    assert main(["register", str(task), "-o", out, "--merge-shards"]) == 1


def test_same_input_and_seed_give_the_same_field(task):
    pair = _pairs(task)[0]
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    first = register_pair(fixed, moving, fast_config("affine"))
    second = register_pair(fixed, moving, fast_config("affine"))
    assert torch.equal(first.disp, second.disp) and torch.equal(first.affine, second.affine)


def test_real_registration_through_the_runner(task, tmp_path):
    """A real (fast) registration end to end: the field has the fixed size and the table a quality score."""
    pairs = _pairs(task)[:1]
    seen: list[RegistrationResult] = []
    table = register_pairs(pairs, tmp_path / "out", fast_config("affine"), on_result=lambda p, r: seen.append(r))
    assert table["status"][0] in ("ok", "flagged") and 0 <= table["quality"][0] <= 1
    assert read_disp(tmp_path / "out" / pairs[0].disp_name, (64, 64)).shape == (2, 64, 64)
    assert seen and seen[0].disp.shape == (1, 2, 64, 64)


def test_low_confidence_pairs_are_flagged_with_the_reason(task, tmp_path, monkeypatch):
    pairs = _pairs(task)[:3]
    # a wrong-looking pose (its fibres do not match), a right mirrored one, and the zero field (no estimate)
    outcomes = iter(
        [
            dict(confidence=0.02, confidence_basis="texture", scores={"texture_contrast": 0.01, "nmi": 0.2}),
            dict(confidence=0.97, confidence_basis="texture", scores={"texture_contrast": 0.4}, mirrored=True),
            dict(),
        ]
    )

    def scored(fixed, moving, *rest):
        result = METHODS["zero"](fixed, moving, *rest)
        return RegistrationResult(result.disp, result.affine, 0.05, **next(outcomes))

    monkeypatch.setitem(METHODS, "scored", scored)
    cfg = FideConfig()
    assert cfg.confidence.flag_below == 0.5
    table = register_pairs(pairs, tmp_path / "out", cfg, method="scored")
    assert list(table["status"]) == ["flagged", "ok", "ok"]
    assert table["message"][0] == "low confidence 0.02 (texture contrast 0.010: the fibres do not match)"
    assert table["message"][1] == "mirrored" and table["message"][2] == ""
    written = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(written["mirrored"]) == [False, True, False]
    assert written["confidence"][0] == pytest.approx(0.02) and written["confidence"].isna()[2]


def test_tables_written_before_the_confidence_columns_are_still_resumed(task, tmp_path):
    """A results.csv of an earlier fide version (no confidence / mirrored) keeps its rows on resume."""
    pairs = _pairs(task)[:2]
    out = tmp_path / "out"
    register_pairs(pairs, out, FideConfig(), method="zero")
    old = pd.read_csv(out / "results.csv").drop(columns=["confidence", "mirrored"])
    old["message"] = old["message"].astype(object)
    old.loc[0, "message"] = "from an older run"
    old.to_csv(out / "results.csv", index=False)
    table = register_pairs(pairs, out, FideConfig(), method="zero", resume=True)
    assert table["message"][0] == "from an older run" and not table["mirrored"].any()
