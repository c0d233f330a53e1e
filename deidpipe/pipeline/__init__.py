"""The batch pipeline: source -> index -> plan -> execute -> sink -> audit.

``run(src, dst, policy, workers=..., executor=...) -> RunReport`` processes an archive; ``iter_run(...)`` yields
an :class:`ObjectResult` per object as it finishes. Names are loaded on first use, so ``deidpipe --help`` does not
pay for polars and the executors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.lazy import lazy_names

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.pipeline.audit import ObjectResult
    from deidpipe.pipeline.report import RunReport
    from deidpipe.pipeline.runner import Run, iter_run, run

_WHERE = {
    "ObjectResult": ".audit",
    "RunReport": ".report",
    **dict.fromkeys(("Run", "iter_run", "run"), ".runner"),
}

__all__ = ["ObjectResult", "Run", "RunReport", "iter_run", "run"]

__getattr__ = lazy_names(__name__, _WHERE)
