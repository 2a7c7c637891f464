"""GeoJSON as QuPath exports it: every coordinate mapped at once, everything else (properties, ids) kept.

Accepted: a FeatureCollection, a Feature, a bare geometry, or a list of Features (QuPath's "Export objects"
writes either); geometries Point, MultiPoint, LineString, MultiLineString, Polygon (holes included), MultiPolygon
and GeometryCollection, with 2 or more values per position (values past x, y are kept unchanged). Only vertices
move: an edge stays straight, which is exact for affine maps (add vertices first for a deformable one). A ring
whose orientation the map reverses (a mirrored slide) is turned back, so exteriors keep their orientation and holes
theirs. ``bbox`` members are dropped (they would be stale).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

__all__ = ["map_geojson", "GEOMETRY_DEPTH"]

# nesting of each geometry's "coordinates": 0 a position, 1 a list of positions, 2 a list of lists, ...
GEOMETRY_DEPTH = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2, "Polygon": 2, "MultiPolygon": 3}
_RING_DEPTH = {"Polygon": 1, "MultiPolygon": 2}  # where rings sit within the nesting


def _geometries(obj, where: str) -> list[dict]:
    """Every geometry (GeometryCollections expanded) of a GeoJSON object, in order; ``where`` names it in errors."""
    if isinstance(obj, list):
        return [g for k, item in enumerate(obj) for g in _geometries(item, f"{where}[{k}]")]
    if not isinstance(obj, dict) or "type" not in obj:
        raise ValueError(f"{where}: expected a GeoJSON object with a 'type', got {type(obj).__name__}")
    kind = obj["type"]
    if kind == "FeatureCollection":
        return _geometries(obj.get("features", []), f"{where}.features")
    if kind == "Feature":
        geometry = obj.get("geometry")
        return [] if geometry is None else _geometries(geometry, f"{where}.geometry")
    if kind == "GeometryCollection":
        return _geometries(obj.get("geometries", []), f"{where}.geometries")
    if kind not in GEOMETRY_DEPTH:
        raise ValueError(f"{where}: unknown GeoJSON type {kind!r}, expected one of {sorted(GEOMETRY_DEPTH)}")
    if "coordinates" not in obj:
        raise ValueError(f"{where}: {kind} without 'coordinates'")
    return [obj]


def _positions(coordinates, depth: int, out: list, where: str) -> None:
    """Append every position (a list of numbers) under ``coordinates`` nested ``depth`` deep."""
    if depth == 0:
        if not isinstance(coordinates, (list, tuple)) or len(coordinates) < 2:
            raise ValueError(f"{where}: a position must be [x, y, ...], got {coordinates!r}")
        out.append(coordinates)
        return
    if not isinstance(coordinates, (list, tuple)):
        raise ValueError(f"{where}: expected a list of coordinates, got {coordinates!r}")
    for item in coordinates:
        _positions(item, depth - 1, out, where)


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of an (N, 2) ring, positive counter-clockwise in (x, y)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _rings(coordinates, depth: int) -> list[list]:
    if depth == 0:
        return [coordinates]
    return [ring for item in coordinates for ring in _rings(item, depth - 1)]


def _plain(value):
    """numpy scalars and arrays as Python numbers and lists (for ``json.dumps``)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _drop_bbox(obj) -> None:
    if isinstance(obj, dict):
        obj.pop("bbox", None)
        for value in obj.values():
            _drop_bbox(value)
    elif isinstance(obj, list):
        for value in obj:
            _drop_bbox(value)


def map_geojson(obj, mapper: Callable[[np.ndarray], np.ndarray], where: str = "GeoJSON"):
    """A copy of ``obj`` with every (x, y) mapped by ``mapper`` ((N, 2) float64 → (N, 2)), in one call.

    Raises:
        ValueError: not GeoJSON, an unknown type, or malformed coordinates (the path inside ``obj`` is named).
    """
    try:  # a copy with lists only (tuples and numpy values from Python callers become JSON's types)
        result = json.loads(json.dumps(obj, default=_plain))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: not JSON-serialisable ({err})") from None
    geometries = _geometries(result, where)
    positions: list = []
    for geometry in geometries:
        _positions(geometry["coordinates"], GEOMETRY_DEPTH[geometry["type"]], positions, where)
    try:
        xy = np.array([[float(p[0]), float(p[1])] for p in positions], dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: coordinates must be numbers") from None
    before = {id(p): (p[0], p[1]) for p in positions}
    mapped = mapper(xy)
    for position, (x, y) in zip(positions, mapped):
        position[0], position[1] = float(x), float(y)
    polygons = [g for g in geometries if g["type"] in _RING_DEPTH]
    for geometry in polygons:  # rings keep their orientation under a mirroring map
        for ring in _rings(geometry["coordinates"], _RING_DEPTH[geometry["type"]]):
            new = np.array([p[:2] for p in ring], dtype=np.float64)
            old = np.array([before[id(p)] for p in ring], dtype=np.float64)
            if len(ring) >= 3 and _signed_area(new) * _signed_area(old) < 0:
                ring.reverse()
    _drop_bbox(result)
    return result
