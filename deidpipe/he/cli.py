"""``deidpipe he``: encrypted inference from the command line. Each command is a thin call into the library.

Heavy imports (TenSEAL, scikit-learn, joblib) happen inside the commands so that ``deidpipe --help`` is fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

he_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help, as deidpipe.cli explains
    help="Encrypted inference (CKKS): keys and encryption on the client, scoring on the server with a public "
    "context only.",
)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@he_app.command()
def keygen(
    out_dir: Path = typer.Argument(..., help="Folder for secret.context (0600) and public.context."),
    model: Path | None = typer.Option(None, "--model", help="Plan: choose depth and Galois keys for it."),
    preset: str | None = typer.Option(None, help="Parameter preset (n8192-d1 ... n16384-d8)."),
    poly_modulus_degree: int | None = typer.Option(None, help="Custom N (with --coeff-mod-bits)."),
    coeff_mod_bits: str | None = typer.Option(None, help="Custom prime sizes, e.g. 60,40,40,60."),
    scale_bits: int = typer.Option(40, help="Custom scale, in bits."),
    insecure: bool = typer.Option(False, "--insecure", help="Accept parameters below 128-bit security."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing secret.context."),
) -> None:
    """Generate a key pair: secret.context stays with the client, public.context goes to the server."""
    from deidpipe.he.ckks_context import keygen as _keygen
    from deidpipe.he.compile import load_plan
    from deidpipe.he.errors import HEError
    from deidpipe.he.params import custom_preset, security_problem

    try:
        chosen = preset
        if coeff_mod_bits or poly_modulus_degree:
            if not (coeff_mod_bits and poly_modulus_degree):
                raise typer.BadParameter("--poly-modulus-degree and --coeff-mod-bits go together")
            bits = [int(b) for b in coeff_mod_bits.split(",")]
            problem = security_problem(poly_modulus_degree, bits)
            if problem and insecure:
                typer.echo(f"warning: INSECURE parameters forced: {problem}", err=True)
            chosen = custom_preset(poly_modulus_degree, bits, scale_bits, force_insecure=insecure)
        plan = load_plan(model) if model else None
        keys = _keygen(out_dir, plan=plan, preset=chosen, force_insecure=insecure, overwrite=overwrite)
    except HEError as exc:
        _fail(exc)
    typer.echo(f"preset {keys.preset}; Galois keys for steps {keys.galois_steps or 'none'}")
    typer.echo(f"wrote {keys.secret} (mode 0600, keep it on the client)")
    typer.echo(f"wrote {keys.public} ({keys.public_bytes / 1e6:.1f} MB, no secret key)")


@he_app.command("compile")
def compile_cmd(
    model: Path = typer.Argument(..., help="A scikit-learn estimator saved with joblib. Loading a joblib "
                                 "file runs code: only load files you made yourself."),
    out: Path = typer.Option(..., "--out", help="Plan file to write (JSON)."),
    data: Path | None = typer.Option(None, help="Training features (.npy/.parquet/.csv): fit the "
                                     "activation polynomial and report accuracy."),
    labels: Path | None = typer.Option(None, help="Labels for --data, to report accuracy."),
    activation: str = typer.Option("auto", help="auto, poly3 or square."),
) -> None:
    """Compile a plaintext model into an encrypted-inference plan and report its plaintext accuracy."""
    import joblib

    from deidpipe.he.compile import compile_model
    from deidpipe.he.errors import HEError
    from deidpipe.he.io import read_features, read_labels

    try:
        estimator = joblib.load(model)
        x = read_features(data) if data else None
        y = read_labels(labels) if labels else None
        plan = compile_model(estimator, x, y, activation=activation)
        plan.save(out)
    except HEError as exc:
        _fail(exc)
    r = plan.report
    typer.echo(f"plan {out}: {plan.source}, widths {plan.dims}, depth {plan.depth}, activation {r['activation']}")
    if "accuracy_original" in r:
        typer.echo(f"plaintext accuracy: original {r['accuracy_original']:.4f}, polynomial {r['accuracy_poly']:.4f} "
                   f"(label agreement {r['label_agreement']:.4f}, n={r['n_samples']})")
    elif "label_agreement" in r:
        typer.echo(f"label agreement polynomial vs original: {r['label_agreement']:.4f} (n={r['n_samples']})")


@he_app.command()
def encrypt(
    features: Path = typer.Argument(..., help="Features: .npy, .parquet or .csv (samples x features)."),
    context: Path = typer.Option(..., "--context", help="secret.context"),
    out: Path = typer.Option(..., "--out", help="Encrypted features to write."),
    packing: str = typer.Option("auto", help="auto, batch or single."),
) -> None:
    """Encrypt feature vectors with the client's secret context."""
    from deidpipe.he.client import encrypt as _encrypt
    from deidpipe.he.errors import HEError

    try:
        bundle = _encrypt(context, features, packing=packing, out=out)
    except HEError as exc:
        _fail(exc)
    typer.echo(f"wrote {out}: {bundle.meta['n_samples']} samples, {bundle.meta['packing']} packing, "
               f"{len(bundle.blobs)} ciphertexts")


@he_app.command()
def infer(
    features: Path = typer.Argument(..., help="Encrypted features (from encrypt)."),
    model: Path = typer.Option(..., "--model", help="Plan (from compile)."),
    context: Path = typer.Option(..., "--context", help="public.context (a secret one is refused)."),
    out: Path = typer.Option(..., "--out", help="Encrypted scores to write."),
) -> None:
    """Score encrypted features on the server, with the public context only."""
    from deidpipe.he.errors import HEError
    from deidpipe.he.infer import infer as _infer

    try:
        result = _infer(model, context, features, out=out)
    except HEError as exc:
        _fail(exc)
    typer.echo(f"wrote {out}: {result.meta['n_samples']} samples x {result.meta['n_outputs']} encrypted scores")


@he_app.command()
def decrypt(
    scores: Path = typer.Argument(..., help="Encrypted scores (from infer)."),
    context: Path = typer.Option(..., "--context", help="secret.context"),
    out: Path = typer.Option(..., "--out", help="CSV: the decision scores, then the predicted label."),
) -> None:
    """Decrypt scores with the client's secret context and write them as CSV."""
    from deidpipe.he.client import decrypt as _decrypt
    from deidpipe.he.errors import HEError

    try:
        result = _decrypt(context, scores, out=out)
    except HEError as exc:
        _fail(exc)
    typer.echo(f"wrote {out}: {len(result.labels)} rows")
