"""Encrypted inference with real TenSEAL/SEAL ciphertexts (no mocks), on the breast cancer data set."""

from __future__ import annotations

import json
import os
import stat

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from typer.testing import CliRunner

from deidpipe.cli import app
from deidpipe.errors import DeidError
from deidpipe.he import (
    CipherBundle,
    ContextMismatchError,
    DepthError,
    FeatureCountError,
    InferencePlan,
    InsecureParametersError,
    MissingKeyError,
    SecretKeyInPublicContextError,
    compile_model,
    custom_preset,
    decrypt,
    encrypt,
    infer,
    keygen,
    load_public_context,
)
from deidpipe.he.io import read_container, read_features, write_container
from deidpipe.he.packing import choose_packing, simulate_single


@pytest.fixture(scope="module")
def data():
    X, y = load_breast_cancer(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def lr(data, tmp_path_factory):
    Xtr, Xte, ytr, yte = data
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(Xtr, ytr)
    plan = compile_model(model, Xtr, ytr)
    keys = keygen(tmp_path_factory.mktemp("lr"), plan=plan)
    return model, plan, keys


@pytest.fixture(scope="module")
def mlp(data, tmp_path_factory):
    """A 30-16-2 network: two output units (one-hot targets), ReLU replaced by a fitted cubic."""
    Xtr, Xte, ytr, yte = data
    model = make_pipeline(
        StandardScaler(), MLPClassifier((16,), alpha=1e-2, max_iter=1500, random_state=0)
    ).fit(Xtr, np.eye(2)[ytr])
    plan = compile_model(model, Xtr, np.eye(2)[ytr])
    keys = keygen(tmp_path_factory.mktemp("mlp"), plan=plan)
    return model, plan, keys


def _roundtrip(keys, plan, X, packing, tmp_path):
    enc = encrypt(keys.secret, X, packing=packing, out=tmp_path / "x.enc")
    assert enc.meta["packing"] == packing
    infer(plan, keys.public, tmp_path / "x.enc", out=tmp_path / "s.enc")
    return decrypt(keys.secret, CipherBundle.load(tmp_path / "s.enc", expect="he-scores"))


# -- exactness ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("packing,n", [("batch", None), ("single", 6)])
def test_logistic_regression_encrypted_matches_plaintext(data, lr, packing, n, tmp_path):
    _, Xte, _, yte = data
    model, plan, keys = lr
    X = Xte[:n]
    ref = plan.decision_function(X)
    np.testing.assert_allclose(ref[:, 0], model.decision_function(X), atol=1e-9)  # the plan is the model
    out = _roundtrip(keys, plan, X, packing, tmp_path)
    err = float(np.max(np.abs(out.scores - ref)))
    print(f"logistic regression {packing}: max |logit error| = {err:.3e} over {len(X)} samples")
    assert err < 1e-3
    assert out.labels == plan.predict(X) == list(model.predict(X))


@pytest.mark.parametrize("packing,n", [("batch", None), ("single", 4)])
def test_mlp_30_16_2_encrypted_matches_polynomial_model(data, mlp, packing, n, tmp_path):
    _, Xte, _, yte = data
    model, plan, keys = mlp
    assert plan.dims == [30, 16, 2] and plan.layers[0].activation["kind"] == "poly"
    X = Xte[:n]
    ref = plan.decision_function(X)
    out = _roundtrip(keys, plan, X, packing, tmp_path)
    err = float(np.max(np.abs(out.scores - ref)))
    print(f"MLP 30-16-2 {packing}: max |logit error| = {err:.3e} over {len(X)} samples")
    assert err < 1e-2
    assert out.labels == plan.predict(X)


@pytest.mark.parametrize("packing", ["batch", "single"])
def test_multiclass_logistic_regression_argmax(packing, tmp_path):
    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=2000).fit(X, y)
    plan = compile_model(model, X, y)
    keys = keygen(tmp_path / "k", plan=plan)
    X = X[::10]
    out = _roundtrip(keys, plan, X, packing, tmp_path)
    assert np.max(np.abs(out.scores - model.decision_function(X))) < 1e-3
    assert out.labels == list(model.predict(X)) and out.columns == ["score_0", "score_1", "score_2"]


def test_compile_report_puts_polynomial_accuracy_next_to_original(mlp):
    rep = mlp[1].report
    assert rep["activation"] == "poly3" and rep["depth"] == 4
    assert 0.9 < rep["accuracy_original"] <= 1 and 0.85 < rep["accuracy_poly"] <= 1


def test_single_vector_diagonal_arithmetic_in_plaintext():
    rng = np.random.default_rng(0)
    for dims in [(30, 16, 2), (100, 32, 2), (4, 64, 3), (7, 1)]:
        layers = [(rng.normal(size=(dims[i + 1], dims[i])), rng.normal(size=dims[i + 1]),
                   "sq" if i < len(dims) - 2 else None) for i in range(len(dims) - 1)]
        x = rng.normal(size=dims[0])
        got = simulate_single(layers, x, 4096, lambda a, z: z * z)[: dims[-1]]
        h = x
        for w, b, a in layers:
            h = w @ h + b
            h = h * h if a else h
        np.testing.assert_allclose(got, h, rtol=1e-9, atol=1e-9)


def test_auto_packing_picks_single_for_one_sample_and_batch_for_many(mlp):
    summary, keys = mlp[1].summary(), mlp[2]
    assert choose_packing(summary, 1, 4096, keys.galois_steps) == "single"
    assert choose_packing(summary, 2000, 4096, keys.galois_steps) == "batch"
    assert choose_packing(summary, 1, 4096, []) == "batch"  # no rotation keys: batch only


# -- keys: the server never holds a secret key ---------------------------------------------------------------------
def test_secret_context_is_0600_and_public_context_holds_no_secret(lr):
    keys = lr[2]
    assert stat.S_IMODE(os.stat(keys.secret).st_mode) == 0o600
    header, blobs = read_container(keys.public)
    assert header["kind"] == "public-context"
    assert "secret_key" not in dict(blobs) and "galois_keys" in dict(blobs)
    ctx = load_public_context(keys.public)
    assert not hasattr(ctx, "secret_key")
    with pytest.raises(DeidError, match="already exists"):  # a second keygen would orphan every ciphertext
        keygen(keys.secret.parent, preset="n8192-d1")


def test_decryption_with_the_public_context_fails(data, lr, tmp_path):
    _, Xte, _, _ = data
    _, plan, keys = lr
    res = infer(plan, keys.public, encrypt(keys.secret, Xte[:3]))
    with pytest.raises(MissingKeyError):
        decrypt(keys.public, res, out=tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


def test_server_refuses_a_context_with_a_secret_key(data, lr, tmp_path):
    _, Xte, _, _ = data
    _, plan, keys = lr
    enc = encrypt(keys.secret, Xte[:2])
    with pytest.raises(SecretKeyInPublicContextError):
        infer(plan, keys.secret, enc, out=tmp_path / "s.enc")
    # a "public" file smuggling a secret key is refused too
    header, blobs = read_container(keys.public)
    _, sblobs = read_container(keys.secret)
    meta = {k: v for k, v in header.items() if k not in ("kind", "blobs")}
    smuggled = blobs + [("secret_key", dict(sblobs)["secret_key"])]
    write_container(tmp_path / "bad.context", "public-context", meta, smuggled)
    with pytest.raises(SecretKeyInPublicContextError):
        infer(plan, tmp_path / "bad.context", enc, out=tmp_path / "s.enc")
    assert not (tmp_path / "s.enc").exists()


# -- clear errors, no partial output ----------------------------------------------------------------------------------
def test_mismatched_contexts_are_refused(data, lr, mlp, tmp_path):
    _, Xte, _, _ = data
    _, plan, keys = lr
    other = keygen(tmp_path / "other", plan=plan)
    enc = encrypt(other.secret, Xte[:2])
    with pytest.raises(ContextMismatchError, match="context ids differ"):
        infer(plan, keys.public, enc, out=tmp_path / "s.enc")
    res = infer(plan, other.public, enc)
    with pytest.raises(ContextMismatchError):
        decrypt(keys.secret, res)
    assert not (tmp_path / "s.enc").exists()


def test_wrong_feature_count_is_refused(data, lr, tmp_path):
    _, Xte, _, _ = data
    _, plan, keys = lr
    with pytest.raises(FeatureCountError, match="30 features"):
        encrypt(keys.secret, Xte[:, :29], out=tmp_path / "x.enc")
    assert not (tmp_path / "x.enc").exists()
    narrow = compile_model(LinearRegression().fit(Xte[:, :29], Xte[:, 29]))
    plain_keys = keygen(tmp_path / "k", preset="n8192-d1")  # no model recorded: the server catches it
    enc = encrypt(plain_keys.secret, Xte[:3])
    with pytest.raises(FeatureCountError):
        infer(narrow, plain_keys.public, enc)


def test_depth_beyond_the_modulus_chain_is_refused(data, lr, mlp, tmp_path):
    _, Xte, _, _ = data
    with pytest.raises(DepthError, match="modulus chain"):
        infer(mlp[1], lr[2].public, encrypt(lr[2].secret, Xte[:2]), out=tmp_path / "s.enc")
    with pytest.raises(DepthError):
        keygen(tmp_path / "k", plan=mlp[1], preset="n8192-d2")
    assert not (tmp_path / "s.enc").exists() and not (tmp_path / "k" / "secret.context").exists()


def test_weak_parameters_are_refused_unless_forced():
    with pytest.raises(InsecureParametersError, match="218 bits"):
        custom_preset(8192, [60, 40, 40, 40, 60], 40)
    assert issubclass(InsecureParametersError, DeidError)
    forced = custom_preset(8192, [60, 40, 40, 40, 60], 40, force_insecure=True)
    assert forced.total_bits == 240
    with pytest.raises(InsecureParametersError):
        keygen("/nonexistent/never-written", preset=forced)


# -- serialisation ---------------------------------------------------------------------------------------------------
def test_plan_json_round_trip(data, mlp, tmp_path):
    _, Xte, _, _ = data
    plan = mlp[1]
    path = plan.save(tmp_path / "plan.json")
    assert json.loads(path.read_text())["format"] == "deidpipe.he.plan/1"
    again = InferencePlan.load(path)
    assert again.plan_id == plan.plan_id and again.rotation_steps() == plan.rotation_steps()
    for a, b in zip(again.layers, plan.layers, strict=True):  # floats survive JSON exactly
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)
        assert a.activation == b.activation
    np.testing.assert_allclose(again.decision_function(Xte), plan.decision_function(Xte), rtol=1e-12)


def test_compile_matches_sklearn_decision_functions(data):
    Xtr, Xte, ytr, _ = data
    Xs = StandardScaler().fit(Xtr)
    models = [
        (make_pipeline(StandardScaler(), LinearSVC(max_iter=5000)).fit(Xtr, ytr), "decision_function"),
        (SVC(kernel="linear").fit(Xs.transform(Xtr)[:150], ytr[:150]), "decision_function"),
        (LinearRegression().fit(Xtr[:, 1:], Xtr[:, 0]), "predict"),
    ]
    for model, method in models:
        X = Xte[:, 1:] if method == "predict" else (Xs.transform(Xte) if isinstance(model, SVC) else Xte)
        plan = compile_model(model)
        np.testing.assert_allclose(plan.decision_function(X)[:, 0], getattr(model, method)(X), rtol=1e-9,
                                   atol=1e-8)
    weights = compile_model([(np.ones((3, 4)), np.zeros(3)), (np.ones((2, 3)), np.zeros(2))])
    assert weights.layers[0].activation["kind"] == "square" and weights.depth == 3


def test_features_read_from_npy_parquet_and_csv(tmp_path):
    import polars as pl

    x = np.arange(12, dtype=float).reshape(4, 3) / 7
    np.save(tmp_path / "x.npy", x)
    pl.DataFrame(x, schema=["a", "b", "c"]).write_parquet(tmp_path / "x.parquet")
    pl.DataFrame(x, schema=["a", "b", "c"]).write_csv(tmp_path / "x.csv")
    for name in ("x.npy", "x.parquet", "x.csv"):
        np.testing.assert_allclose(read_features(tmp_path / name), x)


# -- CLI --------------------------------------------------------------------------------------------------------------
def test_cli_end_to_end(data, tmp_path):
    Xtr, Xte, ytr, yte = data
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(Xtr, ytr)
    joblib.dump(model, tmp_path / "model.joblib")
    np.save(tmp_path / "xtr.npy", Xtr)
    np.save(tmp_path / "ytr.npy", ytr)
    header = ",".join(f"f{i}" for i in range(30))
    np.savetxt(tmp_path / "x.csv", Xte[:20], delimiter=",", header=header, comments="")
    run = CliRunner().invoke
    r = run(app, ["he", "compile", str(tmp_path / "model.joblib"), "--out", str(tmp_path / "plan.json"),
                  "--data", str(tmp_path / "xtr.npy"), "--labels", str(tmp_path / "ytr.npy")])
    assert r.exit_code == 0, r.output
    assert "plaintext accuracy" in r.output
    r = run(app, ["he", "keygen", str(tmp_path / "keys"), "--model", str(tmp_path / "plan.json")])
    assert r.exit_code == 0, r.output
    sec, pub = tmp_path / "keys" / "secret.context", tmp_path / "keys" / "public.context"
    r = run(app, ["he", "encrypt", "--context", str(sec), str(tmp_path / "x.csv"), "--out", str(tmp_path / "x.enc")])
    assert r.exit_code == 0, r.output
    r = run(app, ["he", "infer", "--model", str(tmp_path / "plan.json"), "--context", str(sec),
                  str(tmp_path / "x.enc"), "--out", str(tmp_path / "s.enc")])
    assert r.exit_code == 2 and "secret key" in r.output and not (tmp_path / "s.enc").exists()
    r = run(app, ["he", "infer", "--model", str(tmp_path / "plan.json"), "--context", str(pub),
                  str(tmp_path / "x.enc"), "--out", str(tmp_path / "s.enc")])
    assert r.exit_code == 0, r.output
    r = run(app, ["he", "decrypt", "--context", str(pub), str(tmp_path / "s.enc"), "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 2 and not (tmp_path / "s.csv").exists()
    r = run(app, ["he", "decrypt", "--context", str(sec), str(tmp_path / "s.enc"), "--out", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "score,label" and len(lines) == 21
    scores = np.array([float(ln.split(",")[0]) for ln in lines[1:]])
    labels = [int(ln.split(",")[1]) for ln in lines[1:]]
    np.testing.assert_allclose(scores, model.decision_function(Xte[:20]), atol=1e-3)
    assert labels == list(model.predict(Xte[:20]))
    r = run(app, ["he", "keygen", str(tmp_path / "weak"), "--poly-modulus-degree", "8192",
                  "--coeff-mod-bits", "60,60,60,60"])
    assert r.exit_code == 2 and "218 bits" in r.output and not (tmp_path / "weak").exists()
