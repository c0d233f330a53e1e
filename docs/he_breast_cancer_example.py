"""Encrypted inference end to end on scikit-learn's breast cancer data set.

The data set ships with scikit-learn (no download): 569 fine-needle aspirates, 30 features computed from
digitised images of each (radius, texture, perimeter, area, smoothness, ... of the cell nuclei), label
malignant (0) or benign (1). Here the *portal* trains two models in plaintext and compiles them; the *hospital*
generates keys, encrypts its feature vectors and decrypts the scores; the portal scores ciphertexts with the
public context only and never sees a feature or a score.

Run from the repository root::

    .venv/bin/python docs/he_breast_cancer_example.py

The same steps with the command line are printed at the end.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from deidpipe import he


def main() -> None:
    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    work = Path(tempfile.mkdtemp(prefix="he-example-"))

    # -- portal: train in plaintext, compile to encrypted-inference plans ---------------------------------------
    # The scaler is folded into the first layer, so the hospital encrypts raw features.
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X_train, y_train)
    # 30-16-2: two output units (one-hot targets); the label is the larger score. ReLU is replaced by a cubic
    # fitted on the range of pre-activations the training data reaches.
    mlp = make_pipeline(StandardScaler(), MLPClassifier((16,), alpha=1e-2, max_iter=1500, random_state=0))
    mlp.fit(X_train, np.eye(2)[y_train])

    plans = {
        "logistic regression": he.compile_model(logreg, X_train, y_train),
        "MLP 30-16-2": he.compile_model(mlp, X_train, np.eye(2)[y_train]),
    }
    for name, plan in plans.items():
        r = plan.report
        print(f"{name}: widths {plan.dims}, depth {plan.depth}, activation {r['activation']}; plaintext train "
              f"accuracy original {r['accuracy_original']:.4f}, polynomial {r['accuracy_poly']:.4f}")
        plan.save(work / f"{name.split()[0].lower()}.plan.json")

    for name, plan in plans.items():
        print(f"\n== {name}")
        # -- hospital: keys made for this plan (depth, and the Galois keys its single-vector form needs) -------
        keys = he.keygen(work / name.replace(" ", "_"), plan=plan)
        print(f"keys: preset {keys.preset}, public context {keys.public_bytes / 1e6:.1f} MB, "
              f"rotation keys {keys.galois_steps}")
        for packing, X_in in (("batch", X_test), ("single", X_test[:3])):
            t0 = time.perf_counter()
            enc = he.encrypt(keys.secret, X_in, packing=packing, out=work / "features.enc")
            t1 = time.perf_counter()
            # -- portal: public context only; a secret key would be refused ----------------------------------
            he.infer(plan, keys.public, work / "features.enc", out=work / "scores.enc")
            t2 = time.perf_counter()
            # -- hospital: decrypt ------------------------------------------------------------------------------
            scores = he.decrypt(keys.secret, work / "scores.enc", out=work / "scores.csv")
            t3 = time.perf_counter()
            reference = plan.decision_function(X_in)
            err = np.max(np.abs(scores.scores - reference))
            same = scores.labels == plan.predict(X_in)
            acc = np.mean(np.array(scores.labels) == y_test[: len(X_in)])
            print(f"{packing:6s}: {len(X_in):3d} samples, {enc.nbytes / len(X_in):9,.0f} bytes/sample up, "
                  f"encrypt {t1 - t0:.2f}s, infer {t2 - t1:.2f}s, decrypt {t3 - t2:.2f}s; max |score error| "
                  f"{err:.1e}, labels = plaintext polynomial model: {same}, test accuracy {acc:.4f}")
        try:
            he.decrypt(keys.public, work / "scores.enc")
        except he.MissingKeyError as exc:
            print(f"decrypting with the public context fails, as it must: {exc}")

    joblib.dump(logreg, work / "model.joblib")
    np.save(work / "X_train.npy", X_train)
    np.save(work / "y_train.npy", y_train)
    np.save(work / "X_test.npy", X_test)
    print(f"""
The same with the command line (files in {work}):
  deidpipe he compile {work}/model.joblib --data {work}/X_train.npy --labels {work}/y_train.npy --out plan.json
  deidpipe he keygen keys/ --model plan.json
  deidpipe he encrypt --context keys/secret.context {work}/X_test.npy --out x.enc
  deidpipe he infer --model plan.json --context keys/public.context x.enc --out scores.enc
  deidpipe he decrypt --context keys/secret.context scores.enc --out scores.csv""")


if __name__ == "__main__":
    main()
