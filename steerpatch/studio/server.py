"""Open a workbench from specs (model, SAE, data folder) and serve the studio on 127.0.0.1.

With no data folder the studio browses a generated held-out concept world, written once into the
user's cache folder and reused afterwards.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerpatch.serve.server import bind_socket, http_protocol, url_of
from steerpatch.studio.workbench import Workbench

DEFAULT_MODEL = "concept-clip"
DEFAULT_WORLD_SIZE = 600


def cache_dir() -> Path:
    """steerpatch's cache folder: `$XDG_CACHE_HOME/steerpatch`, else `~/.cache/steerpatch`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "steerpatch"


def default_world(root: str | Path | None = None, *, n: int = DEFAULT_WORLD_SIZE, seed: int = 0) -> Path:
    """A generated held-out concept world (test split), written on first use and reused afterwards.

    Args:
        root: where the world lives; default `<cache>/world-test`.
        n: number of images.
        seed: generator seed.

    Returns:
        The folder of the world.
    """
    from steerpatch.world import write_world

    root = Path(root) if root is not None else cache_dir() / "world-test"
    if (root / "manifest.jsonl").is_file():
        return root
    print(f"studio: generating a held-out concept world in {root}", file=sys.stderr)
    return write_world(root, split="test", n=n, seed=seed)  # appears whole or not at all


def open_workbench(
    model: str = DEFAULT_MODEL,
    sae: str | Path | None = None,
    data: str | Path | None = None,
    *,
    pretrained: str | None = None,
    patch_dir: str | Path = "patches",
    group_by: str | None = "shortcut",
    tracking_uri: str | None = None,
) -> Workbench:
    """Load a model, an SAE and a dataset, and index the dataset for the studio.

    Args:
        model: a model spec `steerpatch.models.load_model` accepts.
        sae: an SAE path; None is the SAE shipped for the default model.
        data: a dataset folder; None generates (once) a held-out concept world in the cache folder.
        pretrained: weights for an architecture name (tag or checkpoint path).
        patch_dir: where saved patches and their reports go.
        group_by: manifest attribute to group images by.
        tracking_uri: MLflow tracking URI for registration.

    Returns:
        The workbench.

    Raises:
        ModelError, SAEError, DatasetError: for specs that cannot be loaded.
    """
    from steerpatch.data import load_dataset
    from steerpatch.errors import SAEError
    from steerpatch.models import load_model
    from steerpatch.sae import default_sae_path, load_latent_stats, load_sae

    loaded = load_model(model, pretrained=pretrained)
    sae_path = Path(sae) if sae is not None else default_sae_path()
    sae_module = load_sae(sae_path)
    try:
        stats = load_latent_stats(sae_path, sae=sae_module)
    except SAEError:
        stats = None  # exemplars then come from the browsed dataset itself
    dataset = load_dataset(data if data is not None else default_world())
    return Workbench(
        loaded, sae_module, dataset, patch_dir=patch_dir, group_by=group_by, tracking_uri=tracking_uri, stats=stats
    )


def make_server(bench: Workbench, *, allow_hosts: tuple[str, ...] = (), token: str | None = None):
    """A uvicorn server for the studio app, not yet started; run it with `server.run(sockets=[sock])`.

    Args:
        bench: the workbench to serve.
        allow_hosts: `Host` names accepted besides loopback ones (see `steerpatch.studio.api.create_app`).
        token: the session token POSTs must carry (default: a fresh random one).
    """
    import uvicorn

    from steerpatch.studio.api import create_app

    config = uvicorn.Config(create_app(bench, allow_hosts=allow_hosts, token=token), log_level="warning", access_log=False,
                            lifespan="off", http=http_protocol())
    return uvicorn.Server(config)


@dataclass
class RunningStudio:
    """A studio served from a background thread (tests, benchmarks, notebooks).

    Attributes:
        url: where it answers, e.g. "http://127.0.0.1:41234/".
        server: the uvicorn server.
        thread: the thread running it.
        token: the session token; send it as the `X-Steerpatch-Token` header with every POST.
    """

    url: str
    server: Any
    thread: threading.Thread
    token: str

    def stop(self) -> None:
        """Ask the server to finish and wait for its thread."""
        self.server.should_exit = True
        self.thread.join()


def serve_in_thread(bench: Workbench, *, port: int = 0, host: str = "127.0.0.1",
                    allow_hosts: tuple[str, ...] = ()) -> RunningStudio:
    """Serve the studio from a daemon thread; it accepts connections as soon as this returns.

    Example:
        >>> studio = serve_in_thread(bench)  # doctest: +SKIP
        >>> httpx.get(studio.url + "api/info").json()["model"]  # doctest: +SKIP
        'concept-clip'
        >>> httpx.post(studio.url + "api/steer", json={"key": "d0", "edits": []},
        ...            headers={"x-steerpatch-token": studio.token})  # doctest: +SKIP
        >>> studio.stop()  # doctest: +SKIP
    """
    from steerpatch.studio.guard import new_token

    sock = bind_socket(port, host)
    token = new_token()
    server = make_server(bench, allow_hosts=allow_hosts, token=token)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="steerpatch-studio", daemon=True)
    thread.start()
    return RunningStudio(url=url_of(sock), server=server, thread=thread, token=token)
