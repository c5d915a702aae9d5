"""`steerpatch serve`: an ONNX Runtime HTTP server on 127.0.0.1 for a compiled graph or a registry alias."""

from __future__ import annotations

import click

EXIT_INTERRUPTED = 130


@click.command("serve")
@click.argument("source", metavar="NAME@ALIAS|FILE")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port on 127.0.0.1 (0 picks a free one).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: the local registry store).")
@click.option("--poll-seconds", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="How often to check whether NAME@ALIAS moved.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.01), default=16.0, show_default=True,
              help="Largest request body accepted (413 above).")
@click.option("--docs", is_flag=True, help="Also serve the interactive API docs (/docs, /redoc, /openapi.json).")
@click.pass_context
def serve(ctx, source, port, tracking_uri, poll_seconds, max_body_mb, docs) -> None:
    """Serve a compiled graph: POST /predict, GET /health, GET /metadata.

    SOURCE is a graph written by `steerpatch compile`, or NAME@ALIAS of a registered compiled graph
    or patch model; an alias is followed, and the server reloads when it moves. Ctrl-C stops it (exit 130).
    """
    from steerpatch.serve import GraphSource, bind_socket, url_of
    from steerpatch.serve.server import serve as run

    sock = bind_socket(port)  # a taken port is one line and exit 2, before anything is loaded or printed
    try:
        graphs = GraphSource(source, tracking_uri=tracking_uri, poll_seconds=poll_seconds)
        info = graphs.current.info
        version = graphs.current.registry
        where = f"{version.name} version {version.version}" if version else str(graphs.current.path)
        click.echo(f"serving {info.patch_ref} ({where}; head {info.head}, {info.mode} compile)", err=True)
        if graphs.follows:
            click.echo(f"following {source}: checking every {poll_seconds:g} s", err=True)
        routes = "POST /predict, GET /health, GET /metadata" + (", GET /docs" if docs else "")
        click.echo(f"listening on {url_of(sock).rstrip('/')} ({routes})", err=True)
        run(graphs, tracking_uri=tracking_uri, poll_seconds=poll_seconds,
            max_body_bytes=int(max_body_mb * 1024 * 1024), docs=docs, sock=sock)
    except KeyboardInterrupt:
        click.echo("stopped (Ctrl-C)", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    finally:
        sock.close()
