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

from typing import TYPE_CHECKING

from deidpipe.lazy import lazy_names

_WHERE = {
    **dict.fromkeys(("keygen", "KeyFiles", "SecretContext", "PublicContext", "load_secret_context",
                     "load_public_context"), ".ckks_context"),
    **dict.fromkeys(("compile_model", "InferencePlan", "Layer", "load_plan"), ".compile"),
    **dict.fromkeys(("encrypt", "decrypt", "Scores"), ".client"),
    **dict.fromkeys(("infer", "Engine"), ".infer"),
    "CipherBundle": ".io",
    **dict.fromkeys(("PRESETS", "Preset", "custom_preset"), ".params"),
    **dict.fromkeys(("HEError", "InsecureParametersError", "ContextMismatchError", "SecretKeyInPublicContextError",
                     "MissingKeyError", "FeatureCountError", "DepthError", "UnsupportedModelError", "FormatError"),
                    ".errors"),
}

__all__ = [
    "CipherBundle",
    "ContextMismatchError",
    "DepthError",
    "Engine",
    "FeatureCountError",
    "FormatError",
    "HEError",
    "InferencePlan",
    "InsecureParametersError",
    "KeyFiles",
    "Layer",
    "MissingKeyError",
    "PRESETS",
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
    from deidpipe.he.ckks_context import (
        KeyFiles,
        PublicContext,
        SecretContext,
        keygen,
        load_public_context,
        load_secret_context,
    )
    from deidpipe.he.client import Scores, decrypt, encrypt
    from deidpipe.he.compile import InferencePlan, Layer, compile_model, load_plan
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


__getattr__ = lazy_names(__name__, _WHERE)
