"""Compile a model trained in plaintext into an encrypted-inference plan.

A plan is a chain of affine layers ``z = W x + b`` (``W`` of shape outputs x inputs) with, between them, an
HE-friendly activation: ``square`` (one level) or a degree-3 polynomial fitted by least squares to the original
activation (ReLU, tanh, logistic) on the range of pre-activations that the training data reaches (two levels).
Affine preprocessing (StandardScaler, MinMaxScaler, MaxAbsScaler in a Pipeline) is folded into the first layer,
and identity activations fold adjacent layers together, so the client encrypts raw features.

The plan is saved as JSON (no pickle) and evaluates itself in plaintext exactly as the encrypted engine does,
so "the plaintext (polynomial) model" in tests and reports is :meth:`InferencePlan.decision_function`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deidpipe.he.errors import FeatureCountError, FormatError, UnsupportedModelError
from deidpipe.he.io import as_feature_matrix, atomic_write
from deidpipe.he.packing import layer_geometry

PLAN_FORMAT = "deidpipe.he.plan/1"
_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "logistic": lambda z: 1.0 / (1.0 + np.exp(-z)),
}


@dataclass
class Layer:
    """One affine layer and the activation that follows it (None after the last layer)."""

    weight: np.ndarray
    bias: np.ndarray
    activation: dict[str, Any] | None = None

    @property
    def depth(self) -> int:
        """Levels this layer consumes: one for the plaintext product, plus the activation's."""
        if self.activation is None:
            return 1
        return 1 + (1 if self.activation["kind"] == "square" else 2)


@dataclass
class InferencePlan:
    """An encrypted-inference plan: layers, output rule, and what was measured at compile time."""

    layers: list[Layer]
    task: str  # "binary" (one score, threshold 0), "argmax", or "regression"
    classes: list[Any]
    source: str
    output_bound: float | None = None
    report: dict[str, Any] = field(default_factory=dict)

    # -- shape and requirements ----------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        """Number of input features."""
        return int(self.layers[0].weight.shape[1])

    @property
    def n_outputs(self) -> int:
        """Number of decision scores per sample."""
        return int(self.layers[-1].weight.shape[0])

    @property
    def depth(self) -> int:
        """Multiplicative levels the plan consumes."""
        return sum(layer.depth for layer in self.layers)

    @property
    def dims(self) -> list[int]:
        """Widths: features, then each layer's outputs."""
        return [self.n_features] + [int(layer.weight.shape[0]) for layer in self.layers]

    def rotation_steps(self) -> list[int]:
        """Rotation steps (left, in slots) the single-vector packing needs: one Galois key each."""
        steps: set[int] = set()
        for layer in self.layers:
            steps.update(layer_geometry(layer.weight.shape[1], layer.weight.shape[0]).steps())
        return sorted(steps)

    def summary(self) -> dict[str, Any]:
        """What key generation and the packing cost model need, without the weights."""
        return {
            "plan_id": self.plan_id,
            "dims": self.dims,
            "depth": self.depth,
            "activations": [None if ly.activation is None else ly.activation["kind"] for ly in self.layers],
            "nnz": [int(np.count_nonzero(ly.weight)) for ly in self.layers],
            "steps": self.rotation_steps(),
            "output_bound": self.output_bound,
        }

    # -- plaintext evaluation (the reference the encrypted result is held to) -------------------------------
    def decision_function(self, X: Any) -> np.ndarray:
        """Decision scores of the polynomial model, shape (samples, outputs), in float64."""
        h = as_feature_matrix(X)
        if h.shape[1] != self.n_features:
            raise FeatureCountError(f"the plan expects {self.n_features} features, got {h.shape[1]}")
        for layer in self.layers:
            h = h @ layer.weight.T + layer.bias
            if layer.activation is not None:
                h = apply_poly(layer.activation, h)
        return h

    def labels(self, scores: np.ndarray) -> list[Any]:
        """Predicted labels from decision scores (regression: the score itself)."""
        return labels_from_scores(self.task, self.classes, np.asarray(scores, dtype=np.float64))

    def predict(self, X: Any) -> list[Any]:
        """Predicted labels of the polynomial model."""
        return self.labels(self.decision_function(X))

    # -- serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (floats kept exactly: JSON floats round-trip through repr)."""
        return {
            "format": PLAN_FORMAT,
            "task": self.task,
            "classes": [_jsonable(c) for c in self.classes],
            "source": self.source,
            "output_bound": self.output_bound,
            "report": self.report,
            "layers": [
                {"weight": ly.weight.tolist(), "bias": ly.bias.tolist(), "activation": ly.activation}
                for ly in self.layers
            ],
        }

    @property
    def plan_id(self) -> str:
        """SHA-256 of the layers and output rule (not the report): names this exact model."""
        core = {k: v for k, v in self.to_dict().items() if k in ("task", "classes", "layers")}
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:32]

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON, atomically."""
        return atomic_write(path, [json.dumps(self.to_dict()).encode()])

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "plan") -> InferencePlan:
        """Rebuild a plan from :meth:`to_dict` output, validating shapes."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise FormatError(f"{source}: not a {PLAN_FORMAT} file")
        try:
            layers = [
                Layer(
                    np.asarray(ly["weight"], dtype=np.float64),
                    np.asarray(ly["bias"], dtype=np.float64),
                    ly.get("activation"),
                )
                for ly in data["layers"]
            ]
            plan = cls(
                layers,
                str(data["task"]),
                list(data["classes"]),
                str(data.get("source", "")),
                data.get("output_bound"),
                dict(data.get("report") or {}),
            )
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{source}: malformed plan") from None
        _check_chain(plan.layers, source)
        return plan

    @classmethod
    def load(cls, path: str | Path) -> InferencePlan:
        """Read a plan written by :meth:`save`."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except OSError as exc:
            raise FormatError(f"{p}: cannot read ({exc.strerror})") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise FormatError(f"{p}: not JSON") from None
        return cls.from_dict(data, source=str(p))


def load_plan(path: str | Path) -> InferencePlan:
    """Read a plan file."""
    return InferencePlan.load(path)


def labels_from_scores(task: str, classes: list[Any], scores: np.ndarray) -> list[Any]:
    """Labels by the plan's output rule: threshold 0 (binary), argmax, or the score itself (regression)."""
    if task == "regression":
        return [float(v) for v in scores[:, 0]]
    if task == "binary":
        return [classes[1] if v > 0 else classes[0] for v in scores[:, 0]]
    return [classes[i] for i in np.argmax(scores, axis=1)]


def apply_poly(activation: dict[str, Any], z: np.ndarray) -> np.ndarray:
    """Evaluate an HE activation in plaintext."""
    if activation["kind"] == "square":
        return z * z
    c0, c1, c2, c3 = (list(activation["coeffs"]) + [0.0] * 4)[:4]
    return z * z * (c3 * z + c2) + (c1 * z + c0)


def fit_poly3(name: str, z: np.ndarray) -> dict[str, Any]:
    """Least-squares degree-3 fit of activation ``name`` on the observed pre-activations ``z`` and their range."""
    f = _ACTIVATIONS[name]
    z = np.asarray(z, dtype=np.float64).ravel()
    lo, hi = float(z.min()), float(z.max())
    pad = 0.05 * max(hi - lo, 1e-6)
    lo, hi = lo - pad, hi + pad
    rng = np.random.default_rng(0)
    sample = z if z.size <= 20000 else rng.choice(z, 20000, replace=False)
    pts = np.concatenate([sample, np.linspace(lo, hi, 64)])  # weighted by the data, anchored on the range
    coeffs = np.polynomial.polynomial.polyfit(pts, f(pts), 3)
    grid = np.linspace(lo, hi, 1001)
    err = float(np.max(np.abs(np.polynomial.polynomial.polyval(grid, coeffs) - f(grid))))
    return {"kind": "poly", "coeffs": [float(c) for c in coeffs], "replaces": name,
            "range": [lo, hi], "max_fit_error": err}


# -- compile ------------------------------------------------------------------------------------------------------
def compile_model(
    model: Any,
    X: Any = None,
    y: Any = None,
    *,
    activation: str = "auto",
    classes: list[Any] | None = None,
    task: str | None = None,
) -> InferencePlan:
    """Compile a scikit-learn estimator (or Pipeline of affine scalers + estimator) or a weight list.

    Supported: LogisticRegression, LinearRegression, Ridge/Lasso/ElasticNet, SGD classifier/regressor,
    RidgeClassifier, LinearSVC/LinearSVR, binary SVC(kernel="linear"), MLPClassifier/MLPRegressor, or a list
    of ``(W, b)`` pairs (``W`` shaped outputs x inputs). ``activation`` replaces hidden activations:
    ``"poly3"`` (needs ``X`` to find the range), ``"square"``, or ``"auto"`` (poly3 when ``X`` is given,
    square for a weight list, else an error). With ``X`` (and ``y``) the report compares the polynomial model
    with the original: accuracy of each, label agreement, largest score difference.
    """
    if activation not in ("auto", "poly3", "square"):
        raise UnsupportedModelError(f"activation must be auto, poly3 or square, not {activation!r}")
    Xm = None if X is None else as_feature_matrix(X)
    pre_a, pre_c, est = _split_pipeline(model)
    raw, acts, task_, classes_, source = _extract(est, classes, task)
    raw = _fold_affine(raw, pre_a, pre_c)
    raw, acts = _fold_identity(raw, acts)
    _check_chain([Layer(w, b) for w, b in raw], source)
    if Xm is not None and Xm.shape[1] != raw[0][0].shape[1]:
        raise FeatureCountError(f"the model takes {raw[0][0].shape[1]} features, the data has {Xm.shape[1]}")
    hidden = acts[:-1]
    mode = activation
    if mode == "auto":
        if Xm is not None:
            mode = "poly3"
        elif all(a in ("square",) for a in hidden):
            mode = "square"
        else:
            raise UnsupportedModelError(
                "a degree-3 approximation needs data to find the pre-activation range: pass X (--data), "
                "or choose activation 'square'"
            )
    if mode == "poly3" and hidden and Xm is None:
        raise UnsupportedModelError("activation 'poly3' needs X (--data) to fit the range the data reaches")
    layers: list[Layer] = []
    h_poly = Xm
    for i, (w, b) in enumerate(raw):
        act = None
        if i < len(raw) - 1:
            name = acts[i]
            if mode == "square" or name == "square":
                act = {"kind": "square", "replaces": name}
            else:
                if name not in _ACTIVATIONS:
                    raise UnsupportedModelError(f"no polynomial replacement for activation {name!r}")
                act = fit_poly3(name, h_poly @ w.T + b)
        layers.append(Layer(w, b, act))
        if h_poly is not None:
            h_poly = h_poly @ w.T + b
            if act is not None:
                h_poly = apply_poly(act, h_poly)
    plan = InferencePlan(layers, task_, classes_, source)
    plan.report = {"activation": mode if hidden else "none", "depth": plan.depth}
    if Xm is not None:
        poly_scores = plan.decision_function(Xm)
        orig_scores = _forward_original(raw, acts, Xm)
        plan.output_bound = float(np.max(np.abs(poly_scores)))
        rep = plan.report
        rep["n_samples"] = int(Xm.shape[0])
        rep["max_score_diff_poly_vs_original"] = float(np.max(np.abs(poly_scores - orig_scores)))
        if task_ != "regression":
            lp, lo = plan.labels(poly_scores), plan.labels(orig_scores)
            rep["label_agreement"] = float(np.mean([a == b for a, b in zip(lp, lo, strict=True)]))
            if y is not None:
                yt = _label_vector(y, classes_)
                rep["accuracy_original"] = float(np.mean([a == b for a, b in zip(lo, yt, strict=True)]))
                rep["accuracy_poly"] = float(np.mean([a == b for a, b in zip(lp, yt, strict=True)]))
        elif y is not None:
            yt = np.asarray(y, dtype=np.float64).reshape(len(Xm), -1)
            rep["rmse_original"] = float(np.sqrt(np.mean((orig_scores - yt) ** 2)))
            rep["rmse_poly"] = float(np.sqrt(np.mean((poly_scores - yt) ** 2)))
    return plan


def _forward_original(raw: list, acts: list, X: np.ndarray) -> np.ndarray:
    h = X
    for i, (w, b) in enumerate(raw):
        h = h @ w.T + b
        if i < len(raw) - 1:
            h = h * h if acts[i] == "square" else _ACTIVATIONS[acts[i]](h)
    return h


def _label_vector(y: Any, classes: list[Any]) -> list[Any]:
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] > 1:  # indicator matrix (multilabel MLP used as argmax classifier)
        return [classes[i] for i in np.argmax(arr, axis=1)]
    return [_jsonable(v) for v in arr.ravel()]


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _check_chain(layers: list[Layer], source: str) -> None:
    if not layers:
        raise UnsupportedModelError(f"{source}: no layers")
    for i, ly in enumerate(layers):
        if ly.weight.ndim != 2 or ly.bias.shape != (ly.weight.shape[0],):
            raise UnsupportedModelError(f"{source}: layer {i} has weight {ly.weight.shape}, bias {ly.bias.shape}")
        if i and ly.weight.shape[1] != layers[i - 1].weight.shape[0]:
            transposed = ly.weight.shape[0] == layers[i - 1].weight.shape[0]
            hint = " (weights are expected shaped outputs x inputs)" if transposed else ""
            raise UnsupportedModelError(f"{source}: layer {i} takes {ly.weight.shape[1]} inputs but layer "
                                        f"{i - 1} gives {layers[i - 1].weight.shape[0]}{hint}")
        if not (np.isfinite(ly.weight).all() and np.isfinite(ly.bias).all()):
            raise UnsupportedModelError(f"{source}: layer {i} has non-finite weights")


def _split_pipeline(model: Any) -> tuple[np.ndarray | None, np.ndarray | None, Any]:
    """Fold leading affine scalers of a Pipeline into (a, c) with x' = a * x + c."""
    steps = getattr(model, "steps", None)
    if steps is None:
        return None, None, model
    a: np.ndarray | None = None
    c: np.ndarray | None = None
    for name, step in steps[:-1]:
        kind = type(step).__name__
        if kind == "StandardScaler":
            sa = 1.0 / step.scale_ if step.scale_ is not None else np.ones(step.n_features_in_)
            sc = -step.mean_ * sa if step.mean_ is not None else np.zeros(step.n_features_in_)
        elif kind == "MinMaxScaler":
            sa, sc = np.asarray(step.scale_, float), np.asarray(step.min_, float)
        elif kind == "MaxAbsScaler":
            sa = 1.0 / np.asarray(step.scale_, float)
            sc = np.zeros_like(sa)
        elif step in (None, "passthrough"):
            continue
        else:
            raise UnsupportedModelError(f"pipeline step {name!r} ({kind}) is not an affine scaler")
        sa, sc = np.asarray(sa, float), np.asarray(sc, float)
        a, c = (sa, sc) if a is None else (a * sa, c * sa + sc)
    return a, c, steps[-1][1]


def _fold_affine(raw: list, a: np.ndarray | None, c: np.ndarray | None) -> list:
    if a is None:
        return raw
    w, b = raw[0]
    return [(w * a[None, :], b + w @ c)] + raw[1:]


def _fold_identity(raw: list, acts: list) -> tuple[list, list]:
    out, out_acts = [raw[0]], [acts[0]]
    for (w, b), act in zip(raw[1:], acts[1:], strict=True):
        if out_acts[-1] == "identity":
            w0, b0 = out[-1]
            out[-1] = (w @ w0, w @ b0 + b)
            out_acts[-1] = act
        else:
            out.append((w, b))
            out_acts.append(act)
    return out, out_acts


def _extract(est: Any, classes: list | None, task: str | None) -> tuple[list, list, str, list, str]:
    """(layers [(W, b)], activations after each layer, task, classes, source name)."""
    kind = type(est).__name__
    if isinstance(est, (list, tuple)):
        raw = []
        for item in est:
            w, b = (item, None) if isinstance(item, np.ndarray) else item
            w = np.atleast_2d(np.asarray(w, dtype=np.float64))
            b = np.zeros(w.shape[0]) if b is None else np.asarray(b, dtype=np.float64).ravel()
            raw.append((w, b))
        k = raw[-1][0].shape[0]
        t = task or ("binary" if k == 1 else "argmax")
        cls = list(classes) if classes is not None else ([0, 1] if t == "binary" else list(range(k)))
        return raw, ["square"] * (len(raw) - 1) + [None], t, cls, "weights"
    if kind in ("MLPClassifier", "MLPRegressor"):
        raw = [(np.asarray(w, float).T, np.asarray(b, float)) for w, b in zip(est.coefs_, est.intercepts_,
                                                                                 strict=True)]
        acts = [est.activation] * (len(raw) - 1) + [None]
        if kind == "MLPRegressor":
            return raw, acts, "regression", [], kind
        cls = [_jsonable(c) for c in np.asarray(est.classes_).ravel()]
        k = raw[-1][0].shape[0]
        if k == 1:
            return raw, acts, "binary", cls, kind
        if len(cls) != k:  # multilabel indicator: classes_ lists 0/1 per column; score columns are the classes
            cls = list(range(k))
        return raw, acts, "argmax", cls, kind
    if kind == "SVC" and getattr(est, "kernel", None) != "linear":
        raise UnsupportedModelError(f"SVC with kernel {est.kernel!r}: only linear SVMs are supported")
    if not (hasattr(est, "coef_") and hasattr(est, "intercept_")):
        raise UnsupportedModelError(f"{kind} is not a supported model (linear models, linear SVMs, MLPs)")
    coef = est.coef_
    coef = np.asarray(coef.toarray() if hasattr(coef, "toarray") else coef, dtype=np.float64)
    w = np.atleast_2d(coef)
    b = np.atleast_1d(np.asarray(est.intercept_, dtype=np.float64)).ravel()
    if b.size == 1 and w.shape[0] > 1:
        b = np.repeat(b, w.shape[0])
    if hasattr(est, "classes_"):
        cls = [_jsonable(c) for c in np.asarray(est.classes_).ravel()]
        if w.shape[0] == 1:
            return [(w, b)], [None], "binary", cls, kind
        if kind == "SVC":
            raise UnsupportedModelError("multiclass SVC votes one-vs-one; use LinearSVC (one-vs-rest)")
        return [(w, b)], [None], "argmax", cls, kind
    return [(w, b)], [None], "regression", [], kind
