"""Face rule: MR and CT head series whose skin-surface render still shows a face (the defacing stage's QC).

While objects are read, each MR/CT image object that is not known to be of another body region
(:func:`deidpipe.deface.select.head_hint`) is grouped by a keyed token of its series and frame of reference. Once
every object is read, each group of 3 or more slices (or one enhanced multi-frame object) is assembled
(:func:`deidpipe.deface.series.series_to_volume`), rendered (:func:`deidpipe.deface.face_finding.render_views`) and
given to the face detector (:func:`deidpipe.deface.face_finding.detect_faces`). A face seen in any view is one
DP-F001 finding on the series' first object, with the render (face outlined) as its thumbnail. Series that are no
clean volume are left to the header rules: the defacing stage quarantines them anyway.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from deidpipe.scan.findings import Finding

MIN_SIDE = 32


def series_of(ds: Any, key: Any) -> tuple[str, str, str] | None:
    """(keyed series token, modality, head hint) for an MR/CT image object that may be a head; else None."""
    from deidpipe.deface.select import head_hint

    modality = str(ds.get("Modality", "") or "").upper()
    if modality not in ("MR", "CT"):
        return None
    try:
        if int(ds.get("Rows", 0) or 0) < MIN_SIDE or int(ds.get("Columns", 0) or 0) < MIN_SIDE:
            return None
        descriptions = [str(ds.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName", "StudyDescription")]
        hint = head_hint(str(ds.get("BodyPartExamined", "") or ""), descriptions)
    except Exception:  # noqa: BLE001 - a value that cannot be decoded: not a candidate
        return None
    if hint == "other":
        return None
    series = f"{ds.get('SeriesInstanceUID', '')}/{ds.get('FrameOfReferenceUID', '')}"
    return key.token("scan-series", series, 16), modality, hint or "unknown"


def _png(image: Any, boxes: list[tuple[int, int, int, int]], reveal: bool = False) -> str:
    """The render with the faces outlined; unless ``reveal`` (``--show-values``) each face is pixelated."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(image).convert("RGB")
    if not reveal:
        for x, y, w, h in boxes:
            region = img.crop((x, y, x + w, y + h))
            img.paste(region.resize((6, 6), Image.BILINEAR).resize((w, h), Image.NEAREST), (x, y))
    draw = ImageDraw.Draw(img)
    for x, y, w, h in boxes:
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(230, 30, 30), width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _read_series(spec: Any, paths: list[str]) -> list[Any]:
    from deidpipe.dicomio import read_dataset
    from deidpipe.pipeline.source import SourceItem, iter_items, read_member

    if spec.random_access:
        return [read_dataset(read_member(spec, SourceItem(p, 0)), name=p) for p in paths]
    wanted = set(paths)  # a tar archive is read front to back once more, keeping only the series' members
    found = {it.relpath: it.data for it in iter_items(spec) if it.relpath in wanted and it.data is not None}
    return [read_dataset(found[p], name=p) for p in paths if p in found]


def face_in_series(datasets: list[Any]) -> tuple[str, list[tuple[int, int, int, int]], Any] | None:
    """(view, face boxes, render) for the first view of the series' volume that shows a face; else None."""
    from deidpipe.deface.face_finding import detect_faces, render_views
    from deidpipe.deface.series import series_to_volume

    volume = series_to_volume(datasets)
    for view, image in render_views(volume.image()).items():
        boxes = detect_faces(image)
        if boxes:
            return view, [tuple(int(v) for v in b) for b in boxes], image  # type: ignore[misc]
    return None


def face_findings(spec: Any, groups: dict[str, list[str]], reveal: bool = False) -> list[Finding]:
    """DP-F001 for every grouped series whose render shows a face."""
    from deidpipe.dicomio.quiet import quiet
    from deidpipe.errors import DeidError

    out: list[Finding] = []
    for token in sorted(groups):
        paths = sorted(groups[token])
        try:
            with quiet():
                datasets = _read_series(spec, paths)
                if len(datasets) < 3 and not (len(datasets) == 1 and "PerFrameFunctionalGroupsSequence"
                                              in datasets[0]):
                    continue
                seen = face_in_series(datasets)
        except (DeidError, ValueError, KeyError, OSError):
            continue
        if seen is None:
            continue
        view, boxes, image = seen
        out.append(Finding(paths[0], "DP-F001", "high", "face",
                           f"the {view} surface render of this head series ({len(paths)} objects) shows a face",
                           _png(image, boxes, reveal)))
    return out
