"""CKKS parameter presets that meet 128-bit security, and the check that refuses weaker ones.

The bound is the HomomorphicEncryption.org security standard (ternary secret, classical attacks): for each
polynomial modulus degree N, the largest total bit count of the coefficient modulus (special prime included)
that still gives 128-bit security. Microsoft SEAL enforces the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

from deidpipe.he.errors import DepthError, InsecureParametersError

#: HomomorphicEncryption.org standard, 128-bit classical security: N -> max total coefficient-modulus bits.
MAX_BITS_128: dict[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class Preset:
    """A CKKS parameter set: degree N, the prime bit sizes (data primes then the special prime), the scale."""

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def depth(self) -> int:
        """Multiplicative levels available: the data primes after the first one."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def total_bits(self) -> int:
        """Total bit count of the coefficient modulus, special prime included."""
        return sum(self.coeff_mod_bit_sizes)

    @property
    def slots(self) -> int:
        """Number of CKKS slots (N/2)."""
        return self.poly_modulus_degree // 2

    @property
    def output_bits(self) -> int:
        """Bits left above the scale in the last prime: results must stay below 2**(output_bits - 1)."""
        return self.coeff_mod_bit_sizes[0] - self.scale_bits


#: Presets, smallest first. Each one meets 128-bit security.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("n8192-d1", 8192, (60, 40, 60), 40),
        Preset("n8192-d2", 8192, (60, 40, 40, 60), 40),
        Preset("n8192-d3", 8192, (50, 38, 38, 38, 50), 38),
        Preset("n8192-d4", 8192, (45, 32, 32, 32, 32, 45), 32),
        Preset("n16384-d6", 16384, (60, 40, 40, 40, 40, 40, 40, 60), 40),
        Preset("n16384-d8", 16384, (55, 40, 40, 40, 40, 40, 40, 40, 40, 55), 40),
    )
}


def security_problem(poly_modulus_degree: int, coeff_mod_bit_sizes: tuple[int, ...] | list[int]) -> str | None:
    """Return why these parameters fall short of 128-bit security, or None when they meet it."""
    n = int(poly_modulus_degree)
    if n not in MAX_BITS_128:
        return f"poly modulus degree {n} is not one of {sorted(MAX_BITS_128)}"
    total = sum(int(b) for b in coeff_mod_bit_sizes)
    if total > MAX_BITS_128[n]:
        return (
            f"total coefficient modulus is {total} bits, above the {MAX_BITS_128[n]} bits that give 128-bit "
            f"security at N={n} (HomomorphicEncryption.org standard)"
        )
    return None


def custom_preset(
    poly_modulus_degree: int,
    coeff_mod_bit_sizes: tuple[int, ...] | list[int],
    scale_bits: int,
    *,
    force_insecure: bool = False,
) -> Preset:
    """Build a parameter set from explicit values; refuse it below 128-bit security unless forced."""
    bits = tuple(int(b) for b in coeff_mod_bit_sizes)
    if len(bits) < 3:
        raise InsecureParametersError("need at least three primes: one to decrypt, one level, the special prime")
    if any(b > 60 or b < 20 for b in bits):
        raise InsecureParametersError("every prime must be between 20 and 60 bits (SEAL limit)")
    if scale_bits >= bits[0]:
        raise InsecureParametersError(f"scale (2^{scale_bits}) must be below the first prime ({bits[0]} bits)")
    problem = security_problem(poly_modulus_degree, bits)
    if problem and not force_insecure:
        raise InsecureParametersError(f"refused: {problem}; pass force_insecure (--insecure) to use it anyway")
    name = f"custom-n{poly_modulus_degree}-" + "-".join(str(b) for b in bits)
    return Preset(name, int(poly_modulus_degree), bits, int(scale_bits))


def get_preset(name: str) -> Preset:
    """Return the named preset."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InsecureParametersError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def choose_preset(depth: int, output_bound: float | None = None) -> Preset:
    """Smallest secure preset with at least ``depth`` levels and room for outputs up to ``output_bound``."""
    for p in PRESETS.values():
        if p.depth < depth:
            continue
        if output_bound is not None and 4 * output_bound >= 2.0 ** (p.output_bits - 1):
            continue
        return p
    raise DepthError(
        f"the model needs {depth} multiplicative levels; the largest secure preset has "
        f"{max(p.depth for p in PRESETS.values())}"
    )
