"""Encrypted inference: CKKS models on encrypted feature vectors.

The client (hospital) generates keys, encrypts feature vectors and decrypts scores; the server (portal) runs a
compiled plan on ciphertexts with a public context that holds no secret key::

    from deidpipe import he
    plan = he.compile_model(sklearn_model, X_train, y_train)      # portal
    keys = he.keygen("keys/", plan=plan)                          # hospital
    enc = he.encrypt(keys.secret, X, out="x.enc")                 # hospital
    res = he.infer(plan, keys.public, enc, out="scores.enc")      # portal, public context only
    scores = he.decrypt(keys.secret, res, out="scores.csv")       # hospital

Names are imported lazily so that ``import deidpipe.he`` (and ``deidpipe --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "keygen": "context",
    "KeyFiles": "context",
    "SecretContext": "context",
    "PublicContext": "context",
    "load_secret_context": "context",
    "load_public_context": "context",
    "compile_model": "compile",
    "Plan": "compile",
    "Layer": "compile",
    "load_plan": "compile",
    "encrypt": "client",
    "decrypt": "client",
    "Scores": "client",
    "infer": "infer",
    "Engine": "infer",
    "CipherBundle": "io",
    "PRESETS": "params",
    "Preset": "params",
    "custom_preset": "params",
    "HEError": "errors",
    "InsecureParametersError": "errors",
    "ContextMismatchError": "errors",
    "SecretKeyInPublicContextError": "errors",
    "MissingKeyError": "errors",
    "FeatureCountError": "errors",
    "DepthError": "errors",
    "UnsupportedModelError": "errors",
    "FormatError": "errors",
}

__all__ = [
    "CipherBundle",
    "ContextMismatchError",
    "DepthError",
    "Engine",
    "FeatureCountError",
    "FormatError",
    "HEError",
    "InsecureParametersError",
    "KeyFiles",
    "Layer",
    "MissingKeyError",
    "PRESETS",
    "Plan",
    "Preset",
    "PublicContext",
    "Scores",
    "SecretContext",
    "SecretKeyInPublicContextError",
    "UnsupportedModelError",
    "compile_model",
    "custom_preset",
    "decrypt",
    "encrypt",
    "infer",
    "keygen",
    "load_plan",
    "load_public_context",
    "load_secret_context",
]

if TYPE_CHECKING:  # pragma: no cover
    from deidpipe.he.client import Scores, decrypt, encrypt
    from deidpipe.he.compile import Layer, Plan, compile_model, load_plan
    from deidpipe.he.context import (
        KeyFiles,
        PublicContext,
        SecretContext,
        keygen,
        load_public_context,
        load_secret_context,
    )
    from deidpipe.he.errors import (
        ContextMismatchError,
        DepthError,
        FeatureCountError,
        FormatError,
        HEError,
        InsecureParametersError,
        MissingKeyError,
        SecretKeyInPublicContextError,
        UnsupportedModelError,
    )
    from deidpipe.he.infer import Engine, infer
    from deidpipe.he.io import CipherBundle
    from deidpipe.he.params import PRESETS, Preset, custom_preset


def __getattr__(name: str) -> Any:
    """Import the public names on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deidpipe.he' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"deidpipe.he.{module}"), name)
    globals()[name] = value
    return value
