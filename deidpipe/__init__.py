"""deidpipe: make medical imaging archives safe to share.

The public API, re-exported from the stage sub-packages::

    from deidpipe import Policy, ProjectKey, deidentify_dataset
    key = ProjectKey.from_file("project.key")
    clean = deidentify_dataset(ds, Policy.basic(options=["RetainLongModifiedDates"]), key=key)

The stage names are loaded on first use (PEP 562 ``__getattr__``): ``import deidpipe`` and ``deidpipe --help`` then
cost milliseconds instead of the second that pydicom, numpy and polars take to import. ``from deidpipe import run``
works as before; type checkers see the names through the ``TYPE_CHECKING`` imports below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deidpipe.errors import (
    DeidError,
    InputError,
    InvalidValueError,
    KeyMissingError,
    NotDicomError,
    PolicyError,
    SkippedError,
    TruncatedError,
)
from deidpipe.keys import ProjectKey
from deidpipe.lazy import lazy_names
from deidpipe.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.header.engine import HeaderResult, deidentify, deidentify_dataset
    from deidpipe.pipeline.report import RunReport
    from deidpipe.pipeline.runner import iter_run, run
    from deidpipe.policy import Policy
    from deidpipe.synth import AnswerKey, generate_archive

# Public name -> the module that defines it (imported on first access).
_WHERE = {
    **dict.fromkeys(("HeaderResult", "deidentify", "deidentify_dataset"), ".header.engine"),
    "RunReport": ".pipeline.report",
    **dict.fromkeys(("iter_run", "run"), ".pipeline.runner"),
    "Policy": ".policy",
    **dict.fromkeys(("AnswerKey", "generate_archive"), ".synth"),
}

__all__ = [
    "DeidError",
    "HeaderResult",
    "AnswerKey",
    "Policy",
    "RunReport",
    "generate_archive",
    "iter_run",
    "run",
    "serve",
    "deidentify",
    "deidentify_dataset",
    "InputError",
    "InvalidValueError",
    "KeyMissingError",
    "NotDicomError",
    "PolicyError",
    "ProjectKey",
    "SkippedError",
    "TruncatedError",
    "__version__",
]


# ``serve`` is the sub-package, which is callable: deidpipe.serve(config) starts a node.
__getattr__ = lazy_names(__name__, _WHERE, modules=("serve",))
