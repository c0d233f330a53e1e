"""Typed errors of the encrypted-inference stage.

Messages name files, feature counts, levels and key kinds: never a feature value, a weight or key material.
"""

from __future__ import annotations

from deidpipe.errors import DeidError


class HEError(DeidError):
    """Base class of every error raised by :mod:`deidpipe.he`."""


class InsecureParametersError(HEError):
    """Encryption parameters below 128-bit security (HomomorphicEncryption.org standard) were refused."""


class ContextMismatchError(HEError):
    """Ciphertexts were made under other keys or parameters than the context given."""


class SecretKeyInPublicContextError(HEError):
    """A context meant for the server (public) carries a secret key; it is refused, not used."""


class MissingKeyError(HEError):
    """The context lacks a key the operation needs (secret key to decrypt, a Galois key to rotate)."""


class FeatureCountError(HEError):
    """The feature vectors do not have the number of features the model or context expects."""


class DepthError(HEError):
    """The model needs more multiplicative levels (or more precision) than the modulus chain provides."""


class UnsupportedModelError(HEError):
    """The model cannot be compiled to an encrypted-inference plan."""


class FormatError(HEError):
    """A plan, context or ciphertext file is not in the expected format, or is damaged."""
