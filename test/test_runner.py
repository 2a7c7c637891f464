"""fide.runner: failure isolation, resume, sharding, determinism, and ``fide register`` around it."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST_CONFIG
from conftest import read_results as _table
from conftest import val_pairs as _pairs

from fide.cli.main import main
from fide.cli.register import parse_shard
from fide.config import FideConfig, config_from_dict
from fide.io import DatasetError, read_disp, read_image, write_disp
from fide.pipeline import RegistrationResult, register_pair
from fide.runner import METHODS, merge_results, register_pairs, select_shard

# the shared fast configuration, with a short deformable stage for the runs that include it
FAST = {**FAST_CONFIG, "deformable": {"iterations": 5}}


def fast_config(stages: str = "affine") -> FideConfig:
    cfg = config_from_dict(FAST)
    cfg.stages = stages
    return cfg


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
    # an exception fide did not raise itself is labelled as an internal error, never passed off as the reason
    assert table["message"][2].startswith("internal error (IndexError: index 7 is out of bounds)")
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


def test_same_input_and_seed_give_the_same_field(task, fast_engine):
    pair = _pairs(task)[0]
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    first = register_pair(fixed, moving, fast_config("affine"))
    second = register_pair(fixed, moving, fast_config("affine"))
    assert torch.equal(first.disp, second.disp) and torch.equal(first.affine, second.affine)


def test_real_registration_through_the_runner(task, tmp_path, fast_engine):
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
            dict(confidence=0.02, confidence_basis="texture", flag_reason="low confidence 0.02: no criterion"),
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
    assert table["message"][0] == "low confidence 0.02: no criterion"
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


# ---- bad input (docs/operations.md, "Bad input"): one line naming the file, the other pairs go on ----


def _save(path, array):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))


def _white_bf(p):
    _save(p.moving, np.full((64, 64, 1, 3), 242, np.uint8))


def _blank_shg(p):
    _save(p.fixed, np.zeros((64, 64), np.uint8))


def _noise_shg(p):
    _save(p.fixed, (np.random.default_rng(0).random((64, 64)) * 1.5).astype(np.float32))


def _tissue_free_bf(p):
    _save(p.moving, (236 + 6 * np.random.default_rng(0).random((64, 64, 1, 3))).astype(np.uint8))


def _tiny(p):
    _save(p.fixed, np.random.default_rng(0).integers(0, 255, (8, 8)).astype(np.uint8))


def _volume(p):
    _save(p.fixed, np.random.default_rng(0).integers(0, 255, (64, 64, 10)).astype(np.uint8))


def _four_d(p):
    _save(p.moving, np.random.default_rng(0).integers(0, 255, (64, 64, 4, 3)).astype(np.uint8))


def _complex(p):
    _save(p.fixed, (np.ones((64, 64)) * (3 + 4j)).astype(np.complex64))


def _header_larger_than_data(p):
    import gzip

    import nibabel as nib

    image = nib.load(str(p.fixed))
    raw = bytearray(gzip.decompress(p.fixed.read_bytes()))
    header = image.header.copy()
    header.set_data_shape((64, 128))  # the header claims twice the pixels the file holds
    raw[: len(header.binaryblock)] = header.binaryblock
    p.fixed.write_bytes(gzip.compress(bytes(raw)))


BAD_INPUTS = {
    "white bright field": (_white_bf, "moving", "image is constant (all pixels 242)"),
    "blank SHG": (_blank_shg, "fixed", "image is constant (all pixels 0)"),
    "SHG of noise only": (_noise_shg, "fixed", "SHG image has no signal"),
    "tissue-free bright field": (_tissue_free_bf, "moving", "bright-field image shows no tissue"),
    "8 x 8 image": (_tiny, "fixed", "image is 8 x 8 px, smaller than the minimum 16 px per side"),
    "3-D volume": (_volume, "fixed", "image has 10 channels, expected 1 (grey), 3 (RGB) or 4 (RGBA)"),
    "4-D image": (_four_d, "moving", "expected a 2D image with 1 or 3 channels, got shape (64, 64, 4, 3)"),
    "complex pixels": (_complex, "fixed", "pixels are complex64, expected real grey or RGB intensities"),
    "header larger than data": (_header_larger_than_data, "fixed", "cannot read image (Expected 8192 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_its_pair_with_one_line_before_registration(task, tmp_path, monkeypatch, case):
    damage, role, problem = BAD_INPUTS[case]
    calls, pairs = _counting(monkeypatch), _pairs(task)
    damage(pairs[1])
    table = register_pairs(pairs, tmp_path / "out", FideConfig(), method="counting").set_index("pair")
    assert table["status"].tolist() == ["ok", "failed", "ok", "ok"]
    assert len(calls) == 3  # the bad pair never reached the registration
    message = table.loc[pairs[1].name, "message"]
    assert message.startswith(f"{getattr(pairs[1], role)}: {problem}") and "\n" not in message, message
    assert "multinomial" not in message and "torch" not in message


def test_blank_images_fail_fast_through_the_real_pipeline(task, tmp_path):
    """The real engine, not a stand-in: the failure comes from the checks, before any registration work."""
    pairs = _pairs(task)[:2]
    _white_bf(pairs[0])
    _blank_shg(pairs[1])
    table = register_pairs(pairs, tmp_path / "out", fast_config("affine"))
    assert table["status"].tolist() == ["failed", "failed"]
    assert table["message"].tolist() == [
        f"{pairs[0].moving}: image is constant (all pixels 242)",
        f"{pairs[1].fixed}: image is constant (all pixels 0)",
    ]
    assert torch.count_nonzero(read_disp(tmp_path / "out" / pairs[0].disp_name, (64, 64))) == 0  # identity


@pytest.mark.parametrize("shape", [(32, 32), (24, 256)])
def test_small_and_elongated_images_register(tmp_path, shape, fast_engine):
    """Smaller than the working sizes (64-256 px), or 1:10: processed at their own size, no error."""
    from conftest import blob_pair

    fixed, moving = blob_pair(128)
    fixed = torch.nn.functional.interpolate(fixed[None], size=shape, mode="area")[0]
    moving = torch.nn.functional.interpolate(moving[None], size=shape, mode="area")[0]
    result = register_pair(fixed, moving, fast_config("affine"))
    assert result.disp.shape == (1, 2, *shape) and torch.isfinite(result.disp).all()


def test_duplicate_pairs_are_registered_once(task, tmp_path, monkeypatch):
    calls, pairs = _counting(monkeypatch), _pairs(task)
    table = register_pairs([pairs[0], pairs[1], pairs[0]], tmp_path / "out", FideConfig(), method="counting")
    assert table["pair"].tolist() == [pairs[0].name, pairs[1].name] and len(calls) == 2


def test_pairs_that_would_share_a_field_are_refused_before_any_work(task, tmp_path, monkeypatch):
    import dataclasses

    calls, pairs = _counting(monkeypatch), _pairs(task)
    other = tmp_path / "elsewhere" / pairs[0].fixed.name
    other.parent.mkdir()
    shutil.copy(pairs[0].fixed, other)
    twin = dataclasses.replace(pairs[0], fixed=other)  # same case ids, different file: same disp_*.nii.gz
    with pytest.raises(DatasetError, match=f"would both write {pairs[0].disp_name}"):
        register_pairs([pairs[0], pairs[1], twin], tmp_path / "out", FideConfig(), method="counting")
    assert calls == [] and not (tmp_path / "out" / pairs[0].disp_name).exists()


def test_unwritable_output_is_an_error_before_any_work(task, tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(DatasetError, match="output folder is not writable"):
        register_pairs(_pairs(task), blocker / "out", FideConfig(), method="counting")
    assert calls == []
    assert main(["register", str(task), "-o", str(blocker / "out"), "--method", "zero"]) == 2


def test_disk_full_while_writing_leaves_no_partial_file(task, tmp_path, monkeypatch):
    import SimpleITK as sitk

    import fide.io.fields as fields

    pairs, out = _pairs(task), tmp_path / "out"
    real_write = sitk.WriteImage

    def filling(image, name, useCompression=True):
        if pairs[1].disp_name.replace(".nii.gz", "") in name:
            Path(name).write_bytes(b"\x1f\x8b half a field")  # what a full disk leaves behind
            raise RuntimeError("Exception thrown in SimpleITK WriteImage: itkNiftiImageIO.cxx:2000: ITK ERROR")
        return real_write(image, name, useCompression=useCompression)

    monkeypatch.setattr(fields.sitk, "WriteImage", filling)
    monkeypatch.setattr(fields.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    table = register_pairs(pairs, out, FideConfig(), method="zero")
    assert table["status"].tolist() == ["ok", "failed", "ok", "ok"]
    assert table["message"][1] == f"{out / pairs[1].disp_name}: cannot write the file (disk full, 0 bytes free)"
    assert not (out / pairs[1].disp_name).exists()
    assert [p.name for p in out.iterdir() if ".part" in p.name] == []


def test_interrupted_run_resumes_where_it_stopped(task, tmp_path, monkeypatch):
    pairs, out, calls = _pairs(task), tmp_path / "out", []

    def interrupted(fixed, moving, *rest):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) in the middle of pair 3
        return METHODS["zero"](fixed, moving, *rest)

    monkeypatch.setitem(METHODS, "interrupted", interrupted)
    with pytest.raises(KeyboardInterrupt):
        register_pairs(pairs, out, FideConfig(), method="interrupted", resume=True)
    assert _table(out)["status"].tolist() == ["ok", "ok"]  # the table was current when the run stopped
    assert sorted(p.name for p in out.iterdir()) == sorted([pairs[0].disp_name, pairs[1].disp_name, "results.csv"])
    calls = _counting(monkeypatch)
    table = register_pairs(pairs, out, FideConfig(), method="counting", resume=True)
    assert table["status"].tolist() == ["ok"] * 4 and len(calls) == 2  # only the two pairs not done yet


def test_images_too_large_for_the_memory_fail_with_the_estimate(task, tmp_path, monkeypatch):
    import fide.pair_task as pair_task

    calls, pairs = _counting(monkeypatch), _pairs(task)
    monkeypatch.setattr(pair_task, "available_memory_bytes", lambda: 300 * 2**20)  # less than the imports take
    table = register_pairs(pairs[:1], tmp_path / "out", FideConfig(), method="counting")
    assert calls == [] and table["status"][0] == "failed"
    assert table["message"][0] == (
        f"{pairs[0].fixed}: registering this pair needs about 0.5 GiB (fixed 64 x 64, moving 64 x 64 px), "
        "only 0.3 GiB available"
    )


# ---- --jobs: worker processes, same table and fields ----


def test_jobs_give_bit_identical_fields_the_same_table_and_resume(task, tmp_path):
    """``fide register --jobs 2`` (a real, fast registration in 2 worker processes of 1 thread) against one process
    of 1 thread: the same fields bit for bit, the same table; a pair failing in a worker fails alone; a rerun
    resumes the workers' output."""
    pairs = _pairs(task)
    pairs[2].moving.unlink()
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST_CONFIG))
    single = register_pairs(pairs, tmp_path / "one", config_from_dict(FAST_CONFIG), threads=1)
    args = ["register", str(task), "-o", str(tmp_path / "two"), "--config", str(config), "--seed", "0"]
    assert main([*args, "--jobs", "2", "--threads", "2"]) == 1  # exit 1: a pair failed
    jobs = _table(tmp_path / "two")
    assert jobs.index.tolist() == single["pair"].tolist() == [p.name for p in pairs]
    assert jobs["status"].tolist() == single["status"].tolist() and jobs["status"].iloc[2] == "failed"
    assert "not found" in jobs["message"].iloc[2]
    assert jobs["quality"].tolist() == _table(tmp_path / "one")["quality"].tolist()  # as written, 4 decimals
    for pair in pairs:
        assert torch.equal(read_disp(tmp_path / "one" / pair.disp_name), read_disp(tmp_path / "two" / pair.disp_name))
    stamp = os.stat(tmp_path / "two" / pairs[0].disp_name).st_mtime_ns
    assert main([*args, "--threads", "1"]) == 1  # resumes: only the failed pair is tried again
    assert os.stat(tmp_path / "two" / pairs[0].disp_name).st_mtime_ns == stamp
    for bad in (["--jobs", "0"], ["--threads", "x"]):
        with pytest.raises(SystemExit):
            main([*args, *bad])


def test_out_of_memory_is_named_as_such(task, tmp_path, monkeypatch):
    def hungry(fixed, moving, *rest):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: 9 bytes")

    monkeypatch.setitem(METHODS, "hungry", hungry)
    table = register_pairs(_pairs(task)[:1], tmp_path / "out", FideConfig(), method="hungry")
    assert table["message"][0].startswith("out of memory while registering (")


def test_results_table_that_cannot_be_written_stops_the_run_with_its_name(task, tmp_path, monkeypatch):
    import fide.runner as runner

    def full(table, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "write_table", full)
    with pytest.raises(DatasetError, match=r"results.csv: cannot write the results table \(No space left on device\)"):
        register_pairs(_pairs(task)[:1], tmp_path / "out", FideConfig(), method="zero")


def crash_in_worker(fixed, moving):
    """A feature extractor that kills its process, as the kernel's out-of-memory killer would."""
    os._exit(9)


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_pair_and_the_run_goes_on(tiny_task, tmp_path):
    pairs = _pairs(tiny_task)
    cfg = config_from_dict(FAST_CONFIG)
    table = register_pairs(pairs, tmp_path / "out", cfg, jobs=2, threads=2, features=crash_in_worker)
    assert table["status"].tolist() == ["failed"] * len(pairs)
    assert all("worker process ended abruptly" in m for m in table["message"])
    assert all((tmp_path / "out" / p.disp_name).is_file() for p in pairs)  # identity fields
