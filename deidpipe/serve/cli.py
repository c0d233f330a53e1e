"""``deidpipe serve``: the command-line face of :mod:`deidpipe.serve` (imports it only when it runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from deidpipe.cliutil import KEY_FILE_OPTION, OPTIONS_OPTION, POLICY_OPTION, policy_from_cli


def serve_command(
    config: Path | None = typer.Option(None, "--config", help="Node configuration (YAML); see docs/serve.md."),
    ae_title: str | None = typer.Option(None, "--ae-title", help="The node's AE title."),
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port to listen on (default 11112; 0: any free port)."),
    queue: Path | None = typer.Option(None, "--queue", help="Queue folder (durable state of the node)."),
    dest_dicom: list[str] = typer.Option([], "--dest-dicom", help="C-STORE destination AET@HOST:PORT."),
    dest_folder: list[Path] = typer.Option([], "--dest-folder", help="Folder destination."),
    dest_stow: list[str] = typer.Option([], "--dest-stow", help="DICOMweb STOW-RS base URL."),
    allow_aet: list[str] = typer.Option([], "--allow-aet", help="Allowed calling AE title (repeat)."),
    allow_address: list[str] = typer.Option([], "--allow-address", help="Allowed address or network (repeat)."),
    quiet_period: float | None = typer.Option(None, "--quiet-period", help="Seconds before a series is complete."),
    workers: int | None = typer.Option(
        None, "--workers", help="Processes that de-identify (default: one per CPU core, at most 8)."),
    policy: Path | None = POLICY_OPTION,
    option: list[str] = OPTIONS_OPTION,
    strict: bool = typer.Option(False, "--strict", help="Keep only the allow-list."),
    key_file: Path | None = KEY_FILE_OPTION,
    status: bool = typer.Option(False, "--status", help="Print the queue's state and exit."),
    as_json: bool = typer.Option(False, "--json", help="With --status: JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every object (pseudonymous ids only)."),
) -> None:
    """Run a DICOM node: receive (C-STORE), de-identify as `run` does, forward (C-STORE, STOW-RS, folder)."""
    import logging
    import signal
    import sys
    import threading

    from deidpipe.errors import DeidError

    if status:
        import json

        from deidpipe.serve.config import ServeConfig
        from deidpipe.serve.status import format_status, queue_status

        try:
            cfg = ServeConfig.load(config, queue=queue) if (config or queue) else None
        except DeidError as exc:
            typer.echo(f"deidpipe serve: {exc}", err=True)
            raise typer.Exit(2) from None
        if cfg is None:
            typer.echo("deidpipe serve --status: give --queue or --config", err=True)
            raise typer.Exit(2)
        st = queue_status(cfg.queue)
        typer.echo(json.dumps(st, indent=1, sort_keys=True) if as_json else format_status(st))
        return

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from deidpipe.keys import ProjectKey
        from deidpipe.serve.config import Destination, ServeConfig, parse_dicom_dest
        from deidpipe.serve.node import Node

        dests: list[Destination] = [parse_dicom_dest(s) for s in dest_dicom]
        dests += [Destination(f"folder-{i + 1}", "folder", path=p.resolve()) for i, p in enumerate(dest_folder)]
        dests += [Destination(f"stow-{i + 1}", "stow", url=u.rstrip("/")) for i, u in enumerate(dest_stow)]
        cfg = ServeConfig.load(
            config, queue=queue, ae_title=ae_title, host=host, port=port, destinations=dests,
            allowed_ae_titles=tuple(allow_aet) or None, allowed_addresses=tuple(allow_address) or None,
            quiet_period_s=quiet_period, policy_file=policy, key_file=key_file, workers=workers)
        key = ProjectKey.load(cfg.key_file)
        pol = policy_from_cli(cfg.policy_file, option, strict)
        node = Node(cfg, key, pol)
        node.start()
    except DeidError as exc:
        typer.echo(f"deidpipe serve: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # e.g. the port is taken
        typer.echo(f"deidpipe serve: cannot start ({type(exc).__name__}: {exc.strerror})", err=True)
        raise typer.Exit(2) from None
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"deidpipe serve: listening on {cfg.host}:{node.port} as {cfg.ae_title}", file=sys.stderr, flush=True)
    while not done.wait(1.0):
        pass
    node.stop()
    logging.getLogger("deidpipe.serve").info("stopped")
