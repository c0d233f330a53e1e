"""Server side: run a plan on encrypted features with a public context only.

Scale bookkeeping is exact. Before a rescale that drops prime ``q``, plaintext weights are encoded at scale
``q * target / current``, so every layer output comes back at exactly the encoding scale, and ciphertexts that
are added always agree on scale and level. Each layer rescales once, after all its products are summed.

A degree-3 activation ``c3 z^3 + c2 z^2 + c1 z + c0`` is evaluated as ``z^2 (c3 z + c2) + (c1 z + c0)``: two
levels, two ciphertext products. ``square`` takes one level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deidpipe.he.ckks_context import PublicContext, SecretContext, load_public_context
from deidpipe.he.compile import InferencePlan, load_plan
from deidpipe.he.errors import (
    ContextMismatchError,
    DepthError,
    FeatureCountError,
    MissingKeyError,
    SecretKeyInPublicContextError,
)
from deidpipe.he.io import FEATURES_KIND, SCORES_KIND, CipherBundle, seal_from_bytes, seal_to_bytes
from deidpipe.he.packing import diagonals, layer_geometry, tile


class Engine:
    """A plan bound to a public context, with plaintext diagonals encoded once and reused across samples."""

    def __init__(self, plan: InferencePlan, context: PublicContext) -> None:
        """Check the plan fits the context (depth, width, precision); nothing is encrypted yet."""
        if isinstance(context, SecretContext) or not isinstance(context, PublicContext):
            raise SecretKeyInPublicContextError("the server path takes a PublicContext, never a secret one")
        import tenseal.sealapi as sealapi

        self.plan, self.ctx, self.s = plan, context, sealapi
        self.ev = sealapi.Evaluator(context.seal)
        self.delta = context.scale
        self._qlast: dict[tuple[int, ...], int] = {}
        self._cache: dict[tuple[Any, ...], Any] = {}
        meta = context.meta
        if plan.depth > int(meta["depth"]):
            raise DepthError(f"the model needs {plan.depth} multiplicative levels but the modulus chain of "
                             f"{meta['preset']} has {meta['depth']}; run keygen with --model for this plan")
        if max(plan.dims) > context.slots:
            raise DepthError(f"a layer is wider than the {context.slots} slots of this context")
        room = 2.0 ** (int(meta["coeff_mod_bit_sizes"][0]) - int(meta["scale_bits"]) - 1)
        if plan.output_bound is not None and 2 * plan.output_bound >= room:
            raise DepthError(f"scores reach {plan.output_bound:.3g} on the compile data but the last prime of "
                             f"{meta['preset']} only holds values below {room:.3g}")

    # -- public ---------------------------------------------------------------------------------------------------
    def run(self, bundle: CipherBundle) -> CipherBundle:
        """Score an encrypted-features bundle; returns the encrypted-scores bundle."""
        meta = bundle.meta
        if bundle.kind != FEATURES_KIND:
            raise ContextMismatchError(f"expected encrypted features, got a {bundle.kind} bundle")
        if bundle.context_id != self.ctx.context_id:
            raise ContextMismatchError("the features were encrypted under another key generation than this "
                                       "public context (context ids differ)")
        if int(meta["n_features"]) != self.plan.n_features:
            raise FeatureCountError(f"the model takes {self.plan.n_features} features; the ciphertexts hold "
                                    f"{meta['n_features']}")
        if int(meta["level"]) < self.plan.depth:
            raise DepthError(f"the ciphertexts have {meta['level']} levels left in the modulus chain, the model "
                             f"needs {self.plan.depth}")
        cts = [seal_from_bytes(self.s.Ciphertext(), b, self.ctx.seal) for b in bundle.blobs]
        if any(self.ctx.chain_index(c.parms_id()) != int(meta["level"]) for c in cts):
            raise ContextMismatchError("a ciphertext does not belong to this context's parameters")
        packing = meta["packing"]
        if packing == "batch" and meta.get("complex_pairs"):
            if len(self.plan.layers) != 1:
                raise ContextMismatchError("features packed in complex pairs serve single-layer linear plans only")
            per = -(-self.plan.n_features // 2)
            outs = []
            for start in range(0, len(cts), per):
                outs.extend(self._linear_batch_pairs(cts[start : start + per], self.plan.layers[0].weight,
                                                     self.plan.layers[0].bias))
        elif packing == "batch":
            nf = self.plan.n_features
            outs = []
            for start in range(0, len(cts), nf):
                outs.extend(self.forward_batch(cts[start : start + nf]))
        elif packing == "single":
            missing = sorted(set(self.plan.rotation_steps()) - set(self.ctx.galois_steps))
            if missing or self.ctx.galois_keys is None:
                raise MissingKeyError(f"single-vector packing needs Galois keys for rotation steps {missing}; "
                                      "run keygen with --model for this plan")
            outs = [self.forward_single(c) for c in cts]
        else:
            raise ContextMismatchError(f"unknown packing {packing!r}")
        last = self.ctx.seal.last_parms_id()
        for c in outs:
            if self.ctx.chain_index(c.parms_id()) > 0:
                self.ev.mod_switch_to_inplace(c, last)
        out_meta = {
            "context_id": self.ctx.context_id, "packing": packing, "n_samples": int(meta["n_samples"]),
            "n_outputs": self.plan.n_outputs, "slots": self.ctx.slots, "plan_id": self.plan.plan_id,
            "task": self.plan.task, "classes": self.plan.classes,
        }
        return CipherBundle(SCORES_KIND, out_meta, [seal_to_bytes(c) for c in outs])

    def forward_batch(self, cts: list[Any]) -> list[Any]:
        """One chunk, feature-major: a ciphertext per feature in, a ciphertext per score out."""
        h = cts
        for layer in self.plan.layers:
            h = self._linear_batch(h, layer.weight, layer.bias)
            if layer.activation is not None:
                h = [self._activation(c, layer.activation) for c in h]
        return h

    def forward_single(self, ct: Any) -> Any:
        """One sample in single-vector packing: scores in the first slots of the result."""
        h = ct
        for i, layer in enumerate(self.plan.layers):
            h = self._linear_single(i, h, layer.weight, layer.bias)
            if layer.activation is not None:
                h = self._activation(h, layer.activation)
        return h

    # -- primitives ---------------------------------------------------------------------------------------------
    def _q(self, ct: Any) -> int:
        pid = ct.parms_id()
        key = tuple(pid)
        if key not in self._qlast:
            self._qlast[key] = self.ctx.seal.get_context_data(pid).parms().coeff_modulus()[-1].value()
        return self._qlast[key]

    def _encode(self, value: float | complex | list[float], pid: Any, scale: float) -> Any:
        pt = self.s.Plaintext()
        self.ctx.encoder.encode(value, pid, scale, pt)
        return pt

    def _complex_const(self, value: complex, pid: Any, scale: float) -> Any:
        # A complex constant costs a full encode (FFT + NTT), unlike a real one: keep them for the next chunk
        # and the next request, up to a bound on memory.
        key = ("c", value, tuple(pid), scale)
        pt = self._cache.get(key)
        if pt is None:
            pt = self._encode(value, pid, scale)
            if len(self._cache) < 4096:
                self._cache[key] = pt
        return pt

    def _mul_const(self, ct: Any, value: float, pt_scale: float) -> Any:
        out = self.s.Ciphertext()
        self.ev.multiply_plain(ct, self._encode(float(value), ct.parms_id(), pt_scale), out)
        return out

    def _rescale(self, ct: Any, scale: float) -> Any:
        self.ev.rescale_to_next_inplace(ct)
        ct.scale = scale  # equal to SEAL's value up to rounding; set so that additions match exactly
        return ct

    def _add_const(self, ct: Any, value: float) -> Any:
        if value != 0.0:
            self.ev.add_plain_inplace(ct, self._encode(float(value), ct.parms_id(), ct.scale))
        return ct

    def _unit_fallback(self, ct: Any, pt_scale: float) -> Any:
        # An all-zero row would give a transparent (unencrypted) result, which SEAL refuses: multiply by the
        # smallest non-zero encodable weight instead (1 / pt_scale: about 2**-32 of one input, far below error).
        return self._mul_const(ct, 1.0 / pt_scale, pt_scale)

    # -- layers -------------------------------------------------------------------------------------------------
    def _weighted_rows(self, cts: list[Any], coeffs: np.ndarray, b: np.ndarray, encode: Any) -> list[Any]:
        """For each row r of ``coeffs``: sum_k coeffs[r, k] * cts[k] + b[r], rescaled once.

        ``encode(value, parms_id, scale)`` makes the plaintext for one coefficient (real or complex)."""
        q, s_in = self._q(cts[0]), cts[0].scale
        pt_scale = q * self.delta / s_in
        pid = cts[0].parms_id()
        outs = []
        for r in range(coeffs.shape[0]):
            acc = None
            for k in np.flatnonzero(coeffs[r]):
                tmp = self.s.Ciphertext()
                self.ev.multiply_plain(cts[k], encode(coeffs[r, k], pid, pt_scale), tmp)
                if acc is None:
                    acc = tmp
                else:
                    self.ev.add_inplace(acc, tmp)
            if acc is None:
                acc = self._unit_fallback(cts[0], pt_scale)
            outs.append(self._add_const(self._rescale(acc, self.delta), float(b[r])))
        return outs

    def _linear_batch(self, cts: list[Any], w: np.ndarray, b: np.ndarray) -> list[Any]:
        return self._weighted_rows(cts, w, b, lambda v, pid, sc: self._encode(float(v), pid, sc))

    def _linear_batch_pairs(self, cts: list[Any], w: np.ndarray, b: np.ndarray) -> list[Any]:
        """Linear layer on features packed two per slot (x_2k + i x_2k+1): the real part is the score."""
        wp = np.zeros((w.shape[0], 2 * len(cts)))
        wp[:, : w.shape[1]] = w
        cw = wp[:, 0::2] - 1j * wp[:, 1::2]
        return self._weighted_rows(cts, cw, b, lambda v, pid, sc: self._complex_const(complex(v), pid, sc))

    def _single_plaintexts(self, i: int, ct: Any, w: np.ndarray, b: np.ndarray) -> tuple:
        key = (i, tuple(ct.parms_id()), ct.scale)
        if key not in self._cache:
            geom = layer_geometry(w.shape[1], w.shape[0])
            slots = self.ctx.slots
            pt_scale = self._q(ct) * self.delta / ct.scale
            diags = diagonals(w, geom)
            pts = [None if not np.any(d) else self._encode(np.tile(d, slots // geom.block).tolist(),
                                                           ct.parms_id(), pt_scale) for d in diags]
            self._cache[key] = (geom, pts, pt_scale, tile(b, geom.out_block, slots))
        return self._cache[key]

    def _rotate(self, ct: Any, step: int) -> Any:
        out = self.s.Ciphertext()
        self.ev.rotate_vector(ct, int(step), self.ctx.galois_keys, out)
        return out

    def _linear_single(self, i: int, ct: Any, w: np.ndarray, b: np.ndarray) -> Any:
        geom, pts, pt_scale, bias = self._single_plaintexts(i, ct, w, b)
        babies = [ct] + [self._rotate(ct, j) for j in range(1, geom.baby)]
        total = None
        for k in range(geom.giant):
            inner = None
            for j in range(geom.baby):
                idx = k * geom.baby + j
                if idx >= geom.out_block or pts[idx] is None:
                    continue
                tmp = self.s.Ciphertext()
                self.ev.multiply_plain(babies[j], pts[idx], tmp)
                if inner is None:
                    inner = tmp
                else:
                    self.ev.add_inplace(inner, tmp)
            if inner is None:
                continue
            if k:
                self.ev.rotate_vector_inplace(inner, k * geom.baby, self.ctx.galois_keys)
            if total is None:
                total = inner
            else:
                self.ev.add_inplace(total, inner)
        if total is None:
            total = self._unit_fallback(ct, pt_scale)
        f = geom.out_block
        while f < geom.block:
            self.ev.add_inplace(total, self._rotate(total, f))
            f *= 2
        self._rescale(total, self.delta)
        if np.any(bias):
            self.ev.add_plain_inplace(total, self._encode(bias.tolist(), total.parms_id(), total.scale))
        return total

    def _activation(self, z: Any, act: dict[str, Any]) -> Any:
        rk = self.ctx.relin_keys
        q0, s = self._q(z), z.scale
        z2 = self.s.Ciphertext()
        self.ev.square(z, z2)
        self.ev.relinearize_inplace(z2, rk)
        s2 = s * s / q0
        self._rescale(z2, s2)
        if act["kind"] == "square":
            return z2
        c0, c1, c2, c3 = (list(act["coeffs"]) + [0.0] * 4)[:4]
        q1 = self._q(z2)
        if c3 != 0.0:
            u = self._add_const(self._rescale(self._mul_const(z, c3, q0 * self.delta / s), self.delta), c2)
            t = self.s.Ciphertext()
            self.ev.multiply(z2, u, t)
            self.ev.relinearize_inplace(t, rk)
            s_t = s2 * self.delta / q1
        else:  # quadratic: c2 * z^2 as a plaintext product
            s_t = s2 * self.delta / q1
            t = self._mul_const(z2, c2, self.delta)
        self._rescale(t, s_t)
        if c1 != 0.0:
            v = self._rescale(self._mul_const(z, c1, q0 * s_t / s), s_t)
            self.ev.mod_switch_to_next_inplace(v)
            v.scale = s_t
            self.ev.add_inplace(t, v)
        return self._add_const(t, c0)


def infer(
    plan: InferencePlan | str | Path,
    context: PublicContext | str | Path,
    features: CipherBundle | str | Path,
    *,
    out: str | Path | None = None,
) -> CipherBundle:
    """Score encrypted features with a public context; write the encrypted scores to ``out`` when given.

    Never touches a secret key: a context file holding one is refused before anything is computed.
    """
    plan_ = plan if isinstance(plan, InferencePlan) else load_plan(plan)
    ctx = context if isinstance(context, (PublicContext, SecretContext)) else load_public_context(context)
    bundle = features if isinstance(features, CipherBundle) else CipherBundle.load(features, expect=FEATURES_KIND)
    result = Engine(plan_, ctx).run(bundle)
    if out is not None:
        result.save(out)
    return result
