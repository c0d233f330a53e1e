"""CKKS keys and contexts: generation, the secret/public split, and loading with checks.

The client (hospital) keeps ``secret.context``: parameters, secret key, public key. The server (portal) gets
``public.context``: parameters, public key, relinearisation keys and only the Galois keys for the rotation
steps the model's single-vector plan needs. A public context never holds a secret key: loading one that does
is refused, and :class:`PublicContext` has no slot for one.

Built on TenSEAL's ``sealapi`` (Microsoft SEAL) rather than ``tenseal.Context``, because TenSEAL's context can
only generate Galois keys for every power-of-two step (about 60 MB at N=8192), not for a chosen set.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deidpipe.he.errors import (
    DepthError,
    FormatError,
    HEError,
    InsecureParametersError,
    MissingKeyError,
    SecretKeyInPublicContextError,
)
from deidpipe.he.io import read_container, seal_from_bytes, seal_to_bytes, write_container
from deidpipe.he.params import Preset, choose_preset, get_preset, security_problem

SECRET_KIND = "secret-context"
PUBLIC_KIND = "public-context"
CONTEXT_FORMAT = "deidpipe.he.context/1"


def _sealapi() -> Any:
    import tenseal.sealapi as sealapi

    return sealapi


def galois_elt(step: int, poly_modulus_degree: int) -> int:
    """SEAL's Galois element for a left rotation of the CKKS slots by ``step``."""
    m = 2 * poly_modulus_degree
    step = step % (poly_modulus_degree // 2)
    return pow(3, step, m)


@dataclass
class _Context:
    """Parameters and SEAL objects shared by both kinds of context."""

    meta: dict[str, Any]
    seal: Any = field(repr=False)
    public_key: Any = field(repr=False)
    _encoder: Any = field(default=None, repr=False)

    @property
    def context_id(self) -> str:
        """Random identifier shared by the secret and public halves of one key generation."""
        return str(self.meta["context_id"])

    @property
    def slots(self) -> int:
        """CKKS slots per ciphertext."""
        return int(self.meta["poly_modulus_degree"]) // 2

    @property
    def scale(self) -> float:
        """The encoding scale (2**scale_bits)."""
        return float(2 ** int(self.meta["scale_bits"]))

    @property
    def galois_steps(self) -> list[int]:
        """Rotation steps with a Galois key in the public context."""
        return [int(s) for s in self.meta.get("galois_steps", [])]

    @property
    def encoder(self) -> Any:
        """A CKKS encoder for these parameters."""
        if self._encoder is None:
            self._encoder = _sealapi().CKKSEncoder(self.seal)
        return self._encoder

    def parms_id_at(self, chain_index: int) -> Any:
        """The parameter id of the modulus-chain level with this chain index (0 is the last level)."""
        cd = self.seal.first_context_data()
        if chain_index > cd.chain_index():
            raise DepthError(f"level {chain_index} is above the top of the modulus chain ({cd.chain_index()})")
        while cd.chain_index() > chain_index:
            cd = cd.next_context_data()
        return cd.parms_id()

    def chain_index(self, parms_id: Any) -> int:
        """Chain index of a parameter id; -1 when it does not belong to this context."""
        cd = self.seal.get_context_data(parms_id)
        return -1 if cd is None else int(cd.chain_index())


@dataclass
class SecretContext(_Context):
    """The client's context: encrypts and decrypts. Never send it anywhere."""

    secret_key: Any = field(default=None, repr=False)

    def public_view(self) -> dict[str, Any]:
        """Metadata safe to print (no key material)."""
        return {k: v for k, v in self.meta.items() if k != "model"}


@dataclass
class PublicContext(_Context):
    """The server's context: evaluates on ciphertexts. It cannot hold a secret key."""

    relin_keys: Any = field(default=None, repr=False)
    galois_keys: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class KeyFiles:
    """Paths written by :func:`keygen` and the size of the public context."""

    secret: Path
    public: Path
    public_bytes: int
    preset: str
    galois_steps: list[int]


def _build_seal(meta: dict[str, Any], params_blob: bytes | None = None) -> Any:
    s = _sealapi()
    parms = s.EncryptionParameters(s.SCHEME_TYPE.CKKS)
    if params_blob is not None:
        seal_from_bytes(parms, params_blob)
    else:
        n = int(meta["poly_modulus_degree"])
        parms.set_poly_modulus_degree(n)
        parms.set_coeff_modulus(s.CoeffModulus.Create(n, [int(b) for b in meta["coeff_mod_bit_sizes"]]))
    level = s.SEC_LEVEL_TYPE.NONE if meta.get("insecure_forced") else s.SEC_LEVEL_TYPE.TC128
    ctx = s.SEALContext(parms, True, level)
    if not ctx.parameters_set():
        raise InsecureParametersError(f"SEAL refused the parameters: {ctx.parameters_error_message()}")
    return ctx


def keygen(
    out_dir: str | Path,
    *,
    plan: Any = None,
    preset: Preset | str | None = None,
    force_insecure: bool = False,
    overwrite: bool = False,
) -> KeyFiles:
    """Generate keys; write ``secret.context`` (mode 0600) and ``public.context`` into ``out_dir``.

    With a ``plan`` (a :class:`~deidpipe.he.compile.InferencePlan` or its :meth:`summary`), the preset is the smallest
    secure one deep enough for it and the public context gets exactly its rotation keys; without one, the
    preset is ``n8192-d2`` (or the one given) and no Galois key is made (batch packing only). An existing
    ``secret.context`` is only replaced with ``overwrite``.
    """
    summary = plan.summary() if hasattr(plan, "summary") else plan
    if isinstance(preset, str):
        preset = get_preset(preset)
    if preset is None:
        preset = choose_preset(summary["depth"], summary.get("output_bound")) if summary else get_preset("n8192-d2")
    problem = security_problem(preset.poly_modulus_degree, preset.coeff_mod_bit_sizes)
    if problem and not force_insecure:
        raise InsecureParametersError(f"refused: {problem}; pass force_insecure (--insecure) to use it anyway")
    depth = int(summary["depth"]) if summary else preset.depth
    if depth > preset.depth:
        raise DepthError(f"the model needs {depth} multiplicative levels; preset {preset.name} has "
                         f"{preset.depth} in its modulus chain")
    steps: list[int] = []
    if summary:
        if max(summary["dims"]) > preset.slots:
            raise DepthError(f"a layer is wider than the {preset.slots} slots of {preset.name}")
        steps = [int(s) for s in summary["steps"]]
    meta: dict[str, Any] = {
        "format": CONTEXT_FORMAT,
        "context_id": uuid.uuid4().hex,
        "preset": preset.name,
        "poly_modulus_degree": preset.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(preset.coeff_mod_bit_sizes),
        "scale_bits": preset.scale_bits,
        "depth": preset.depth,
        "encrypt_level": depth,
        "galois_steps": steps,
        "insecure_forced": bool(problem),
        "security": problem or "128-bit (HomomorphicEncryption.org standard)",
        "model": summary,
    }
    s = _sealapi()
    ctx = _build_seal(meta)
    kg = s.KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = s.PublicKey()
    kg.create_public_key(pk)
    rk = s.RelinKeys()
    kg.create_relin_keys(rk)
    params_blob = seal_to_bytes(ctx.key_context_data().parms())
    pub_blobs = [("params", params_blob), ("public_key", seal_to_bytes(pk)), ("relin_keys", seal_to_bytes(rk))]
    if steps:
        gk = s.GaloisKeys()
        kg.create_galois_keys([galois_elt(st, preset.poly_modulus_degree) for st in steps], gk)
        pub_blobs.append(("galois_keys", seal_to_bytes(gk)))
    out = Path(out_dir)
    if (out / "secret.context").exists() and not overwrite:
        raise HEError(f"{out / 'secret.context'} already exists: replacing it would make every ciphertext made "
                      "under it undecryptable; pass overwrite (--overwrite) to replace it")
    out.mkdir(parents=True, exist_ok=True)
    secret_path = write_container(
        out / "secret.context", SECRET_KIND, meta,
        [("params", params_blob), ("secret_key", seal_to_bytes(sk)), ("public_key", pub_blobs[1][1])],
        mode=0o600,
    )
    try:
        public_path = write_container(out / "public.context", PUBLIC_KIND, meta, pub_blobs)
    except BaseException:
        secret_path.unlink(missing_ok=True)  # both halves or neither
        raise
    return KeyFiles(secret_path, public_path, os.path.getsize(public_path), preset.name, steps)


def load_secret_context(path: str | Path) -> SecretContext:
    """Load the client's context; MissingKeyError when the file holds no secret key."""
    header, blobs = read_container(path, expect=(SECRET_KIND, PUBLIC_KIND))
    named = dict(blobs)
    if header["kind"] != SECRET_KIND or "secret_key" not in named:
        raise MissingKeyError(f"{path}: holds no secret key; decryption and encryption for inference need the "
                              "client's secret.context")
    s = _sealapi()
    ctx = _build_seal(header, named.get("params"))
    sk = seal_from_bytes(s.SecretKey(), named["secret_key"], ctx)
    pk = seal_from_bytes(s.PublicKey(), named["public_key"], ctx) if "public_key" in named else None
    return SecretContext(_meta(header, path), ctx, pk, secret_key=sk)


def load_public_context(path: str | Path) -> PublicContext:
    """Load the server's context; refuse any file that carries a secret key."""
    header, blobs = read_container(path, expect=(SECRET_KIND, PUBLIC_KIND))
    named = dict(blobs)
    if header["kind"] == SECRET_KIND or "secret_key" in named:
        raise SecretKeyInPublicContextError(
            f"{path}: this context carries a secret key and must not be used on the server; give it "
            "public.context instead"
        )
    s = _sealapi()
    ctx = _build_seal(header, named.get("params"))
    if "relin_keys" not in named:
        raise MissingKeyError(f"{path}: no relinearisation keys")
    pk = seal_from_bytes(s.PublicKey(), named["public_key"], ctx) if "public_key" in named else None
    rk = seal_from_bytes(s.RelinKeys(), named["relin_keys"], ctx)
    gk = seal_from_bytes(s.GaloisKeys(), named["galois_keys"], ctx) if "galois_keys" in named else None
    return PublicContext(_meta(header, path), ctx, pk, relin_keys=rk, galois_keys=gk)


def _meta(header: dict[str, Any], path: str | Path) -> dict[str, Any]:
    if header.get("format") != CONTEXT_FORMAT or "context_id" not in header:
        raise FormatError(f"{path}: not a {CONTEXT_FORMAT} file")
    return {k: v for k, v in header.items() if k not in ("blobs", "kind")}
