"""Limits hold before the work they guard: hostile images, numbers, nesting, slow bodies, one error shape.

Each hostile input here once gave a 500, a stall or gigabytes of memory (issue 15).
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from steerpatch.serve import ServerThread, create_app
from steerpatch.serve.preprocess import ImageLimits, ImageRejected, check_image_size, decode_image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def default_server(graph):
    """A server with the default limits (the conftest server has small test limits), docs on."""
    with ServerThread(create_app(graph[1], docs=True)) as running:
        yield running


# ---- images: checked from the header, before decoding -------------------------------------------

@pytest.mark.parametrize(
    ("size", "words"),
    [
        ((1, 1_000_000), "side limit"),  # 3,955 bytes once, a MemoryError in resize
        ((20_000_000, 1), "side limit"),
        ((1, 60_000), "side limit"),  # 312 bytes once, 7 s on the event loop and 1.3 GB
        ((1, 10_000), "aspect ratio"),  # under the side and pixel limits; resizing it would still explode
        ((500, 20), "aspect ratio"),
    ],
)
def test_hostile_image_shapes_are_refused_from_the_header(default_server, size, words):
    data = _png(Image.new("1", size))
    assert len(data) < 3_000_000
    started = time.perf_counter()
    response = httpx.post(default_server.url + "/predict", content=data, headers={"content-type": "image/png"},
                          timeout=60)
    elapsed = time.perf_counter() - started
    assert response.status_code == 413, response.text
    assert words in response.json()["error"] and f"{size[0]}x{size[1]}" in response.json()["error"]
    assert elapsed < 2.0, f"refusing a {size} image took {elapsed:.2f} s; it must not be decoded"


def test_each_image_limit_refuses_on_its_own():
    limits = ImageLimits(max_pixels=10_000, max_side=500, max_aspect=4)
    check_image_size(100, 100, limits)  # inside every limit
    check_image_size(200, 50, limits)  # at the ratio
    for width, height, words in [(101, 101, "pixel limit"), (501, 1, "side limit"), (40, 161, "aspect ratio")]:
        with pytest.raises(ImageRejected, match=words) as caught:
            check_image_size(width, height, limits)
        assert caught.value.status == 413


def test_decode_refuses_before_allocating_pixels():
    # 1x10,000 passes the pixel and side limits; only the ratio stops it, and it must stop before `load`
    data = _png(Image.new("L", (1, 10_000)))
    with pytest.raises(ImageRejected, match="aspect ratio"):
        decode_image(data)
    ok = decode_image(_png(Image.new("L", (400, 20))), limits=ImageLimits(max_aspect=20))
    assert ok.size == (400, 20)


# ---- JSON: numbers, depth and size checked on the text ------------------------------------------

def _post_json(server, text: str | bytes) -> httpx.Response:
    return httpx.post(server.url + "/predict", content=text, headers={"content-type": "application/json"},
                      timeout=60)


ZEROS = '{"tensor": ' + json.dumps(np.zeros((3, 64, 64)).tolist()) + "}"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ('{"tensor": [' + "9" * 5001 + "]}", 413, "over 64 characters"),  # past Python's 4300-digit limit
        ('{"tensor": [' + "9" * 300 + "]}", 413, "over 64 characters"),  # once an OverflowError
        (ZEROS.replace("0.0", "1" + "0" * 60, 1), 422, "infinite"),  # fits the text limit, not float32
        (ZEROS.replace("0.0", "-1e39", 1), 422, "infinite"),
        ("[" * 100_000 + "]" * 100_000, 413, "nested 100000 levels"),  # once a RecursionError
        ('{"tensor": ' + "[" * 100_000 + "]" * 100_000 + "}", 413, "nested 100001 levels"),
        ('{"image": "' + "[" * 100_000 + '"}', 400, "not valid base64"),  # brackets in a string are text
        ('{"tensor": [' + ",".join(["0"] * 1_000_000) + "]}", 413, "elements"),
    ],
)
def test_json_limits(default_server, body, status, words):
    response = _post_json(default_server, body)
    assert response.status_code == status, response.text[:300]
    assert words in response.json()["error"]


def test_tensor_shape_is_checked_before_conversion(default_server):
    # 65 images of the right shape: refused on the text (elements past 64 images) before parsing
    image = np.zeros((3, 64, 64)).tolist()
    response = httpx.post(default_server.url + "/predict", json={"tensor": [image] * 65}, timeout=60)
    assert response.status_code == 413 and "the limit is 786448" in response.json()["error"]
    nested = httpx.post(default_server.url + "/predict", json={"tensor": [[image]]}, timeout=60)
    assert nested.status_code == 422 and "has shape [1, 1, 3, 64, 64]" in nested.json()["error"]


# ---- one error shape, no docs unless asked ---------------------------------------------------------

def test_every_4xx_has_the_error_shape(client):
    cases = [
        (client.get("/nowhere"), 404),
        (client.get("/predict"), 405),
        (client.delete("/health"), 405),
        (client.get("/docs"), 404),
        (client.get("/redoc"), 404),
        (client.get("/openapi.json"), 404),
        (client.post("/predict", content=b"x", headers={"content-type": "text/plain"}), 415),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert list(response.json()) == ["error"] and response.json()["error"], response.text
    assert client.get("/predict").headers["allow"] == "POST"


def test_docs_only_when_asked(default_server):
    schema = httpx.get(default_server.url + "/openapi.json", timeout=30)
    assert schema.status_code == 200 and "/predict" in schema.json()["paths"]
    assert httpx.get(default_server.url + "/docs", timeout=30).status_code == 200


# ---- slow clients ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def strict_server(graph):
    """Short body and header deadlines, so slow clients are cut off quickly."""
    app = create_app(graph[1], body_timeout=1.5, idle_timeout=0.5)
    with ServerThread(app, header_timeout=1.0) as running:
        yield running


def _connect(server) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _partial_post(length: int) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_a_stalled_body_gets_408_and_the_connection_closes(strict_server):
    with _connect(strict_server) as sock:
        started = time.perf_counter()
        sock.sendall(_partial_post(1000) + b"\x89PNG")
        answer = _read_all(sock)  # returns only when the server closes the connection
        elapsed = time.perf_counter() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"error"' in answer and b"did not arrive in time" in answer
    assert 0.4 < elapsed < 5.0, elapsed  # the 0.5 s idle deadline, not the 1.5 s whole-body one


def test_a_trickling_body_hits_the_whole_body_deadline(strict_server):
    with _connect(strict_server) as sock:
        sock.sendall(_partial_post(1000))
        started = time.perf_counter()
        stop = threading.Event()

        def trickle() -> None:
            # one byte every 0.2 s: never silent for the 0.5 s idle limit
            while not stop.wait(0.2):
                try:
                    sock.sendall(b"x")
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            answer = _read_all(sock)
        finally:
            stop.set()
        elapsed = time.perf_counter() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 1.3 < elapsed < 6.0, elapsed


def test_unfinished_headers_are_dropped(strict_server):
    with _connect(strict_server) as sock:
        started = time.perf_counter()
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        assert _read_all(sock) == b""
        elapsed = time.perf_counter() - started
    assert 0.8 < elapsed < 5.0, elapsed
    assert httpx.get(strict_server.url + "/health", timeout=30).status_code == 200
