"""fide transform: CSV (named columns, other columns kept), GeoJSON and label images across a written folder, both
ways; bad input fails with one line naming the file."""

import json

import numpy as np
import pandas as pd
import pytest
import shapely.geometry
import tifffile
from test_align_export import _affine, _known, _smooth

from fide.cli.main import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tifffile.imwrite(root / "shg.tif", _smooth(40, 50, 1, 1)[..., 0].astype(np.uint8))
    tifffile.imwrite(root / "bf.tif", _smooth(60, 70, 3, 2).astype(np.uint8), photometric="rgb")
    reg = _known(root / "shg.tif", root / "bf.tif", _affine(angle_deg=15.0))
    reg.save(root / "aligned", qc=False)
    return root, reg


def test_csv_both_ways_with_named_columns(folder, tmp_path, capsys):
    root, reg = folder
    table = pd.DataFrame({"name": ["a", "b", "c"], "cx": [10.0, 20.5, np.nan], "cy": [15.0, 30.0, 5.0], "area": 1})
    table.to_csv(tmp_path / "cells.csv", index=False)
    assert (
        main(
            [
                "transform",
                str(root / "aligned"),
                str(tmp_path / "cells.csv"),
                "-o",
                str(tmp_path / "on_shg.csv"),
                "--columns",
                "cx,cy",
            ]
        )
        == 0
    )
    assert "2 points moving → fixed" in capsys.readouterr().out
    out = pd.read_csv(tmp_path / "on_shg.csv")
    assert list(out.columns) == ["name", "cx", "cy", "area"] and list(out["name"]) == ["a", "b", "c"]
    assert np.allclose(out[["cx", "cy"]].to_numpy()[:2], reg.transform_points([[10.0, 15.0], [20.5, 30.0]]), atol=1e-4)
    assert np.isnan(out["cx"][2])
    assert (
        main(
            [
                "transform",
                str(root / "aligned"),
                str(tmp_path / "on_shg.csv"),
                "-o",
                str(tmp_path / "back.csv"),
                "--columns",
                "cx,cy",
                "--inverse",
            ]
        )
        == 0
    )
    back = pd.read_csv(tmp_path / "back.csv")
    assert np.abs(back[["cx", "cy"]].to_numpy()[:2] - table[["cx", "cy"]].to_numpy()[:2]).max() < 1e-3


def test_geojson_and_label_image(folder, tmp_path):
    root, reg = folder
    polygon = {"type": "Polygon", "coordinates": [[[20, 20], [40, 20], [40, 40], [20, 20]]]}
    feature = {"type": "Feature", "geometry": polygon, "properties": {"classification": {"name": "Tumor"}}}
    (tmp_path / "a.geojson").write_text(json.dumps([feature]))  # QuPath's array of features
    assert (
        main(["transform", str(root / "aligned"), str(tmp_path / "a.geojson"), "-o", str(tmp_path / "b.geojson")]) == 0
    )
    carried = json.loads((tmp_path / "b.geojson").read_text())
    assert carried[0]["properties"] == feature["properties"]
    area = shapely.geometry.shape(carried[0]["geometry"]).area
    assert area == pytest.approx(200.0 / abs(np.linalg.det(reg.affine[:2, :2])))
    labels = np.zeros((60, 70), np.uint16)
    labels[10:30, 20:40], labels[35:50, 30:60] = 7, 300
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    assert (
        main(
            [
                "transform",
                str(root / "aligned"),
                str(tmp_path / "labels.tif"),
                "-o",
                str(tmp_path / "labels_on_shg.ome.tif"),
                "--labels",
            ]
        )
        == 0
    )
    written = tifffile.imread(tmp_path / "labels_on_shg.ome.tif")
    assert written.dtype == np.uint16 and written.shape == (40, 50) and set(np.unique(written)) == {0, 7, 300}
    assert np.array_equal(written, reg.warp(labels, labels=True))


@pytest.mark.parametrize(
    "name, content, extra, message",
    [
        ("p.csv", "a,b\n1,2\n", [], "p.csv: no x, y columns"),
        ("p.csv", "x,y\n1,zz\n", [], "p.csv: columns x, y must hold numbers"),
        ("p.csv", "x,y\n1,2\n", ["--columns", "u,v"], r"p.csv: columns \['u', 'v'\] not found"),
        ("p.geojson", "{not json", [], "p.geojson: cannot read GeoJSON"),
        ("p.txt", "x", [], "p.txt: cannot tell the kind"),
        ("small.tif", None, [], r"must have the moving grid's size \(60, 70\)"),
    ],
)
def test_bad_input_is_one_line_naming_the_file(folder, tmp_path, caplog, name, content, extra, message):
    root, _ = folder
    path = tmp_path / name
    if content is None:
        tifffile.imwrite(path, np.zeros((10, 12), np.uint8))
    else:
        path.write_text(content)
    assert (
        main(["transform", str(root / "aligned"), str(path), "-o", str(tmp_path / ("out" + path.suffix)), *extra]) == 2
    )
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and len(errors[0].splitlines()) == 1
    assert __import__("re").search(message, errors[0]), errors[0]
    assert main(["transform", str(tmp_path), str(path), "-o", str(tmp_path / "x.csv")]) == 2
    assert "not a fide align output folder" in caplog.records[-1].getMessage()
