"""How feature vectors are laid out in CKKS slots, and which layout to use.

**Batch** (throughput): feature-major. Ciphertext ``j`` of a chunk holds feature ``j`` of up to ``slots``
samples, one sample per slot. A layer is then ``z_r = sum_j W[r, j] * ct_j + b_r``: scalar products and
additions only, no rotation, every slot an independent sample.

**Single-vector** (latency): one sample per ciphertext, its features zero-padded to a power of two ``P`` and
repeated across all slots, so a rotation of the whole ciphertext is a cyclic rotation of the vector. A layer is
a matrix-vector product by the diagonal method (Halevi-Shoup), in its hybrid form for ``Q <= P`` outputs
(``Q`` diagonals of length ``P``, then ``log2(P/Q)`` rotate-and-add folds), with baby-step giant-step so it
costs about ``2 sqrt(Q) + log2(P/Q)`` rotations. Only those rotation steps get Galois keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Rough costs at N=8192 on one core, in milliseconds, for the packing choice (measured with SEAL 4.x).
COST_MS = {"encrypt": 3.2, "mul_plain": 0.3, "rotate": 5.5, "ct_mult": 10.0, "decrypt": 2.0}


def pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, math.ceil(math.log2(max(1, int(n)))))


@dataclass(frozen=True)
class LayerGeometry:
    """Single-vector layout of one ``n_out x n_in`` layer."""

    n_in: int
    n_out: int
    block: int  # P: period of the input in the slots
    out_block: int  # Q: period of the output (Q <= P)
    baby: int
    giant: int

    def steps(self) -> list[int]:
        """Left-rotation steps: baby steps, giant steps, then the folds."""
        s = set(range(1, self.baby))
        s.update(k * self.baby for k in range(1, self.giant))
        f = self.out_block
        while f < self.block:
            s.add(f)
            f *= 2
        return sorted(s)

    @property
    def rotations(self) -> int:
        """Rotations one evaluation performs."""
        return (self.baby - 1) + (self.giant - 1) + int(math.log2(self.block // self.out_block))


def layer_geometry(n_in: int, n_out: int) -> LayerGeometry:
    """Geometry of the hybrid diagonal method with baby-step giant-step for an ``n_out x n_in`` layer."""
    q = pow2(n_out)
    p = max(pow2(n_in), q)
    baby = 1 << math.ceil(math.log2(q) / 2) if q > 1 else 1
    giant = math.ceil(q / baby)
    return LayerGeometry(int(n_in), int(n_out), p, q, baby, giant)


def diagonals(weight: np.ndarray, geom: LayerGeometry) -> np.ndarray:
    """The ``Q`` generalised diagonals (shape Q x P), each pre-rotated for its giant step.

    ``d_i[t] = W[t mod Q, (t + i) mod P]`` (zero outside ``W``); row ``i = k*baby + j`` is ``d_i`` rotated
    right by ``k*baby`` so that ``sum_k rot(sum_j row_(k,j) * rot(x, j), k*baby) = sum_i d_i * rot(x, i)``.
    """
    p, q = geom.block, geom.out_block
    w = np.zeros((q, p))
    w[: weight.shape[0], : weight.shape[1]] = weight
    t = np.arange(p)
    out = np.empty((q, p))
    for i in range(q):
        d = w[t % q, (t + i) % p]
        k = i // geom.baby
        out[i] = np.roll(d, k * geom.baby)
    return out


def tile(vec: np.ndarray, period: int, slots: int) -> np.ndarray:
    """Zero-pad ``vec`` to ``period`` and repeat it to fill ``slots``."""
    v = np.zeros(period)
    v[: len(vec)] = vec
    return np.tile(v, slots // period)


def batch_chunks(x: np.ndarray, slots: int) -> list[np.ndarray]:
    """Split samples x features into chunks of shape (features, slots), zero-padded: one row per ciphertext."""
    out = []
    for start in range(0, x.shape[0], slots):
        part = x[start : start + slots]
        chunk = np.zeros((x.shape[1], slots))
        chunk[:, : part.shape[0]] = part.T
        out.append(chunk)
    return out


def single_slots(x: np.ndarray, slots: int) -> np.ndarray:
    """One sample laid out for the single-vector packing: padded to a power of two and repeated."""
    return tile(x, pow2(len(x)), slots)


def simulate_single(layers: list[tuple[np.ndarray, np.ndarray, Any]], x: np.ndarray, slots: int,
                    act: Any = None) -> np.ndarray:
    """Run the single-vector algorithm on plaintext slots (np.roll for rotations); returns the output slots.

    A check of the diagonal arithmetic that needs no encryption; ``act(activation, z)`` applies activations.
    """
    v = single_slots(x, slots)
    for w, b, activation in layers:
        g = layer_geometry(w.shape[1], w.shape[0])
        diags = np.tile(diagonals(w, g), (1, slots // g.block))
        babies = [np.roll(v, -j) for j in range(g.baby)]
        total = np.zeros(slots)
        for k in range(g.giant):
            inner = sum(diags[k * g.baby + j] * babies[j] for j in range(g.baby) if k * g.baby + j < g.out_block)
            total += np.roll(inner, -k * g.baby)
        f = g.out_block
        while f < g.block:
            total += np.roll(total, -f)
            f *= 2
        v = total + tile(b, g.out_block, slots)
        if activation is not None and act is not None:
            v = act(activation, v)
    return v


def estimate_ms(summary: dict[str, Any], n_samples: int, packing: str, slots: int) -> float:
    """Estimated client+server milliseconds to score ``n_samples`` with this packing (a rough cost model)."""
    dims, acts, nnz = summary["dims"], summary["activations"], summary["nnz"]
    c = COST_MS
    act_mults = sum(dims[i + 1] * (1 if a == "square" else 2) for i, a in enumerate(acts) if a is not None)
    if packing == "batch":
        chunks = math.ceil(n_samples / slots)
        per = dims[0] * c["encrypt"] + sum(nnz) * c["mul_plain"] + act_mults * c["ct_mult"] + dims[-1] * c["decrypt"]
        return chunks * per
    per = c["encrypt"] + c["decrypt"]
    for i in range(len(dims) - 1):
        g = layer_geometry(dims[i], dims[i + 1])
        per += g.rotations * c["rotate"] + g.out_block * c["mul_plain"]
    per += sum(1 if a == "square" else 2 for a in acts if a is not None) * c["ct_mult"]
    return n_samples * per


def choose_packing(summary: dict[str, Any] | None, n_samples: int, slots: int, galois_steps: list[int]) -> str:
    """``single`` when the context has the model's rotation keys and the cost model says it is cheaper."""
    if not summary or not set(summary["steps"]) <= set(galois_steps):
        return "batch"
    single = estimate_ms(summary, n_samples, "single", slots)
    batch = estimate_ms(summary, n_samples, "batch", slots)
    return "single" if single < batch else "batch"
