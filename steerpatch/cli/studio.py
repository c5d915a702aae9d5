"""`steerpatch studio`: open the interactive web workbench on 127.0.0.1."""

from __future__ import annotations

import click


@click.command("studio")
@click.option("--model", "model", default="concept-clip", show_default=True,
              help="Model spec: concept-clip, an open_clip name (ViT-B-32), local-dir:PATH or hf-hub:ORG/REPO.")
@click.option("--pretrained", default=None, help="Weights for an architecture name: a pretrained tag or a checkpoint path.")
@click.option("--sae", "sae", default=None, type=click.Path(exists=True),
              help="SAE folder or file. Default: the SAE shipped for concept-clip.")
@click.option("--data", "data", default=None, type=click.Path(exists=True, file_okay=False),
              help="Labelled image folder to browse. Default: a generated held-out concept world (cached).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port on 127.0.0.1 (0 picks a free one).")
@click.option("--patch-dir", default="patches", show_default=True, type=click.Path(file_okay=False),
              help="Folder for saved patches and their validation reports.")
@click.option("--group-by", default="shortcut", show_default=True, help="Manifest attribute that names an image's group.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI for registration (default: steerpatch's local store).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests whose Host is NAME (default: 127.0.0.1, localhost and ::1 only). Repeatable.")
@click.pass_context
def studio(ctx, model, pretrained, sae, data, port, patch_dir, group_by, tracking_uri, allow_hosts) -> None:
    """Open the interactive web workbench: attribute, steer, try, save, validate and register patches.

    Example: steerpatch studio --model ViT-B-32 --sae my-sae/ --data my-images/ --port 8765

    Ctrl-C stops it (exit 130).
    """
    from steerpatch.studio import bind_socket, make_server, open_workbench, url_of

    if model != "concept-clip" and sae is None:
        raise click.UsageError("--sae is required with --model other than concept-clip (the shipped SAE fits concept-clip only)")
    sock = bind_socket(port)  # a taken port is one line and exit 2 now, before the slow part
    try:
        bench = open_workbench(
            model, sae, data, pretrained=pretrained, patch_dir=patch_dir, group_by=group_by, tracking_uri=tracking_uri
        )
        click.echo(f"steerpatch studio running at {url_of(sock)}  (Ctrl+C to stop)")
        make_server(bench, allow_hosts=allow_hosts).run(sockets=[sock])
    except KeyboardInterrupt:
        click.echo("stopped (Ctrl-C)", err=True)
        ctx.exit(130)
    finally:
        sock.close()
