"""deidpipe's version: stamped into De-identification Method (0012,0063) and Implementation Version Name
(0002,0013) by the header engine, and into ``scan``'s SARIF report. A module of its own so that those modules read
it without importing the package ``__init__`` (which re-exports them: an import circle)."""

__version__ = "0.1.0"
