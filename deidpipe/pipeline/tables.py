"""The manifest's and the audit's column types, by name: polars itself is imported only where a table is made.

polars takes about 0.35 s to import. ``deidpipe run`` forks its workers as soon as the pipeline is imported, and
the workers never make a table; the parent needs polars only when the index's rows are written, by which time
the workers are busy. Naming the types here keeps ``import deidpipe.pipeline.runner``, and every forked worker,
free of polars.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def polars_schema(columns: Mapping[str, str]) -> dict[str, Any]:
    """``{column: polars type name}`` as a polars schema (``"String"`` -> ``pl.String``)."""
    import polars as pl

    return {name: getattr(pl, dtype) for name, dtype in columns.items()}
