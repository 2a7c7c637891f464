"""The results table (fide/results.py): columns, shards and earlier runs merged, legacy tables, atomic writes."""

import pandas as pd

from fide.results import COLUMNS, PairOutcome, merge_results, read_tables, results_name, write_table


def test_newest_row_of_each_pair_wins_and_legacy_tables_get_defaults(tmp_path):
    legacy = pd.DataFrame(
        [["0001", "ok", 1.0, 0.1, ""], ["0002", "failed", 2.0, float("nan"), "unreadable"]],
        columns=["pair", "status", "seconds", "quality", "message"],
    )  # written before the confidence and mirrored columns existed
    legacy.to_csv(tmp_path / results_name((0, 2)), index=False)
    newer = pd.DataFrame([vars(PairOutcome("0002", "flagged", 3.0, 0.02, 0.1, True, "mirrored"))], columns=COLUMNS)
    write_table(newer, tmp_path / results_name((1, 2)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.shard-0-of-2.csv", "results.shard-1-of-2.csv"]
    assert len(read_tables(tmp_path)) == 3
    merged = merge_results(tmp_path)
    assert list(merged.columns) == COLUMNS and merged["pair"].tolist() == ["0001", "0002"]
    first, second = merged.iloc[0], merged.iloc[1]
    assert first["status"] == "ok" and pd.isna(first["confidence"]) and not first["mirrored"]
    assert second["status"] == "flagged" and second["confidence"] == 0.1 and bool(second["mirrored"])
    assert (tmp_path / "results.csv").exists() and not list(tmp_path.glob("*.tmp*"))
