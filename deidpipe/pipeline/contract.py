"""The stage contract: what every stage of the pipeline is to the pipeline.

A stage is one step that changes objects on their way from the source to DST: ``header`` (the confidentiality
profile), ``pixel_text`` (burned-in text) and ``deface`` (faces in head series). Each stage package exports one
:class:`Stage` from its ``stage`` module (:mod:`deidpipe.header.stage`, :mod:`deidpipe.pixels.stage`,
:mod:`deidpipe.deface.stage`); :mod:`deidpipe.pipeline.registry` lists them in execution order. Adding a stage
is one new module and one line in that list: the plan asks :attr:`Stage.needed` which series need it, and the
worker (:mod:`deidpipe.pipeline.execute`) calls :attr:`Stage.run`.

A stage never raises for a good object and never writes anything: it returns the changed data set and counts for
the audit (:class:`StageOutput`), or raises a typed error (:class:`deidpipe.errors.DeidError`) and the object
(for a series stage: the series) is quarantined with that error's fixed reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:  # pragma: no cover - types only; the stage modules import what they run
    from pydicom.dataset import Dataset

    from deidpipe.keys import ProjectKey
    from deidpipe.policy import Policy

Scope = Literal["object", "series"]
SCOPE_OBJECT: Scope = "object"
SCOPE_SERIES: Scope = "series"


class StageOutput(NamedTuple):
    """What a stage returns for one object: the (changed) data set and the audit's action counts."""

    dataset: Dataset
    actions: dict[str, int]


@dataclass(frozen=True)
class SeriesFacts:
    """What the index knows of one series, as a stage's :attr:`Stage.needed` test reads it: one entry per object,
    from the manifest's columns (``modality``, ``head_hint``, ``rows``, ``columns``; see
    :mod:`deidpipe.pipeline.index`). Rows and Columns (0028,0010/0011) are None for an object without an image."""

    modalities: tuple[str | None, ...]
    head_hints: tuple[str | None, ...]
    rows: tuple[int | None, ...]
    columns: tuple[int | None, ...]

    @property
    def has_image(self) -> bool:
        """Whether any object of the series has Pixel Data (the index read its Rows)."""
        return any(r is not None for r in self.rows)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> SeriesFacts:
        """From manifest rows as dicts (``deidpipe serve`` indexes what it receives one object at a time)."""
        rows = list(rows)
        return cls(tuple(r["modality"] for r in rows), tuple(r["head_hint"] for r in rows),
                   tuple(r["rows"] for r in rows), tuple(r["columns"] for r in rows))

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence[Any]]) -> SeriesFacts:
        """From manifest columns (a polars DataFrame of one series, or any mapping of column -> values)."""
        return cls(*(tuple(columns[name]) for name in ("modality", "head_hint", "rows", "columns")))


#: An object-scope stage: (data set after the earlier stages, policy, project key, the data set as read or None)
ObjectRun = Callable[["Dataset", "Policy", "ProjectKey", "Dataset | None"], StageOutput]
#: A series-scope stage: the series' data sets (any order), policy, key and the data sets as read, one per object.
SeriesRun = Callable[[list["Dataset"], "Policy", "ProjectKey", list["Dataset | None"]], list[StageOutput]]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    ``name`` is the stage's name in the audit (``stage`` of a quarantined object, a key of ``timings_ms``).
    ``scope`` says whether :attr:`run` takes one object (``object``) or a whole series at once (``series``:
    defacing needs the volume). ``needs_source``: the stage also reads the objects as they were read, before any
    stage changed them (the pixel stage matches burned-in text against the original identifiers); the worker keeps
    them only then. ``needed(facts, policy)`` says, from the index alone, whether a series needs the stage.
    ``run`` is an :data:`ObjectRun` or a :data:`SeriesRun` by scope.
    """

    name: str
    scope: Scope
    needs_source: bool
    needed: Callable[[SeriesFacts, Policy], bool]
    run: ObjectRun | SeriesRun

    def __post_init__(self) -> None:
        if self.scope not in (SCOPE_OBJECT, SCOPE_SERIES):
            raise ValueError(f"stage {self.name!r}: scope must be 'object' or 'series'")


def always(facts: SeriesFacts, policy: Policy) -> bool:
    """The ``needed`` test of a stage every object goes through (the header)."""
    return True
