"""The studio: a local web workbench where patches are born.

Pick an image, see which SAE latents drive its prediction, move per-latent controls and watch the
prediction respond (only the blocks after the hook re-run), try the edit on other images, then save,
validate and register it as a patch — through the same library calls as the CLI.

Example:
    >>> bench = open_workbench()  # doctest: +SKIP
    >>> studio = serve_in_thread(bench, port=8765)  # doctest: +SKIP
    >>> studio.url  # doctest: +SKIP
    'http://127.0.0.1:8765/'

"""

from steerpatch.studio.api import create_app
from steerpatch.studio.imaging import MAX_UPLOAD_BYTES, StudioInputError
from steerpatch.studio.server import (
    RunningStudio,
    bind_socket,
    default_world,
    make_server,
    open_workbench,
    serve_in_thread,
    url_of,
)
from steerpatch.studio.workbench import Workbench

__all__ = [
    "MAX_UPLOAD_BYTES",
    "RunningStudio",
    "StudioInputError",
    "Workbench",
    "bind_socket",
    "create_app",
    "default_world",
    "make_server",
    "open_workbench",
    "serve_in_thread",
    "url_of",
]
