"""The project key (deidpipe.keys): where it is read from, its file mode, and that it never shows."""

from __future__ import annotations

import os
import stat

import pytest

from deidpipe.errors import KeyMissingError
from deidpipe.keys import ProjectKey


def test_key_sources(tmp_path, monkeypatch):
    path = ProjectKey.generate(tmp_path / "k")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    from_file = ProjectKey.from_file(path)
    monkeypatch.setenv("DEIDPIPE_KEY_FILE", str(path))
    monkeypatch.delenv("DEIDPIPE_KEY", raising=False)
    assert ProjectKey.from_env() == from_file
    assert "secret" not in repr(from_file) and path.read_text().strip() not in repr(from_file)
    monkeypatch.delenv("DEIDPIPE_KEY_FILE")
    with pytest.raises(KeyMissingError):
        ProjectKey.from_env()
    with pytest.raises(KeyMissingError):
        ProjectKey(b"short")
