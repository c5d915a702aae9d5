"""The Open Inference Protocol (KServe v2) REST API, driven by a small client written to the protocol."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from steerpatch.compile.runtime import create_session
from steerpatch.serve import GraphSource, ServerThread, create_app
from steerpatch.serve.fleet import Fleet
from tests.helpers.serve import pixels_of


class OipClient:
    """What a KServe/Seldon v2 REST client does: JSON tensors with name, shape, datatype and flat data."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def ready(self) -> bool:
        return self.http.get("/v2/health/ready").status_code == 200

    def live(self) -> bool:
        return self.http.get("/v2/health/live").status_code == 200

    def metadata(self, model: str) -> dict:
        response = self.http.get(f"/v2/models/{model}")
        response.raise_for_status()
        return response.json()

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
              version: str | None = None, request_id: str = "r1") -> httpx.Response:
        datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
        body: dict = {"id": request_id, "inputs": [
            {"name": name, "shape": list(array.shape), "datatype": datatypes[array.dtype],
             "data": array.reshape(-1).tolist()}
            for name, array in inputs.items()
        ]}
        if outputs:
            body["outputs"] = [{"name": name} for name in outputs]
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        return self.http.post(path, json=body)

    @staticmethod
    def tensors(response: httpx.Response) -> dict[str, np.ndarray]:
        return {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in response.json()["outputs"]}


@pytest.fixture(scope="module")
def v2(graph, candidate, multi):
    fleet = Fleet({"production": GraphSource(graph[1]), "candidate": GraphSource(candidate[1]),
                   "multi": GraphSource(multi)}, name="tiny")
    with ServerThread(create_app(fleet, follow=False)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        yield OipClient(http)


def test_health_and_model_metadata(v2, graph, multi):
    assert v2.ready() and v2.live()
    meta = v2.metadata("tiny")
    assert meta["name"] == "tiny" and meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["production"]
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["embedding", "logits", "probs"]
    assert meta["outputs"][2]["shape"] == [-1, 3]
    assert meta["parameters"]["patch_hash"] == graph[0].content_hash
    assert v2.metadata("multi")["inputs"][1] == {"name": "patch_index", "datatype": "INT64", "shape": [-1]}


def test_infer_matches_onnx_runtime_and_names_who_answered(v2, graph, candidate, multi):
    pixels = pixels_of(20, rows=3)
    response = v2.infer("tiny", {"pixels": pixels}, outputs=["probs"], request_id="abc")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["id"] == "abc" and doc["model_name"] == "tiny" and [o["name"] for o in doc["outputs"]] == ["probs"]
    assert doc["outputs"][0]["datatype"] == "FP32" and doc["outputs"][0]["shape"] == [3, 3]
    assert doc["parameters"]["alias"] == "production" and doc["parameters"]["patch_hash"] == graph[0].content_hash
    expected = create_session(graph[1]).run(["probs"], {"pixels": pixels})[0]
    np.testing.assert_allclose(OipClient.tensors(response)["probs"], expected, atol=1e-6)

    pinned = v2.infer("tiny", {"pixels": pixels}, version="candidate")
    assert pinned.json()["parameters"]["patch_hash"] == candidate[0].content_hash
    assert [o["name"] for o in pinned.json()["outputs"]] == ["embedding", "logits", "probs"]

    index = np.array([2, 0, 1], dtype=np.int64)
    mixed = v2.infer("multi", {"pixels": pixels, "patch_index": index})
    expected = create_session(multi).run(["probs"], {"pixels": pixels, "patch_index": index})[0]
    np.testing.assert_allclose(OipClient.tensors(mixed)["probs"], expected, atol=1e-6)
    assert mixed.json()["parameters"]["patch_hashes"] == [candidate[0].content_hash, None, graph[0].content_hash]


@pytest.mark.parametrize(("model", "inputs", "status", "message"), [
    ("nope", {"pixels": pixels_of(0)}, 404, "model 'nope' is not served here"),
    ("tiny", {"pixels": pixels_of(0).astype(np.float32)[:, :2]}, 422, "has shape [1, 2, 64, 64]; expected [B, 3, 64, 64]"),
    ("tiny", {"image": pixels_of(0)}, 422, "inputs ['image'] are not this model's"),
    ("multi", {"pixels": pixels_of(0), "patch_index": np.array([5], dtype=np.int64)}, 422, "patch_index 5 is out of range"),
    ("tiny", {"pixels": pixels_of(0), "patch_index": np.array([1], dtype=np.int64)}, 422, "inputs ['patch_index']"),
])
def test_bad_requests_get_a_4xx_error_document(v2, model, inputs, status, message):
    response = v2.infer(model, inputs)
    assert response.status_code == status and message in response.json()["error"], response.text


def test_a_wrong_datatype_and_a_short_data_list_are_refused(v2):
    body = {"inputs": [{"name": "pixels", "shape": [1, 3, 64, 64], "datatype": "FP64", "data": [0.0] * 12288}]}
    assert "send FP32" in v2.http.post("/v2/models/tiny/infer", json=body).json()["error"]
    body["inputs"][0].update(datatype="FP32", data=[0.0] * 10)
    response = v2.http.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 422 and "holds 10 values; shape [1, 3, 64, 64] needs 12288" in response.json()["error"]
