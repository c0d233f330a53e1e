"""The batch pipeline: source -> index -> plan -> execute -> sink -> audit.

``run(src, dst, policy, workers=..., executor=...) -> RunReport`` processes an archive; ``iter_run(...)`` yields
an :class:`ObjectResult` per object as it finishes. Names are loaded on first use, so ``deidpipe --help`` does not
pay for polars and the executors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deidpipe.pipeline.audit import ObjectResult
    from deidpipe.pipeline.runner import Run, RunReport, iter_run, run

__all__ = ["ObjectResult", "Run", "RunReport", "iter_run", "run"]


def __getattr__(name: str) -> Any:
    if name == "ObjectResult":
        from deidpipe.pipeline.audit import ObjectResult

        return ObjectResult
    if name in ("Run", "RunReport", "iter_run", "run"):
        from deidpipe.pipeline import runner

        return getattr(runner, name)
    raise AttributeError(name)
