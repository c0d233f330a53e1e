"""The batch pipeline: source -> index -> plan -> execute -> sink -> audit.

``run(src, dst, policy, workers=..., executor=...) -> RunReport`` processes an archive; ``iter_run(...)`` yields
an :class:`ObjectResult` per object as it finishes. Below them, the batch entry every caller shares
(:mod:`deidpipe.pipeline.batch`: ``open_pool``, ``series_tasks``, ``deidentify``) and the stage contract
(:class:`~deidpipe.pipeline.contract.Stage`, the registry's ``STAGES``). Names are loaded on first use, so
``deidpipe --help`` does not pay for polars and the executors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.lazy import lazy_names

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.pipeline.audit import ObjectResult
    from deidpipe.pipeline.batch import deidentify, open_pool, series_tasks
    from deidpipe.pipeline.contract import SeriesFacts, Stage, StageOutput
    from deidpipe.pipeline.registry import STAGES
    from deidpipe.pipeline.report import RunReport
    from deidpipe.pipeline.runner import Run, iter_run, run

_WHERE = {
    "ObjectResult": ".audit",
    "RunReport": ".report",
    **dict.fromkeys(("deidentify", "open_pool", "series_tasks"), ".batch"),
    **dict.fromkeys(("SeriesFacts", "Stage", "StageOutput"), ".contract"),
    "STAGES": ".registry",
    **dict.fromkeys(("Run", "iter_run", "run"), ".runner"),
}

__all__ = ["STAGES", "ObjectResult", "Run", "RunReport", "SeriesFacts", "Stage", "StageOutput", "deidentify",
           "iter_run", "open_pool", "run", "series_tasks"]

__getattr__ = lazy_names(__name__, _WHERE)
