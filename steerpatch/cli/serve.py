"""`steerpatch serve`: an ONNX Runtime HTTP server on 127.0.0.1 for a compiled graph or a registry alias."""

from __future__ import annotations

import click

EXIT_INTERRUPTED = 130


@click.command("serve")
@click.argument("source", metavar="NAME@ALIAS|FILE|NAME")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port on 127.0.0.1 (0 picks a free one).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: the local registry store).")
@click.option("--poll-seconds", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="How often to check whether NAME@ALIAS moved.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.01), default=16.0, show_default=True,
              help="Largest request body accepted (413 above).")
@click.option("--docs", is_flag=True, help="Also serve the interactive API docs (/docs, /redoc, /openapi.json).")
@click.option("--alias", "aliases", multiple=True, metavar="LABEL[=FILE|NAME@ALIAS]",
              help="Serve NAME@LABEL (or a file/ref under LABEL); repeat for several versions. The first is the default.")
@click.option("--default-alias", default=None, help="The alias un-pinned requests go to (default: the first --alias).")
@click.option("--canary", multiple=True, metavar="ALIAS=FRACTION",
              help="Send this share (0-1) of un-pinned requests to ALIAS (once: a repeat is refused, not overridden).")
@click.option("--shadow", default=None, metavar="ALIAS",
              help="Also run ALIAS on the default's requests and count where it disagrees (never answers).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Gather concurrent requests for up to this long into one ONNX Runtime call.")
@click.option("--no-batching", is_flag=True, help="Run each request on its own (no dynamic batching).")
@click.pass_context
def serve(ctx, source, port, tracking_uri, poll_seconds, max_body_mb, docs, aliases, default_alias, canary, shadow,
          batch_wait_ms, no_batching) -> None:
    """Serve compiled graphs: POST /predict, GET /health, /metadata, /metrics, and the KServe v2 API under /v2.

    SOURCE is a graph written by `steerpatch compile`, or NAME@ALIAS of a registered compiled graph
    or patch model; an alias is followed, and the server reloads when it moves. With --alias, SOURCE
    is the registered NAME and each --alias LABEL serves NAME@LABEL; requests pick one with the header
    X-Steerpatch-Alias (or ?alias=). Ctrl-C stops it (exit 130).
    """
    from steerpatch.serve import bind_socket, url_of
    from steerpatch.serve.fleet import Fleet, FleetError, parse_canaries
    from steerpatch.serve.server import serve as run

    if not aliases and (default_alias or canary or shadow):
        raise FleetError("--default-alias, --canary and --shadow choose among --alias labels; add --alias LABEL ...")
    parse_canaries(canary)  # a bad fraction or a repeated --canary is exit 2 before the port or any graph is touched
    from steerpatch.serve.app import WORKERS
    from steerpatch.serve.batching import ort_threads

    sock = bind_socket(port)  # a taken port is one line and exit 2, before anything is loaded or printed
    threads = ort_threads(WORKERS)
    try:
        if aliases:
            fleet = Fleet.open(source, list(aliases), default=default_alias, canary=canary, shadow=shadow,
                               tracking_uri=tracking_uri, poll_seconds=poll_seconds, threads=threads)
        else:
            from steerpatch.serve import GraphSource

            fleet = Fleet.single(GraphSource(source, tracking_uri=tracking_uri, poll_seconds=poll_seconds,
                                             threads=threads))
        for label, graphs in fleet.sources.items():
            info = graphs.current.info
            version = graphs.current.registry
            where = f"{version.name} version {version.version}" if version else str(graphs.current.path)
            what = info.patch_ref or f"{info.patch_count} patches"
            mark = " (default)" if label == fleet.default else ""
            click.echo(f"serving {what} as {label}{mark} ({where}; head {info.head}, {info.mode} compile)", err=True)
            if graphs.follows:
                click.echo(f"following {graphs.source}: checking every {poll_seconds:g} s", err=True)
        if fleet.canary:
            click.echo(f"canary: {fleet.canary.fraction:g} of un-pinned requests go to {fleet.canary.alias}", err=True)
        if fleet.shadow:
            click.echo(f"shadow: {fleet.shadow} runs beside {fleet.default} and is compared, never answers", err=True)
        routes = "POST /predict, GET /health, GET /metadata, GET /metrics, /v2" + (", GET /docs" if docs else "")
        click.echo(f"listening on {url_of(sock).rstrip('/')} ({routes})", err=True)
        run(fleet, tracking_uri=tracking_uri, poll_seconds=poll_seconds,
            max_body_bytes=int(max_body_mb * 1024 * 1024), docs=docs, sock=sock,
            batch_wait_ms=None if no_batching else batch_wait_ms)
    except KeyboardInterrupt:
        click.echo("stopped (Ctrl-C)", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    finally:
        sock.close()
