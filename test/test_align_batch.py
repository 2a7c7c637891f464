"""fide.align.batch: pairs.csv parsing (paths, names, errors) and the completeness check used by resume."""

import pytest

from fide.align.batch import AlignPair, is_complete, read_pairs
from fide.io import DatasetError


def test_pairs_csv_paths_are_relative_to_the_csv_and_names_default_to_the_moving_stem(tmp_path):
    (tmp_path / "sub").mkdir()
    csv = tmp_path / "sub" / "pairs.csv"
    csv.write_text("fixed,moving,name\na.tif,b c.ome.tif,\n/abs/f.tif,/abs/m.tif,core/7\n")
    first, second = read_pairs(csv)
    assert first.fixed == tmp_path / "sub" / "a.tif" and first.moving == tmp_path / "sub" / "b c.ome.tif"
    assert first.name == "b c" and first.disp_name == "b c/disp.nii.gz"
    assert second.fixed.as_posix() == "/abs/f.tif" and second.name == "core_7"  # a name is one folder


@pytest.mark.parametrize(
    "text,message",
    [
        ("fixed,name\na,b\n", r"missing \['moving'\]"),
        ("fixed,moving\n", "no rows"),
        ("fixed,moving,name\na,b,x\nc,d,x\n", "unique"),
    ],
)
def test_bad_pairs_tables_give_one_line_errors(tmp_path, text, message):
    csv = tmp_path / "pairs.csv"
    csv.write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_pairs(csv)
    with pytest.raises(DatasetError, match="cannot read pairs table"):
        read_pairs(tmp_path / "missing.csv")


def test_a_folder_is_complete_only_with_its_transform_files(tmp_path):
    pair = AlignPair(tmp_path / "f", tmp_path / "m", "p", "", "p", "", label="p")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "transform.tfm").write_text("x")
    assert not is_complete(tmp_path, pair)
    (tmp_path / "p" / "transform.json").write_text("{}")
    assert is_complete(tmp_path, pair)
