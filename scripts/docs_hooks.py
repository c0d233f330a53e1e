"""mkdocs hook (mkdocs.yml ``hooks:``): the docstrings cross-reference the Sphinx way (``:func:`run```), which
mkdocstrings' python handler leaves as text; the rendered page shows the name in code without the role."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):(?=<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub("", html)
