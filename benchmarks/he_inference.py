"""Encrypted inference: deidpipe.he against naive TenSEAL and plaintext scikit-learn, measured in one run.

Models: a 100-feature logistic regression and a 100-32-2 MLP (ReLU replaced by a fitted cubic), trained on
synthetic data. For each method: server-side predictions/s on a batch, end-to-end predictions/s (client encrypt +
server + client decrypt), single-sample server latency, ciphertext bytes per sample (upload), public-context
size, and the largest score error against the plaintext polynomial model.

The naive TenSEAL baseline is what the TenSEAL tutorials show: one ``ckks_vector`` per sample, ``.dot`` for the
linear model, ``.mm`` + ``.polyval`` + ``.mm`` for the MLP, a ``tenseal.context`` with all Galois keys.

Run: ``.venv/bin/python benchmarks/he_inference.py`` (about two minutes on 2 cores).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tenseal as ts
from rich.console import Console
from rich.table import Table
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from deidpipe import he
from deidpipe.he.infer import Engine

N_FEATURES = 100
NAIVE_LINEAR_SAMPLES = 16
NAIVE_MLP_SAMPLES = 2
LATENCY_REPEATS = 5


def _timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def _median_time(fn, repeats: int = LATENCY_REPEATS) -> float:
    fn()  # warm-up (plaintext diagonals are encoded once per engine)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ours(plan: he.InferencePlan, X: np.ndarray, workdir: Path, name: str) -> dict[str, dict]:
    """deidpipe.he, batch and single-vector packing."""
    keys = he.keygen(workdir / name, plan=plan)
    ref = plan.decision_function(X)
    pub = he.load_public_context(keys.public)
    sec = he.load_secret_context(keys.secret)
    engine = Engine(plan, pub)
    enc, t_enc = _timed(he.encrypt, sec, X, packing="batch")
    engine.run(enc)  # warm-up: a serving engine encodes the model's plaintext constants once
    res, t_srv = _timed(engine.run, enc)
    dec, t_dec = _timed(he.decrypt, sec, res)
    batch = {
        "server_ps": len(X) / t_srv, "e2e_ps": len(X) / (t_enc + t_srv + t_dec),
        "ct_bytes": enc.nbytes / len(X), "pub_mb": keys.public_bytes / 1e6,
        "err": float(np.max(np.abs(dec.scores - ref))), "agree": dec.labels == plan.labels(ref),
    }
    one = he.encrypt(sec, X[:1], packing="single")
    lat = _median_time(lambda: engine.run(one))
    n_single = 4
    enc1, t_enc1 = _timed(he.encrypt, sec, X[:n_single], packing="single")
    res1, t_srv1 = _timed(engine.run, enc1)
    dec1, t_dec1 = _timed(he.decrypt, sec, res1)
    single = {
        "server_ps": n_single / t_srv1, "e2e_ps": n_single / (t_enc1 + t_srv1 + t_dec1), "latency": lat,
        "ct_bytes": enc1.nbytes / n_single, "pub_mb": keys.public_bytes / 1e6,
        "err": float(np.max(np.abs(dec1.scores - ref[:n_single]))),
        "agree": dec1.labels == plan.labels(ref[:n_single]),
    }
    batch["latency"] = None
    return {"batch": batch, "single": single, "preset": keys.preset}


def naive_context(n: int, bits: list[int]) -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=n, coeff_mod_bit_sizes=bits)
    ctx.global_scale = 2.0**40
    ctx.generate_galois_keys()
    return ctx


def naive(plan: he.InferencePlan, X: np.ndarray, n_samples: int) -> dict:
    """One ckks_vector per sample; the server computes .dot / .mm on each."""
    layers = plan.layers
    if len(layers) == 1:
        ctx = naive_context(8192, [60, 40, 60])
    else:  # mm, cubic (polyval: 3 levels here), mm: 5 levels need N=16384 at 128-bit security
        ctx = naive_context(16384, [60, 40, 40, 40, 40, 40, 60])
    pub = ctx.copy()
    pub.make_context_public()
    pub_bytes = len(pub.serialize())
    Xs = X[:n_samples]
    encs, t_enc = _timed(lambda: [ts.ckks_vector(ctx, x.tolist()).serialize() for x in Xs])
    ct_bytes = statistics.mean(len(v) for v in encs)
    w0, b0 = layers[0].weight, layers[0].bias

    def server(v):
        if len(layers) == 1:
            return v.dot(w0[0].tolist()) + float(b0[0])
        h = v.mm(w0.T.tolist()) + b0.tolist()
        h = h.polyval(list(layers[0].activation["coeffs"]))
        return h.mm(layers[1].weight.T.tolist()) + layers[1].bias.tolist()

    # the server receives bytes and sends bytes back, as deidpipe's Engine.run does
    outs, t_srv = _timed(lambda: [server(ts.ckks_vector_from(pub, v)).serialize() for v in encs])
    scores, t_dec = _timed(lambda: np.array([ts.ckks_vector_from(ctx, o).decrypt() for o in outs]))
    ref = plan.decision_function(Xs)
    return {
        "server_ps": n_samples / t_srv, "e2e_ps": n_samples / (t_enc + t_srv + t_dec), "latency": t_srv / n_samples,
        "ct_bytes": ct_bytes, "pub_mb": pub_bytes / 1e6,
        "err": float(np.max(np.abs(scores.reshape(ref.shape) - ref))),
        "agree": plan.labels(scores.reshape(ref.shape)) == plan.labels(ref),
    }


def plaintext(model, X: np.ndarray) -> dict:
    """scikit-learn on plaintext: no encryption at all."""
    _, t = _timed(model.predict, X)
    lat = _median_time(lambda: model.predict(X[:1]), 20)
    return {"server_ps": len(X) / t, "e2e_ps": len(X) / t, "latency": lat, "ct_bytes": X[0].nbytes,
            "pub_mb": 0.0, "err": None, "agree": None}


def main() -> None:
    console = Console(width=200)
    rng = np.random.default_rng(0)
    X, y = make_classification(n_samples=12000, n_features=N_FEATURES, n_informative=40, random_state=0)
    X = X + rng.normal(scale=0.1, size=X.shape)
    Xtr, Xte = X[:3808], X[3808:]
    ytr = y[:3808]
    lin = LogisticRegression(max_iter=2000).fit(Xtr, ytr)
    mlp = MLPClassifier((32,), alpha=1e-2, max_iter=300, random_state=0).fit(Xtr, np.eye(2)[ytr])
    lin_plan = he.compile_model(lin, Xtr, ytr)
    mlp_plan = he.compile_model(mlp, Xtr, np.eye(2)[ytr])
    console.print(f"MLP 100-32-2 plaintext accuracy (train): original {mlp_plan.report['accuracy_original']:.4f}, "
                  f"cubic {mlp_plan.report['accuracy_poly']:.4f}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        Xlin, Xmlp = Xte[:8192], Xte[:4096]
        console.print("measuring linear ...")
        o = ours(lin_plan, Xlin, work, "lin")
        results["linear"] = {
            "scikit-learn, plaintext": plaintext(lin, Xlin),
            "TenSEAL naive: vector/sample, .dot": naive(lin_plan, Xlin, NAIVE_LINEAR_SAMPLES),
            f"deidpipe.he batch {o['preset']}": o["batch"],
            f"deidpipe.he single {o['preset']}": o["single"],
        }
        console.print("measuring MLP ...")
        o = ours(mlp_plan, Xmlp, work, "mlp")
        results["mlp"] = {
            "scikit-learn, plaintext ReLU": plaintext(mlp, Xmlp),
            "TenSEAL naive: vector/sample, .mm": naive(mlp_plan, Xmlp, NAIVE_MLP_SAMPLES),
            f"deidpipe.he batch {o['preset']}": o["batch"],
            f"deidpipe.he single {o['preset']}": o["single"],
        }

    for title, rows in (("100-feature logistic regression", results["linear"]),
                        ("100-32-2 MLP (cubic activation)", results["mlp"])):
        naive_row = next(v for k, v in rows.items() if k.startswith("TenSEAL"))
        table = Table(title=title)
        for col in ("method", "server pred/s", "x naive", "end-to-end pred/s", "1-sample server latency",
                    "upload bytes/sample", "public context", "max |score err|", "labels agree"):
            table.add_column(col, justify="left" if col == "method" else "right")
        for name, r in rows.items():
            table.add_row(
                name, f"{r['server_ps']:,.1f}", f"{r['server_ps'] / naive_row['server_ps']:,.1f}x",
                f"{r['e2e_ps']:,.1f}", "-" if r["latency"] is None else f"{r['latency'] * 1e3:,.1f} ms",
                f"{r['ct_bytes']:,.0f}", f"{r['pub_mb']:.1f} MB" if r["pub_mb"] else "-",
                "-" if r["err"] is None else f"{r['err']:.1e}", "-" if r["agree"] is None else str(r["agree"]),
            )
        console.print(table)

    lin_rows, mlp_rows = results["linear"], results["mlp"]
    lin_batch = next(v for k, v in lin_rows.items() if "batch" in k)
    lin_naive = next(v for k, v in lin_rows.items() if k.startswith("TenSEAL"))
    mlp_single = next(v for k, v in mlp_rows.items() if "single" in k)
    ratio = lin_batch["server_ps"] / lin_naive["server_ps"]
    checks = [
        (f"batched linear throughput vs naive .dot: {ratio:,.0f}x", ratio >= 500, ">= 500x"),
        (f"single-vector MLP latency: {mlp_single['latency']:.3f} s", mlp_single["latency"] <= 0.5, "<= 0.5 s"),
        (f"public context, linear model: {lin_batch['pub_mb']:.1f} MB", lin_batch["pub_mb"] <= 15, "<= 15 MB"),
    ]
    for text, ok, target in checks:
        console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/] {text} (target {target})")


if __name__ == "__main__":
    main()
