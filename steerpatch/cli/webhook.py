"""`steerpatch webhook serve|install`: promotion that deploys itself, through MLflow registry webhooks."""

from __future__ import annotations

import os

import click

from steerpatch.cli.registry import tracking_option


@click.group()
def webhook() -> None:
    """Compile and deploy a patch version when MLflow says it was promoted."""


def _secret() -> str:
    from steerpatch.registry.webhook import SECRET_ENV

    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        raise click.UsageError(f"set {SECRET_ENV} to the webhook's secret (it is never passed on the command line)")
    return secret


@webhook.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8900, show_default=True, type=click.IntRange(0, 65535), help="Port.")
@click.option("--alias", default="production", show_default=True, help="Patch alias that triggers a deploy.")
@click.option(
    "--policy", type=click.Path(exists=True, dir_okay=False), default=None, help="Policy TOML a version must pass."
)
@tracking_option
def serve(host: str, port: int, alias: str, policy: str | None, tracking_uri: str | None) -> None:
    """Receive signed model_version_alias.created events; compile, register and alias the graph."""
    from steerpatch.registry.store import resolve_store
    from steerpatch.registry.webhook import WebhookReceiver, make_server

    store = resolve_store(tracking_uri)
    receiver = WebhookReceiver(_secret(), tracking_uri=store.tracking_uri, alias=alias, policy=policy,
                               log=lambda line: click.echo(line, err=True))
    server = make_server(receiver, host, port)
    click.echo(f"steerpatch webhook receiver on http://{host}:{server.server_address[1]}/ "
               f"(deploys {alias} from {store.tracking_uri})", err=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        receiver.close()


@webhook.command("install")
@click.option("--url", required=True, help="The receiver's URL, e.g. http://host:8900/.")
@click.option("--name", default="steerpatch-deploy", show_default=True, help="The webhook's name in MLflow.")
@tracking_option
def install(url: str, name: str, tracking_uri: str | None) -> None:
    """Create the MLflow webhook that calls `steerpatch webhook serve` on alias events."""
    from steerpatch.registry.webhook import install_webhook

    hook = install_webhook(url, _secret(), tracking_uri=tracking_uri, name=name)
    click.echo(f"webhook {hook.webhook_id} ({hook.name}): model_version_alias.created -> {url}")
