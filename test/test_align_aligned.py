"""fide.align.aligned: points, GeoJSON and images across a registration built from a known map; every public entry
takes array-likes (lists, tuples, flipped numpy views, integer dtypes, torch tensors)."""

import numpy as np
import pytest
import shapely.geometry
import torch
from test_align_export import _affine, _known, _smooth

POINTS = np.array([[10.0, 12.0], [30.0, 20.0], [25.5, 33.25], [5.0, 38.0]])  # (x, y)


@pytest.fixture(scope="module")
def reg():
    fixed = _smooth(40, 50, 1, 1)[..., 0].astype(np.uint8)
    moving = _smooth(60, 70, 3, 2).astype(np.uint8)
    return _known(fixed, moving, _affine(angle_deg=25.0, scale=1.1))


@pytest.fixture(scope="module")
def deformable():
    return _known(_smooth(40, 50, 1, 1)[..., 0], _smooth(60, 70, 3, 2), _affine(angle_deg=-10.0), bump_px=2.0)


def test_points_accept_every_array_like_including_reversed_columns(reg):
    expected = reg.warp_points(POINTS)
    yx = np.ascontiguousarray(POINTS[:, ::-1])
    assert np.allclose(reg.warp_points(yx[:, ::-1]), expected)  # negative strides: torch used to refuse them
    for value in (POINTS.tolist(), tuple(map(tuple, POINTS)), torch.tensor(POINTS), torch.tensor(POINTS).float()):
        assert np.allclose(reg.warp_points(value), expected, atol=1e-4)
    integers = np.array([[10, 12], [30, 20]], dtype=np.int16)
    assert np.allclose(reg.warp_points(integers), reg.warp_points(integers.astype(float)))
    assert np.allclose(reg.transform_points(expected[::-1][::-1]), POINTS)
    assert reg.transform_points([]).shape == (0, 2)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        reg.transform_points(np.zeros((2, 3)))


@pytest.mark.parametrize("inverse", [False, True])
def test_round_trips_within_0_05_px_affine_and_deformable(reg, deformable, inverse):
    for r in (reg, deformable):
        there = r.transform_points(POINTS, inverse=inverse)
        assert np.abs(r.transform_points(there, inverse=not inverse) - POINTS).max() < 0.05


def test_images_accept_flipped_views_torch_and_lists(reg):
    moving = reg.moving.read()[:, :, :].transpose(1, 0, 2)  # (rows, columns, 3) uint8
    expected = reg.warp(moving)
    flipped = np.ascontiguousarray(moving[::-1])[::-1]
    assert np.array_equal(reg.warp(flipped), expected)
    assert np.array_equal(reg.warp(torch.from_numpy(moving)), expected)
    grey = moving[:, :, 0]
    from_list = reg.warp(grey.tolist(), labels=False)  # a list of ints is int64, which alone would mean labels
    assert from_list.dtype == np.int64 and np.array_equal(from_list.astype(np.uint8), reg.warp(grey))
    assert reg.warp(grey).shape == (40, 50) and reg.warp(moving[:, ::2].repeat(2, 1)[:, :70]).shape == (40, 50, 3)


def test_labels_and_masks_are_resampled_nearest_with_their_dtype(reg):
    rows, cols = 60, 70
    labels = (np.arange(rows * cols).reshape(rows, cols) * 1000 + 70000).astype(np.int64)  # beyond float32 precision
    warped = reg.warp(labels)
    assert warped.dtype == np.int64 and set(np.unique(warped)) <= set(np.unique(labels)) | {0}
    centre = reg.transform_points([[25.0, 20.0]], inverse=True)[0]  # the moving pixel the fixed (25, 20) shows
    assert warped[20, 25] == labels[int(round(centre[1])), int(round(centre[0]))]
    mask = np.zeros((rows, cols), bool)
    mask[20:40, 25:50] = True
    warped_mask = reg.warp(mask)
    assert warped_mask.dtype == bool and 0 < warped_mask.sum() < warped_mask.size
    as_uint8 = reg.warp(mask.astype(np.uint8) * 255)  # a two-valued uint8 image is taken as a mask
    assert set(np.unique(as_uint8)) <= {0, 255}
    smooth = reg.warp(mask.astype(np.uint8) * 255, labels=False)
    assert len(np.unique(smooth)) > 2
    back = reg.warp(warped_mask, inverse=True)
    assert back.shape == (rows, cols)


def _feature_collection():
    square = [[20.0, 20.0], [40.0, 20.0], [40.0, 40.0], [20.0, 40.0], [20.0, 20.0]]
    hole = [[25.0, 25.0], [25.0, 30.0], [30.0, 30.0], [30.0, 25.0], [25.0, 25.0]]
    geometries = [
        {"type": "Point", "coordinates": [30.0, 30.0]},
        {"type": "MultiPoint", "coordinates": [[21.0, 22.0], [35.0, 36.0]]},
        {"type": "LineString", "coordinates": [[20.0, 20.0], [45.0, 30.0], [30.0, 50.0]]},
        {"type": "Polygon", "coordinates": [square, hole]},
        {"type": "MultiPolygon", "coordinates": [[square], [[[50.0, 10.0], [55.0, 10.0], [55.0, 15.0], [50.0, 10.0]]]]},
    ]
    features = [
        {"type": "Feature", "id": f"id{k}", "geometry": g, "properties": {"objectType": "annotation", "k": k}}
        for k, g in enumerate(geometries)
    ]
    return {"type": "FeatureCollection", "features": features, "bbox": [0, 0, 1, 1]}


def test_geojson_round_trip_keeps_properties_and_scales_areas_by_the_determinant(reg):
    collection = _feature_collection()
    on_fixed = reg.transform_geojson(collection)
    assert "bbox" not in on_fixed and [f["properties"]["k"] for f in on_fixed["features"]] == list(range(5))
    assert on_fixed["features"][0]["id"] == "id0" and collection["features"][0]["geometry"]["coordinates"][0] == 30
    shapes = [shapely.geometry.shape(f["geometry"]) for f in on_fixed["features"]]  # loads in shapely
    originals = [shapely.geometry.shape(f["geometry"]) for f in collection["features"]]
    scale = 1 / abs(np.linalg.det(reg.affine[:2, :2]))  # moving -> fixed: the inverse affine
    for shape, original in zip(shapes[3:], originals[3:]):
        assert shape.is_valid and shape.area == pytest.approx(original.area * scale, rel=1e-9)
    assert len(shapes[3].interiors) == 1
    # the point follows transform_points, with QuPath's corner origin (pixel centres at +0.5)
    point = reg.transform_points([[29.5, 29.5]])[0] + 0.5
    assert np.allclose(on_fixed["features"][0]["geometry"]["coordinates"], point)
    back = reg.transform_geojson(on_fixed, inverse=True)
    for a, b in zip(back["features"], collection["features"]):
        assert shapely.geometry.shape(a["geometry"]).equals_exact(shapely.geometry.shape(b["geometry"]), 0.05)


def test_a_mirroring_map_keeps_ring_orientation(reg):
    mirror = _known(
        reg.fixed.read()[..., 0].T,
        reg.moving.read().transpose(1, 0, 2),
        np.diag([-1.0, 1.0, 1.0]) + [[0, 0, 69.0], [0, 0, 0], [0, 0, 0]],
    )
    polygon = _feature_collection()["features"][3]["geometry"]
    carried = mirror.transform_geojson(polygon)
    exterior = shapely.geometry.shape(carried)
    assert exterior.exterior.is_ccw == shapely.geometry.shape(polygon).exterior.is_ccw


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"type": "Circle", "coordinates": [1, 2]}, "unknown GeoJSON type 'Circle'"),
        ({"type": "Point", "coordinates": [1]}, r"a position must be \[x, y"),
        ({"type": "Feature", "geometry": {"type": "Point"}}, "Point without 'coordinates'"),
        ([{"type": "Point", "coordinates": ["a", 2]}], "must be numbers"),
        ("missing.geojson", "cannot read GeoJSON"),
    ],
)
def test_bad_geojson_names_the_problem(reg, bad, message):
    with pytest.raises(ValueError, match=message):
        reg.transform_geojson(bad)
