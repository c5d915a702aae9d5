"""Serve a compiled graph with ONNX Runtime over HTTP on loopback, following a registry alias.

    app = create_app("concept-clip.water-shortcut@production")   # or a .onnx file
    serve("steered.onnx", port=8000)
    app = create_app(Fleet.open("NAME", ["production", "candidate"], canary="candidate=0.1"))
"""

from steerpatch.serve.app import MAX_BATCH, MAX_BODY_BYTES, create_app
from steerpatch.serve.fleet import Canary, Fleet
from steerpatch.serve.server import ServerThread, bind_socket, free_port, serve, url_of
from steerpatch.serve.source import GraphSource, LoadedGraph, open_graph

__all__ = [
    "MAX_BATCH",
    "MAX_BODY_BYTES",
    "Canary",
    "Fleet",
    "GraphSource",
    "LoadedGraph",
    "ServerThread",
    "bind_socket",
    "create_app",
    "free_port",
    "open_graph",
    "serve",
    "url_of",
]
