"""``deidpipe serve``: a DICOM network node that de-identifies what it receives and forwards it.

C-STORE in (:mod:`.scp`) -> durable queue (:mod:`.queue`) -> the same stages as ``run`` (:mod:`.process`) ->
destinations with retries (:mod:`.deliver`). ``deidpipe.serve(config)`` (or ``deidpipe.serve.serve(config)``)
starts a :class:`Node`; see ``docs/serve.md``.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from deidpipe.lazy import lazy_names

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.serve.config import Destination, ServeConfig
    from deidpipe.serve.node import Node, serve
    from deidpipe.serve.status import queue_status

# PEP 562: pydicom and pynetdicom load when the node is used.
_WHERE = {
    **dict.fromkeys(("Node", "serve"), ".node"),
    **dict.fromkeys(("ServeConfig", "Destination"), ".config"),
    "queue_status": ".status",
}

__all__ = ["Destination", "Node", "ServeConfig", "serve", "queue_status"]

__getattr__ = lazy_names(__name__, _WHERE)


class _CallableModule(types.ModuleType):
    """This package, callable: ``deidpipe.serve(config, key=None, policy=None)`` is
    :func:`deidpipe.serve.node.serve`, as ``deidpipe.run(...)`` is the batch runner."""

    def __call__(self, config: Any, key: Any = None, policy: Any = None) -> Any:
        from deidpipe.serve.node import serve

        return serve(config, key, policy)


sys.modules[__name__].__class__ = _CallableModule
