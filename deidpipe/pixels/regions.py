"""Known burned-in text regions by device: blacked without OCR.

Two sources: the CTP-derived ``%filter`` lists that pydicom/deid ships (evaluated through deid's own
``has_burned_pixels``), and deidpipe's additions in ``rules/pixel_regions.yaml``. Filters are matched against
the *original* header (the de-identified one has lost the descriptions they test). deid's results depend only
on a few attributes, so they are cached by those attributes' values.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydicom.dataset import Dataset

from deidpipe.pixels.candidates import Box
from deidpipe.ruledata import load_rule_file


@cache
def _deid_recipe() -> tuple[Any, tuple[str, ...]]:
    from deid.config import DeidRecipe
    from deid.logger import bot

    bot.level = -3  # deid's own scale: ERROR and worse only
    recipe = DeidRecipe("dicom")
    fields: set[str] = {"Rows", "Columns"}
    for items in (recipe.get_filters() or {}).values():
        for item in items:
            for group in item.get("filters", []):
                fields.update(str(f) for f in group.get("field", []))
            for _, coord in item.get("coordinates", []):
                if isinstance(coord, str) and coord.startswith("from:"):
                    fields.add(coord[5:])
    return recipe, tuple(sorted(fields))


_DEID_CACHE: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {}


def _deid_coordinates(ds: Dataset) -> list[str]:
    from deid.dicom.pixels.detect import has_burned_pixels
    from pydicom.dataset import FileDataset

    recipe, fields = _deid_recipe()
    key = tuple(str(ds.get(f, "")) for f in fields)
    if key not in _DEID_CACHE:
        probe = ds if isinstance(ds, FileDataset) else FileDataset("", ds, preamble=b"\0" * 128)
        result = has_burned_pixels(probe, force=True, deid=recipe)
        coords: list[tuple[str, ...]] = []
        for item in result.get("results", []):
            for mask, coord in item.get("coordinates", []):
                if int(mask) != 0:
                    continue  # "keep" coordinates: OCR still checks them
                coords.append(tuple(coord) if isinstance(coord, list) else (str(coord),))
        if len(_DEID_CACHE) > 4096:
            _DEID_CACHE.clear()
        _DEID_CACHE[key] = tuple(coords)
    return [c for group in _DEID_CACHE[key] for c in group]


def _parse(coord: str, rows: int, cols: int) -> Box | None:
    if coord.strip().lower() == "all":
        return Box(0, 0, cols, rows)
    try:
        x0, y0, x1, y1 = (int(float(v)) for v in coord.split(","))
    except ValueError:
        return None
    box = Box(max(x0, 0), max(y0, 0), min(x1, cols), min(y1, rows))
    return box if box.area > 0 else None


@cache
def _our_regions() -> list[dict[str, Any]]:
    return list(load_rule_file("pixel_regions.yaml").get("regions") or [])


def _matches(ds: Dataset, spec: Any) -> bool:
    value = str(ds.get(spec[0], "") or "")
    wanted = spec[1] if isinstance(spec[1], list) else [spec[1]]
    for w in wanted:
        w = str(w)
        if w.lower().startswith("contains:"):
            if w[9:].lower() in value.lower():
                return True
        elif value.strip().lower() == w.strip().lower():
            return True
    return False


def _edge(v: int, size: int) -> int:
    return size + v + 1 if v < 0 else v


def known_regions(ds: Dataset, rows: int, cols: int, *, use_deid: bool = True) -> list[Box]:
    """Boxes to black without OCR for the device that made ``ds`` (the original header)."""
    boxes: list[Box] = []
    if use_deid:
        for coord in _deid_coordinates(ds):
            b = _parse(coord, rows, cols)
            if b is not None:
                boxes.append(b)
    for region in _our_regions():
        if all(_matches(ds, item) for item in (region.get("match") or {}).items()):
            for x0, y0, x1, y1 in region.get("boxes") or []:
                b = Box(_edge(x0, cols), _edge(y0, rows), min(_edge(x1, cols), cols), min(_edge(y1, rows), rows))
                if b.area > 0:
                    boxes.append(b)
    return boxes
