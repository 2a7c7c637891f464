"""fide.ablate and ``fide ablate``: variant configs, the table's columns, reuse of equal configs, missing weights."""

import json

import pandas as pd
import pytest

from fide.ablate import COLUMNS, VARIANTS, run_ablation, variant_config
from fide.cli.main import main
from fide.config import FideConfig, config_from_dict
from fide.io import load_dataset
from fide.synth import make_task

FAST = {  # reduced search and iterations: a real registration of a 96 px pair in seconds
    "search": {"angle_step_deg": 30.0, "scale_steps": 3, "refine_angle_steps": 3, "refine_scale_steps": 1, "top_k": 1},
    "optimise": {"restarts": 1, "lncc_iterations": 4, "nmi_iterations": 4, "size_px": 96, "levels": 1},
    "prealign": {"size_px": 96, "ransac_iterations": 100},
    "encoder": {"features": "handcrafted"},
}


@pytest.fixture(scope="module")
def task_path(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("task"), 2, 96, seed=6)


def test_variants_change_only_what_they_name():
    base = FideConfig()
    assert variant_config(base, VARIANTS["prealign"]).stages == "prealign"
    lncc = variant_config(base, VARIANTS["lncc"])
    assert (lncc.stages, lncc.optimise.nmi_iterations, lncc.optimise.lncc_iterations) == ("affine", 0, 30)
    assert variant_config(base, VARIANTS["nmi"]).optimise.lncc_iterations == 0
    assert variant_config(base, VARIANTS["editing-off"]).optimise.alpha == 0.0
    deformable = variant_config(base, VARIANTS["deformable"])
    assert deformable.stages == "deformable" and deformable.deformable.enabled
    assert variant_config(base, VARIANTS["restarts-1"]).optimise.restarts == 1
    assert variant_config(base, VARIANTS["learned"]).encoder.features == "learned"
    assert base.stages == "deformable" and base.optimise.alpha == 1.0  # the base is untouched


def test_unknown_variant_is_a_value_error(task_path, tmp_path):
    with pytest.raises(ValueError, match="unknown variants.*'nope'"):
        run_ablation(load_dataset(task_path), tmp_path, variants=["full", "nope"])


def test_missing_learned_weights_give_an_na_row(task_path, tmp_path):
    base = config_from_dict(FAST)
    base.encoder.weights = str(tmp_path / "no-such-weights.pt")
    table = run_ablation(load_dataset(task_path), tmp_path, base, variants=["learned"], num_pairs=1)
    assert table["note"].tolist() == ["n/a (no weights)"] and table["mean_tre"].isna().all()


def test_cli_table_on_a_tiny_task(task_path, tmp_path):
    """Real (fast) registrations: 1 pair x (prealign, full); restarts-1 equals full here and reuses its row."""
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST))
    out = tmp_path / "ablation.csv"
    args = ["ablate", str(task_path), "--pairs", "1", "--variants", "prealign,full,restarts-1"]
    assert main([*args, "--config", str(config), "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert table.columns.tolist() == COLUMNS
    assert table["variant"].tolist() == ["prealign", "full", "restarts-1"]
    assert (table["pairs"] == 1).all() and (table["failed"] == 0).all()
    assert table["under_2px"].between(0, 1).all() and (table["mean_tre"] >= 0).all()
    assert table["median_tre"].tolist() == table["mean_tre"].tolist()  # one pair
    assert table["note"].tolist()[2] == "same as full"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["full", "prealign"]


def test_cli_rejects_unknown_variants(task_path):
    with pytest.raises(SystemExit):
        main(["ablate", str(task_path), "--variants", "full,bogus"])
