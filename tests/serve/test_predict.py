"""`/predict`, `/health` and `/metadata` on a real server: every payload form gives the torch steered
model's answer, and every bad payload gets a 4xx."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from steerpatch.models import build_zero_shot_head, encode_images
from steerpatch.steer import steer
from tests.helpers.serve import MAX_BODY, MAX_PIXELS

CLASSES = ["circle", "square", "star"]


def _png(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def reference(tiny, sae, graph):
    """The torch steered model's probs and embedding for one non-square RGBA image."""
    patch, _ = graph
    data = _png(90, 70, seed=1, mode="RGBA")
    head = build_zero_shot_head(tiny, CLASSES)
    pixels = tiny.preprocess(Image.open(io.BytesIO(data)))[None]
    with torch.no_grad(), steer(tiny, patch, sae):
        embedding = encode_images(tiny, pixels)
        probs = torch.softmax(head.logits(embedding), dim=-1)
    return data, pixels, probs[0].numpy(), embedding[0].numpy()


def _check(item, probs, embedding):
    assert list(item["probs"]) == CLASSES
    np.testing.assert_allclose(list(item["probs"].values()), probs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(item["embedding"], embedding, atol=1e-4, rtol=0)
    assert item["label"] == CLASSES[int(np.argmax(probs))]


def test_health_and_metadata(client, graph):
    patch, path = graph
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["patch_hash"] == patch.content_hash and not health["follows_alias"]
    meta = client.get("/metadata").json()
    assert meta["patch_hash"] == patch.content_hash and meta["patch_ref"] == "served-fix@1.0.0"
    assert meta["model_version"] is None and meta["file"] == str(path)
    assert meta["graph"]["mode"] == "sparse" and meta["graph"]["classes"] == CLASSES
    assert meta["graph"]["parity_max_abs_diff"] <= 1e-4


def test_every_payload_form_matches_the_torch_steered_model(client, reference):
    data, pixels, probs, embedding = reference
    encoded = base64.b64encode(data).decode()
    responses = [
        client.post("/predict", files={"file": ("x.png", data, "image/png")}),
        client.post("/predict", json={"image": encoded}),
        client.post("/predict", json={"image": "data:image/png;base64," + encoded}),
        client.post("/predict", content=data, headers={"content-type": "image/png"}),
        client.post("/predict", json={"tensor": pixels[0].tolist()}),
    ]
    for response in responses:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["classes"] == CLASSES and len(body["predictions"]) == 1
        _check(body["predictions"][0], probs, embedding)


def test_tensor_batch(client, reference):
    _, pixels, probs, embedding = reference
    batch = torch.cat([pixels, torch.zeros_like(pixels)])
    body = client.post("/predict", json={"tensor": batch.tolist()}).json()
    assert len(body["predictions"]) == 2
    _check(body["predictions"][0], probs, embedding)


BAD = [
    ({"content": b"not an image", "headers": {"content-type": "image/png"}}, 400, "not a decodable image"),
    ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "the image is empty"),
    ({"files": {"file": ("x.png", b"\x89PNG\r\n\x1a\n broken", "image/png")}}, 400, "not a decodable image"),
    ({"files": {"image": ("x.png", _png(8, 8), "image/png")}}, 422, "field 'file'"),
    ({"files": {"file": (None, b"just text")}}, 422, "field 'file'"),
    ({"data": {"file": "x"}}, 415, "not accepted"),
    ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 422, "field 'file'"),
    ({"json": {"image": "%%% not base64"}}, 400, "not valid base64"),
    ({"json": {"image": base64.b64encode(b"plain text").decode()}}, 400, "not a decodable image"),
    ({"json": {"image": 42}}, 422, "base64 string"),
    ({"json": {"tensor": [[[0.0] * 64] * 64] * 2 + [[[0.0] * 63] + [[0.0] * 64] * 63]}}, 422, "regular shape"),
    ({"json": {"tensor": [1.0, 2.0, 3.0]}}, 422, "expected [3, 64, 64]"),
    ({"json": {"tensor": np.zeros((3, 32, 32)).tolist()}}, 422, "expected [3, 64, 64]"),
    ({"json": {"tensor": "abc"}}, 422, "shape"),
    ({"json": {"tensor": []}}, 422, "has shape [0]"),
    ({"json": {"image": "", "tensor": []}}, 422, "exactly one of"),
    ({"json": {}}, 422, "exactly one of"),
    ({"json": [1, 2]}, 422, "exactly one of"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "not accepted"),
    ({"content": _png(300, 300), "headers": {"content-type": "image/png"}}, 413, "pixel limit"),
    ({"content": b"x" * (MAX_BODY + 1), "headers": {"content-type": "image/png"}}, 413, "byte limit"),
]


@pytest.mark.parametrize(("request_kwargs", "status", "message"), BAD)
def test_bad_payloads_get_4xx(request_kwargs, status, message, client):
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_nan_tensor_is_refused(client):
    body = '{"tensor": ' + str(np.zeros((3, 64, 64)).tolist()).replace("0.0", "NaN", 1) + "}"
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "NaN" in response.json()["error"]


def test_streamed_body_over_the_limit_is_refused_without_a_length(client):
    def chunks():
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"\0" * 65536

    response = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert response.status_code == 413


def test_random_bodies_never_get_5xx(client):
    rng = np.random.default_rng(0)
    types = ["image/png", "application/json", "multipart/form-data; boundary=b", "", "image/gif"]
    for i in range(40):
        body = rng.integers(0, 256, size=int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        if i % 4 == 0:
            body = b'{"tensor": [' + body[:50].hex().encode() + b"]}"
        response = client.post("/predict", content=body, headers={"content-type": types[i % len(types)]})
        assert 400 <= response.status_code < 500, (i, response.status_code, response.text)


def test_pixel_limit_applies_before_decoding(client, monkeypatch):
    # a small file that declares a huge image: refused from its header alone, its pixels never decoded
    from PIL import ImageFile

    decoded = []
    original = ImageFile.ImageFile.load

    def spy(image):
        decoded.append(image.size)
        return original(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    big = Image.new("1", (250, 200))  # 50,000 pixels: over MAX_PIXELS, within the side and aspect limits
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000
    response = client.post("/predict", files={"file": ("big.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413
    assert f"250x200 pixels, over the {MAX_PIXELS} pixel limit" in response.json()["error"]
    assert decoded == []
    # the spy does see decoding: an image within the limit is decoded (PIL may call load() again, a no-op)
    assert client.post("/predict", files={"file": ("ok.png", _png(20, 10), "image/png")}).status_code == 200
    assert decoded and set(decoded) == {(20, 10)}
