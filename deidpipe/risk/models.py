"""Population uniqueness: how many records of the population are unique on the quasi-identifiers, estimated
from the sample's class-size histogram and the population size N. Ported from ARX (arx-deidentifier/arx, commit
aacd487, ``src/main/org/deidentifier/arx/risk/``):

* :func:`zayatz` - ``ModelZayatz.java`` (Zayatz 1991): the share of sample uniques that are population uniques,
  from hypergeometric draws of each class size.
* :func:`pitman` - ``ModelPitman.java`` (Hoshino 2001): a Pitman sampling model fitted by maximum likelihood
  (Newton-Raphson on closed-form polygamma equations, checked against and if need be replaced by ARX's iterative
  form); uniques = Gamma(theta+1)/Gamma(theta+alpha) * N^alpha.
* :func:`snb` - ``ModelSNB.java`` (Chen and Keller-McNulty 1998): a slide negative binomial model, K estimated by
  Haas' and Shlosser's estimator, alpha and beta by Newton-Raphson from the counts of classes of size 1 and 2;
  uniques = K * beta^alpha. It often does not converge.
* :func:`dankar` - ``RiskModelPopulationUniqueness.getNumUniqueTuplesDankar`` (Dankar et al. 2012): Pitman when the
  sampling fraction is at most 0.1 (Zayatz if Pitman fails), else the smaller of Zayatz and SNB (Zayatz if SNB
  fails).

Each function returns the estimated *number* of population uniques, or ``None`` where ARX's estimate is
unavailable (the solver did not converge, or the result is NaN or 0 while the sample has uniques: ARX then
reports 0 and ``isAvailableEstimate`` false). :func:`population_uniqueness` divides by N, as ARX's
``getFractionOfUniqueTuples*`` do. The sampling fraction the models use is ARX's: records in a class / N.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from deidpipe.risk import arxmath
from deidpipe.risk.arxmath import F64, digamma, trigamma
from deidpipe.risk.classes import Histogram
from deidpipe.risk.errors import RiskError

_INT_MAX = 2**31 - 1


def population_size(records: int, fraction: float) -> int:
    """ARX's ``ARXPopulationModel.create(records, fraction)``: N = Math.round(records / fraction)."""
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise RiskError("the sampling fraction must be in (0, 1]")
    return int(math.floor(records / fraction + 0.5))


def _valid(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and value != 0.0


def _result(value: float, histogram: Histogram) -> float | None:
    """ARX's ``isValid``: NaN, inf or 0 with sample uniques present is 'not available' (None)."""
    if histogram.count_of_size(1) == 0:
        return 0.0
    value = float(value)
    if math.isnan(value) or math.isinf(value) or value == 0.0:
        return None
    return value


def _check(histogram: Histogram, population: int) -> None:
    if population < histogram.records:
        raise RiskError("the population size is smaller than the sample")


def _fitted_counts(histogram: Histogram,
                   population: int) -> tuple[np.float64, np.float64, list[tuple[int, int]]] | None:
    """What Pitman's and the SNB model fit to, after :func:`_check`: the counts of classes of size 1 and 2 (as
    float64) and the histogram's (size, count) pairs; None where the sample has no unique (both models then
    estimate 0 uniques, as ARX does)."""
    _check(histogram, population)
    if histogram.count_of_size(1) == 0:
        return None
    return F64(histogram.count_of_size(1)), F64(histogram.count_of_size(2)), histogram.pairs()


def zayatz(histogram: Histogram, population: int) -> float | None:
    """Estimated population uniques by Zayatz's model (``ModelZayatz.java``)."""
    _check(histogram, population)
    c1 = histogram.count_of_size(1)
    if c1 == 0:
        return 0.0
    n = histogram.records
    u = histogram.classes
    big_n = min(population, _INT_MAX)  # ARX: "TODO: This is an error: overflow"
    draws = min(n, _INT_MAX)
    temp = 0.0
    for size, count in histogram.pairs():
        temp += (count / u) * arxmath.hypergeometric_p1(big_n, size, draws)
    with np.errstate(all="ignore"):
        uniqueness = F64((c1 / u) * arxmath.hypergeometric_p1(big_n, 1, draws)) / F64(temp)
        fraction = F64(n) / F64(population)
        return _result(c1 * uniqueness / fraction, histogram)


def pitman(histogram: Histogram, population: int) -> float | None:
    """Estimated population uniques by Pitman's model (``ModelPitman.java``)."""
    if (fitted := _fitted_counts(histogram, population)) is None:
        return 0.0
    c1, c2, pairs = fitted
    u = F64(histogram.classes)
    p = F64(population)
    n = F64(histogram.records)
    with np.errstate(all="ignore"):
        c2 = c2 if c2 != 0 else F64(1.0)
        c = (c1 * (c1 - 1)) / c2
        t = ((n * u * c) - (c1 * (n - 1) * ((2 * u) + c))) / (((2 * c1 * u) + (c1 * c)) - (n * c))
        a = ((t * (c1 - n)) + ((n - 1) * c1)) / (n * u)

        def constraint(tx: np.float64, _ay: np.float64) -> bool:
            return bool(tx >= 0)

        def closed(t: np.float64, a: np.float64) -> tuple[arxmath.Vec, arxmath.Mat]:
            val0 = u - 1.0
            val1 = digamma(val0 + (t / a) + 1.0)
            val2 = trigamma((a + t + (a * val0)) / a)
            val3 = trigamma((t / a) + 1.0)
            val4 = digamma((t / a) + 1.0)
            val5 = a * a
            d1 = (val3 - val2) / val5
            d5 = (((a * val1) + (t * val2)) - (a * val4) - (t * val3)) / (val5 * a)
            d3 = (((((val5 * val0) - (t * t * val2)) + (t * t * val3)) - (2.0 * a * t * val1))
                  + (2.0 * a * t * val4)) / (val5 * val5)
            o1 = (val1 - val4) / a
            o3 = ((-t * val1) + (a * val0) + (t * val4)) / (a * a)
            o2 = digamma(n + t) - digamma(t + 1.0)
            d2 = trigamma(t + 1.0) - trigamma(n + t)
            d4 = F64(0.0)
            o4 = F64(0.0)
            val6 = digamma(1.0 - a)
            val7 = trigamma(1.0 - a)
            for key, value in pairs:
                if key != 1:
                    d4 += value * (val7 - trigamma(key - a))
                    o4 += value * (digamma(key - a) - val6)
            return (o1 - o2, o3 - o4), (d2 - d1, 0.0 - d5, 0.0 - d5, 0.0 - d3 - d4)

        # The iterative forms sum over i = 1 .. u-1, over j = 1 .. size-1 for each class size, and over
        # i = 1 .. n-1: vectorised here (numpy sums; ARX adds one term at a time).
        iu = np.arange(1, int(math.ceil(u)), dtype=np.float64)
        i_n = np.arange(1, int(math.ceil(n)), dtype=np.float64)
        keys = np.array([k for k, _ in pairs if k != 1], dtype=np.int64)
        values = np.array([v for k, v in pairs if k != 1], dtype=np.float64)
        j = np.arange(1, int(keys.max()) if keys.size else 1, dtype=np.float64)

        def class_sums(a: np.float64) -> tuple[np.float64, np.float64]:
            if not keys.size:
                return F64(0.0), F64(0.0)
            val3 = j - a
            inv = np.concatenate(([0.0], np.cumsum(1.0 / val3)))
            inv2 = np.concatenate(([0.0], np.cumsum(1.0 / (val3 * val3))))
            return F64(np.sum(values * inv2[keys - 1])), F64(np.sum(values * inv[keys - 1]))

        def iterative_objective(t: np.float64, a: np.float64) -> arxmath.Vec:
            val0 = t + iu * a
            o1 = np.sum(1.0 / val0)
            o3 = np.sum(iu / val0)
            _, o4 = class_sums(a)
            o2 = np.sum(1.0 / (t + i_n))
            return F64(o1 - o2), F64(o3 - o4)

        iu2 = iu * iu

        def iterative(t: np.float64, a: np.float64) -> tuple[arxmath.Vec, arxmath.Mat]:
            # one reciprocal per term and dot products (BLAS): 72 calls over a million terms each on a table of
            # a million unique rows, 3x faster than a sum per expression
            r = 1.0 / (t + iu * a)
            val3 = r * r
            d1 = np.sum(val3)
            d5 = np.dot(iu, val3)
            d3 = np.dot(iu2, val3)
            o1 = np.sum(r)
            o3 = np.dot(iu, r)
            d4, o4 = class_sums(a)
            rn = 1.0 / (t + i_n)
            d2 = np.dot(rn, rn)
            o2 = np.sum(rn)
            return (F64(o1 - o2), F64(o3 - o4)), (F64(d2 - d1), F64(-d5), F64(-d5), F64(-d3 - d4))

        rt, ra = arxmath.solve(master=closed, start=(t, a), constraint=constraint)
        if np.isnan(rt) or np.isnan(ra):
            rt, ra = arxmath.solve(master=iterative, start=(t, a), constraint=constraint)
        else:
            tx, ty = iterative_objective(rt, ra)
            if (np.isnan(tx) or np.isnan(ty) or abs(tx) > arxmath.ACCURACY or abs(ty) > arxmath.ACCURACY):
                rt, ra = arxmath.solve(master=iterative, start=(t, a), constraint=constraint)
        return _result(_pitman_result(float(rt), float(ra), float(p)), histogram)


def _pitman_result(t: float, a: float, p: float) -> float:
    """``ModelPitman.getResult``: Gamma(t+1)/Gamma(t+a) * p^a in two ways, the larger valid one."""
    if math.isnan(a) or math.isnan(t) or a == 0:
        return math.nan
    with np.errstate(all="ignore"):
        power = float(np.power(F64(p), F64(a)))
        val1 = float(np.exp(F64(arxmath.log_gamma(t + 1.0) - arxmath.log_gamma(t + a)))) * power
        val1 = val1 if 0.0 <= val1 <= p else math.nan
        val2 = float(F64(arxmath.gamma(t + 1.0)) / F64(arxmath.gamma(t + a))) * power
        val2 = val2 if 0.0 <= val2 <= p else math.nan
    if math.isnan(val1) and math.isnan(val2):
        return math.nan
    if not math.isnan(val1) and not math.isnan(val2):
        return max(val1, val2)
    return val2 if math.isnan(val1) else val1


def snb(histogram: Histogram, population: int) -> float | None:
    """Estimated population uniques by the SNB model (``ModelSNB.java``)."""
    if (fitted := _fitted_counts(histogram, population)) is None:
        return 0.0
    c1, c2, pairs = fitted
    f = F64(histogram.records) / F64(population)
    with np.errstate(all="ignore"):
        # estimateNonEmptyEquivalenceClasses (Haas 1998, Shlosser), with ARX's "- 1" inside the sum.
        var1 = var2 = var3 = var4 = F64(0.0)
        var5 = f * f
        for size, count in pairs:
            val0 = F64(size)
            val1 = F64(count)
            val2 = np.power(1 - f, val0) * val1
            var1 += val0 * var5 * np.power(1 - var5, val0 - 1) * val1
            var2 += val2 * np.power(1 + f, val0) - 1
            var3 += val2
            var4 += val0 * f * np.power(1 - f, val0 - 1) * val1
        k = F64(histogram.classes) + c1 * (var1 / var2) * (var3 / var4) * (var3 / var4)

        def objective(a: np.float64, b: np.float64) -> arxmath.Vec:
            dividend = (1 - f) * (1 - b)
            x = k * f * np.power(b / (1 - dividend), a) * (((a * dividend) / (1 - dividend)) + 1) - c1
            y = (k * a * np.power(b, a) * (f * f) * (1 - b) / 2 * np.power(1 - dividend, a + 2)
                 * (2 - (1 - a) * dividend) - c2)
            return x, y

        def derivatives(a: np.float64, b: np.float64) -> arxmath.Mat:
            val0 = (b - 1.0) * (f - 1.0)
            val1 = val0 - 1.0
            val2 = 1.0 - val0
            val3 = a * val0 / val1 - 1.0
            val4 = np.power(-b / val1, a)
            val6 = np.power(f, 2.0)
            val7 = np.power(b, a)
            val8 = val7 * val6 * k
            val9 = a * val8
            val10 = 2.0 * np.power(val2, a + 2.0)
            val11 = np.power(val1, 2.0)
            val13 = f * k
            val14 = f - 1.0
            val15 = a - 1.0
            val16 = b - 1.0
            val17 = val15 * val0
            val18 = val6 * k
            val19 = val17 + 2.0
            val20 = val18 * val19
            x1 = -val13 * np.log(-b / val1) * val3 * val4 - (val13 * val4 * val0) / val1
            x2 = (a * val13 * (1.0 / val1 - (b * val14) / val11) * val3 * np.power(-b / val1, val15)
                  - val13 * val4 * ((a * val14) / val1 - (a * val16 * np.power(val14, 2.0)) / val11))
            y1 = ((val9 * np.log(val2) * val19 * val16) / val10
                  - (val9 * np.power(val16, 2.0) * val14) / val10
                  - (val7 * val20 * val16) / val10
                  - (a * val7 * val18 * np.log(b) * val19 * val16) / val10)
            y2 = (-(val9 * val19) / val10 - (np.power(a, 2.0) * np.power(b, val15) * val20 * val16) / val10
                  - (a * val7 * val18 * val17) / val10
                  - (a * val7 * val20 * (a + 2.0) * val0) / (2.0 * np.power(val2, a + 3.0)))
            return x1, x2, y1, y2

        ra, rb = arxmath.solve(objective=objective, derivatives=derivatives)
        return _result(k * np.power(rb, ra), histogram)


@dataclass(frozen=True)
class PopulationUniqueness:
    """Estimated share of the population that is unique on the quasi-identifiers (uniques / N) by each model;
    ``None`` where a model gave no estimate. ``dankar_model`` names the model Dankar's rule picked."""

    zayatz: float | None
    pitman: float | None
    snb: float | None
    dankar: float | None
    dankar_model: str | None = None

    def to_dict(self) -> dict[str, float | None]:
        d = asdict(self)
        d.pop("dankar_model")
        return d


def dankar(histogram: Histogram, population: int, *, zayatz_uniques: float | None = None,
           pitman_uniques: float | None = None, snb_uniques: float | None = None,
           computed: frozenset[str] = frozenset()) -> tuple[float | None, str]:
    """Dankar et al.'s decision rule (``getNumUniqueTuplesDankar(true)``): (estimated uniques, model used).
    Estimates already computed can be passed in (name them in ``computed``)."""
    if histogram.count_of_size(1) == 0:
        return 0.0, "dankar"

    def get(name: str, value: float | None) -> float | None:
        if name in computed:
            return value
        return {"zayatz": zayatz, "pitman": pitman, "snb": snb}[name](histogram, population)

    fraction = histogram.records / population
    if fraction <= 0.1:
        pv = get("pitman", pitman_uniques)
        if _valid(pv):
            return pv, "pitman"
        return get("zayatz", zayatz_uniques), "zayatz"
    sv = get("snb", snb_uniques)
    zv = get("zayatz", zayatz_uniques)
    if _valid(sv):
        assert sv is not None
        if zv is not None and zv < sv:
            return zv, "zayatz"
        return sv, "snb"
    return zv, "zayatz"


def population_uniqueness(histogram: Histogram, population: int) -> PopulationUniqueness:
    """All four estimates as shares of the population (uniques / N)."""
    _check(histogram, population)
    if population <= 0:
        raise RiskError("the population size must be positive")
    z = zayatz(histogram, population)
    p = pitman(histogram, population)
    s = snb(histogram, population)
    d, model = dankar(histogram, population, zayatz_uniques=z, pitman_uniques=p, snb_uniques=s,
                      computed=frozenset({"zayatz", "pitman", "snb"}))

    def share(v: float | None) -> float | None:
        return None if v is None else v / population

    return PopulationUniqueness(share(z), share(p), share(s), share(d), model)
