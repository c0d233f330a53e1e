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


def test_digest_is_hmac_sha256_of_the_domain_and_value():
    """Every pseudonym derives from this digest: it must stay HMAC-SHA256(key, domain NUL value) from version to
    version, whichever way the value is fed (whole, or in pieces to the incremental hasher)."""
    import hashlib
    import hmac

    key = ProjectKey(b"k" * 32)
    value = bytes(range(256)) * 2049
    expected = hmac.new(b"k" * 32, b"input-content\x00" + value, hashlib.sha256).digest()
    assert key.digest("input-content", value) == expected
    hasher = key.hasher("input-content")
    hasher.update(value[:1000])
    hasher.update(value[1000:])
    assert hasher.digest() == expected
    assert key.digest("uid", "1.2.3") == hmac.new(b"k" * 32, b"uid\x001.2.3", hashlib.sha256).digest()
