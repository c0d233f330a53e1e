"""``deidpipe serve``: a DICOM network node that de-identifies what it receives and forwards it.

C-STORE in (:mod:`.scp`) -> durable queue (:mod:`.queue`) -> the same stages as ``run`` (:mod:`.process`) ->
destinations with retries (:mod:`.deliver`). ``deidpipe.serve(config)`` (or ``deidpipe.serve.serve(config)``)
starts a :class:`Node`; see ``docs/serve.md``.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["Destination", "Node", "ServeConfig", "serve", "queue_status"]


def __getattr__(name: str) -> Any:  # PEP 562: pydicom and pynetdicom load when the node is used
    if name in ("Node", "serve"):
        from deidpipe.serve import node

        return getattr(node, name)
    if name in ("ServeConfig", "Destination"):
        from deidpipe.serve import config

        return getattr(config, name)
    if name == "queue_status":
        from deidpipe.serve.status import queue_status

        return queue_status
    raise AttributeError(name)


class _CallableModule(types.ModuleType):
    """This package, callable: ``deidpipe.serve(config, key=None, policy=None)`` is
    :func:`deidpipe.serve.node.serve`, as ``deidpipe.run(...)`` is the batch runner."""

    def __call__(self, config: Any, key: Any = None, policy: Any = None) -> Any:
        from deidpipe.serve.node import serve

        return serve(config, key, policy)


sys.modules[__name__].__class__ = _CallableModule
