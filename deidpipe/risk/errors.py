"""The risk module's typed error. Messages name columns, files and parameters, never a cell value."""

from __future__ import annotations

from deidpipe.errors import DeidError


class RiskError(DeidError, ValueError):
    """The table or the parameters cannot be scored as asked (unknown column, population and fraction both given,
    population smaller than the table, unreadable file, ...)."""
