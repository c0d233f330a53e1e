"""deidpipe: make medical imaging archives safe to share.

The public API, re-exported from the stage sub-packages::

    from deidpipe import Policy, ProjectKey, deidentify_dataset
    key = ProjectKey.from_file("project.key")
    clean = deidentify_dataset(ds, Policy.basic(options=["RetainLongModifiedDates"]), key=key)
"""

from deidpipe.errors import (
    DeidError,
    InputError,
    InvalidValueError,
    KeyMissingError,
    NotDicomError,
    PolicyError,
    TruncatedError,
)
from deidpipe.keys import ProjectKey

__version__ = "0.1.0"

# Imported after __version__: the engine stamps it into DeidentificationMethod.
from deidpipe.header.engine import HeaderResult, deidentify, deidentify_dataset  # noqa: E402
from deidpipe.pipeline.runner import RunReport, iter_run, run  # noqa: E402
from deidpipe.policy import Policy  # noqa: E402
from deidpipe.synth import AnswerKey, generate_archive  # noqa: E402

__all__ = [
    "DeidError",
    "HeaderResult",
    "AnswerKey",
    "Policy",
    "RunReport",
    "generate_archive",
    "iter_run",
    "run",
    "deidentify",
    "deidentify_dataset",
    "InputError",
    "InvalidValueError",
    "KeyMissingError",
    "NotDicomError",
    "PolicyError",
    "ProjectKey",
    "TruncatedError",
    "__version__",
]
