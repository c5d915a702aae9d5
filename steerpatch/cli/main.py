"""Entry point of the `steerpatch` command.

Subcommands live in their own modules and are imported only when invoked, so `steerpatch --help`
stays fast and never imports torch, mlflow or onnx.
"""

from __future__ import annotations

import importlib
import os

import click

from steerpatch.errors import SteerpatchError

# name -> (module:attribute, one-line help). The order is the order of the workflow.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("steerpatch.cli.demo:demo", "Run the whole workflow on the embedded default, end to end."),
    "world": ("steerpatch.cli.world:world", "Generate the concept world (images, captions, planted shortcuts)."),
    "zoo": ("steerpatch.cli.zoo:zoo", "Train and evaluate the embedded default model."),
    "sae": ("steerpatch.cli.sae:sae", "Train, inspect and profile sparse autoencoders."),
    "attribute": ("steerpatch.cli.attribute:attribute", "Rank the SAE latents that drive one prediction."),
    "suggest": ("steerpatch.cli.suggest:suggest", "Turn a wrong prediction into candidate patches that generalise."),
    "patch": ("steerpatch.cli.patch:patch", "Create, check, compare, compose and apply patches."),
    "validate": ("steerpatch.cli.validate:validate", "Measure a patch's fixes and ripple effects; gate it."),
    "register": ("steerpatch.cli.registry:register", "Log and register a validated patch in MLflow."),
    "promote": ("steerpatch.cli.registry:promote", "Move an alias to a patch version, if its gates pass."),
    "history": ("steerpatch.cli.registry:history", "Show a registered patch's versions and alias moves."),
    "diff": ("steerpatch.cli.registry:diff", "Compare two registered patch versions."),
    "verify": ("steerpatch.cli.registry:verify", "Recompute every artifact hash of a registered version."),
    "audit": ("steerpatch.cli.registry:audit", "Verify every version, graph and alias move of a registered patch."),
    "webhook": ("steerpatch.cli.webhook:webhook", "Deploy patch versions promoted in MLflow (registry webhooks)."),
    "compile": ("steerpatch.cli.compile:compile_cmd", "Compile a patch into a parity-checked ONNX graph."),
    "serve": ("steerpatch.cli.serve:serve", "Serve a compiled graph with ONNX Runtime over HTTP."),
    "score": ("steerpatch.cli.score:score", "Batch-score a dataset with a compiled graph (local or Spark)."),
    "studio": ("steerpatch.cli.studio:studio", "Open the interactive web workbench."),
}


# documented exit code for an interrupted run (128 + SIGINT), as shells report it
EXIT_INTERRUPTED = 130


class SteerpatchGroup(click.Group):
    """A group whose commands are imported on first use, and that turns library errors into clean exits."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target, _ = COMMANDS[cmd_name]
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SteerpatchError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            # click would turn Ctrl-C into Abort and exit 1, the code of a failed verdict
            click.echo("\ninterrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as error:
            # Ctrl-C during a lazy import can arrive wrapped (Python turns an exception in a class body's
            # __set_name__ into RuntimeError); click's own exits and usage errors pass through
            if isinstance(error, click.exceptions.Exit | click.ClickException) or not _interrupted(error):
                raise
            click.echo("\ninterrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def _interrupted(error: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt is in the error's cause/context chain."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


@click.group(cls=SteerpatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="steerpatch")
def cli() -> None:
    """steerpatch: find what drives a CLIP model's mistakes, fix it with an SAE patch, and ship the fix.

    Attribute -> steer -> patch -> validate -> register -> promote -> compile -> serve.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def main() -> None:
    cli(prog_name="steerpatch")


if __name__ == "__main__":  # pragma: no cover
    main()
