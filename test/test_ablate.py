"""fide.ablate and ``fide ablate``: variant configs, the table's columns, reuse of equal configs, missing weights."""

import json

import pandas as pd
import pytest
from conftest import FAST_CONFIG

from fide.ablate import COLUMNS, VARIANTS, run_ablation, variant_config
from fide.cli.main import main
from fide.config import FideConfig, config_from_dict
from fide.io import load_dataset


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


def test_unknown_variant_is_a_value_error(tiny_task, tmp_path):
    with pytest.raises(ValueError, match="unknown variants.*'nope'"):
        run_ablation(load_dataset(tiny_task), tmp_path, variants=["full", "nope"])


def test_missing_learned_weights_give_an_na_row(tiny_task, tmp_path):
    base = config_from_dict(FAST_CONFIG)
    base.encoder.weights = str(tmp_path / "no-such-weights.pt")
    table = run_ablation(load_dataset(tiny_task), tmp_path, base, variants=["learned"], num_pairs=1)
    assert table["note"].tolist() == ["n/a (no weights)"] and table["mean_tre"].isna().all()


def test_cli_table_on_a_tiny_task(tiny_task, tmp_path, fast_engine):
    """Real (fast) registrations: 1 pair x (prealign, full); restarts-1 equals full here and reuses its row."""
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST_CONFIG))
    out = tmp_path / "ablation.csv"
    args = ["ablate", str(tiny_task), "--pairs", "1", "--variants", "prealign,full,restarts-1"]
    assert main([*args, "--config", str(config), "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert table.columns.tolist() == COLUMNS
    assert table["variant"].tolist() == ["prealign", "full", "restarts-1"]
    assert (table["pairs"] == 1).all() and (table["failed"] == 0).all()
    assert table["under_2px"].between(0, 1).all() and (table["mean_tre"] >= 0).all()
    assert table["median_tre"].tolist() == table["mean_tre"].tolist()  # one pair
    assert table["note"].tolist()[2] == "same as full"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["full", "prealign"]


def test_cli_rejects_unknown_variants(tiny_task):
    with pytest.raises(SystemExit):
        main(["ablate", str(tiny_task), "--variants", "full,bogus"])
