"""Client side: encrypt feature vectors and decrypt scores with the secret context.

Encryption is symmetric (with the secret key), so SEAL stores each fresh ciphertext with a seed in place of its
second polynomial: half the bytes on the wire. Ciphertexts start at the level the model needs (recorded at key
generation), not at the top of the modulus chain, which makes them smaller again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deidpipe.he.ckks_context import SecretContext, load_secret_context
from deidpipe.he.compile import labels_from_scores
from deidpipe.he.errors import ContextMismatchError, FeatureCountError, FormatError, MissingKeyError
from deidpipe.he.io import (
    FEATURES_KIND,
    SCORES_KIND,
    CipherBundle,
    as_feature_matrix,
    atomic_write,
    read_features,
    scores_csv,
    seal_from_bytes,
    seal_to_bytes,
)
from deidpipe.he.packing import batch_chunks, choose_packing, single_slots


def _secret(context: SecretContext | str | Path) -> SecretContext:
    if isinstance(context, SecretContext):
        return context
    if isinstance(context, (str, Path)):
        return load_secret_context(context)
    raise MissingKeyError("this operation needs the client's secret context")


def encrypt(
    context: SecretContext | str | Path,
    features: Any,
    *,
    packing: str = "auto",
    out: str | Path | None = None,
) -> CipherBundle:
    """Encrypt a samples x features matrix (array, or .npy/.parquet/.csv path) for the server.

    ``packing``: ``batch`` (many samples per ciphertext), ``single`` (one sample per ciphertext, needs the
    model's Galois keys) or ``auto`` (the cheaper of the two by a cost model, given the keys at hand).
    """
    import tenseal.sealapi as sealapi

    ctx = _secret(context)
    x = read_features(features) if isinstance(features, (str, Path)) else as_feature_matrix(features)
    summary = ctx.meta.get("model")
    if summary and x.shape[1] != int(summary["dims"][0]):
        raise FeatureCountError(f"the keys were made for a model with {summary['dims'][0]} features; the "
                                f"matrix has {x.shape[1]}")
    if x.shape[1] > ctx.slots:
        raise FeatureCountError(f"{x.shape[1]} features do not fit the {ctx.slots} slots of a ciphertext")
    if packing == "auto":
        packing = choose_packing(summary, x.shape[0], ctx.slots, ctx.galois_steps)
    if packing not in ("batch", "single"):
        raise FormatError(f"packing must be auto, batch or single, not {packing!r}")
    if packing == "single" and summary and not set(summary["steps"]) <= set(ctx.galois_steps):
        raise MissingKeyError("single-vector packing needs the model's Galois keys; run keygen with --model")
    level = int(ctx.meta["encrypt_level"])
    pid = ctx.parms_id_at(level)
    encryptor = sealapi.Encryptor(ctx.seal, ctx.secret_key)
    # A single-layer linear model needs only the real part of its score, so two features share a slot as
    # x_2k + i x_2k+1 and the server multiplies by w_2k - i w_2k+1: half the ciphertexts, no conjugation key.
    pairs = packing == "batch" and bool(summary) and len(summary["dims"]) == 2
    if packing == "single":
        vectors = [single_slots(v, ctx.slots) for v in x]
    elif pairs:
        vectors = [chunk[j] + 1j * (chunk[j + 1] if j + 1 < len(chunk) else 0.0)
                   for chunk in batch_chunks(x, ctx.slots) for j in range(0, len(chunk), 2)]
    else:
        vectors = [row for chunk in batch_chunks(x, ctx.slots) for row in chunk]
    blobs = []
    for vec in vectors:
        pt = sealapi.Plaintext()
        ctx.encoder.encode(vec.tolist(), pid, ctx.scale, pt)
        blobs.append(seal_to_bytes(encryptor.encrypt_symmetric(pt)))
    meta = {
        "context_id": ctx.context_id, "packing": packing, "n_samples": int(x.shape[0]),
        "n_features": int(x.shape[1]), "level": level, "slots": ctx.slots, "complex_pairs": pairs,
    }
    bundle = CipherBundle(FEATURES_KIND, meta, blobs)
    if out is not None:
        bundle.save(out)
    return bundle


@dataclass
class Scores:
    """Decrypted decision scores (samples x outputs) and the labels they give."""

    scores: np.ndarray
    labels: list[Any]
    columns: list[str]
    label_column: str

    def to_csv(self) -> bytes:
        """CSV bytes: one row per sample, the scores then the label."""
        return scores_csv(self.scores, self.labels, self.columns, self.label_column)


def decrypt(
    context: SecretContext | str | Path,
    scores: CipherBundle | str | Path,
    *,
    out: str | Path | None = None,
) -> Scores:
    """Decrypt encrypted scores; write ``out`` as CSV (scores, then the predicted label) when given."""
    import tenseal.sealapi as sealapi

    ctx = _secret(context)
    bundle = scores if isinstance(scores, CipherBundle) else CipherBundle.load(scores, expect=SCORES_KIND)
    if bundle.kind != SCORES_KIND:
        raise FormatError("decrypt takes encrypted scores (the output of infer)")
    if bundle.context_id != ctx.context_id:
        raise ContextMismatchError("the scores were computed under another key generation than this secret "
                                   "context (context ids differ)")
    meta = bundle.meta
    n, k, slots = int(meta["n_samples"]), int(meta["n_outputs"]), ctx.slots
    decryptor = sealapi.Decryptor(ctx.seal, ctx.secret_key)
    values = []
    for blob in bundle.blobs:
        ct = seal_from_bytes(sealapi.Ciphertext(), blob, ctx.seal)
        pt = sealapi.Plaintext()
        decryptor.decrypt(ct, pt)
        values.append(np.asarray(ctx.encoder.decode_double(pt)))
    out_scores = np.empty((n, k))
    if meta["packing"] == "batch":
        if len(values) != k * -(-n // slots):
            raise FormatError("the scores file holds the wrong number of ciphertexts")
        for c in range(len(values) // k):
            rows = out_scores[c * slots : (c + 1) * slots]
            for r in range(k):
                rows[:, r] = values[c * k + r][: rows.shape[0]]
    else:
        if len(values) != n:
            raise FormatError("the scores file holds the wrong number of ciphertexts")
        for i, v in enumerate(values):
            out_scores[i] = v[:k]
    task, classes = str(meta["task"]), list(meta.get("classes") or [])
    labels = labels_from_scores(task, classes, out_scores)
    if task == "binary" or k == 1:
        columns = ["score"]
    elif task == "argmax":
        columns = [f"score_{c}" for c in classes]
    else:
        columns = [f"score_{i}" for i in range(k)]
    result = Scores(out_scores, labels, columns, "prediction" if task == "regression" else "label")
    if out is not None:
        atomic_write(out, [result.to_csv()])
    return result
