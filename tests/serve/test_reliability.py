"""Reliability: many requests at concurrency 16 mixing aliases while `production` moves mid-run."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import mlflow
import pytest
from test_fleet import metric, pixels_of

from steerpatch.compile import compile_patch, register_graph
from steerpatch.serve import ServerThread, create_app
from steerpatch.serve.fleet import Fleet
from tests.helpers.tiny import CLASSES, fresh_store, make_patch

REQUESTS = 400
CONCURRENCY = 16


@pytest.fixture(scope="module")
def registry(tiny, sae, tmp_path_factory):
    """Two compiled versions of one patch: `production` -> 1, `candidate` -> 2."""
    store = fresh_store(tmp_path_factory.mktemp("reliability"))
    versions = []
    for version, edits, alias in (("1.0.0", ["3:scale:0"], "production"), ("1.1.0", ["3:scale:0", "5:clamp:1.0"], "candidate")):
        patch = make_patch(tiny, sae, name="steady-fix", version=version, edits=edits)
        result = compile_patch(patch, model=tiny, sae=sae, classes=CLASSES, progress=False)
        versions.append((patch, register_graph(result, alias=alias, tracking_uri=store)))
    return store, versions


def test_mixed_aliases_with_a_promote_mid_run(registry):
    store, [(first, v1), (second, v2)] = registry
    hashes = {"1": first.content_hash, "2": second.content_hash}
    fleet = Fleet.open(v1.name, ["production", "candidate"], tracking_uri=store, poll_seconds=0.2)
    pins = [random.Random(3).choice([None, "production", "candidate"]) for _ in range(REQUESTS)]
    body = {"tensor": pixels_of(30)[0].tolist()}

    def send(http: httpx.Client, pin: str | None) -> httpx.Response:
        return http.post("/predict", json=body, headers={"X-Steerpatch-Alias": pin} if pin else {})

    with ServerThread(create_app(fleet)) as server, httpx.Client(base_url=server.url, timeout=60,
                                                                 limits=httpx.Limits(max_connections=CONCURRENCY)) as http:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            first_half = [pool.submit(send, http, pin) for pin in pins[: REQUESTS // 2]]
            first_half[len(first_half) // 4].result()  # the run is under way
            mlflow.MlflowClient(store, store).set_registered_model_alias(v1.name, "production", v2.version)
            second_half = [pool.submit(send, http, pin) for pin in pins[REQUESTS // 2:]]
            responses = [f.result() for f in first_half + second_half]
        assert fleet.sources["production"].wait_for_reloads(1, timeout=60)
        after = send(http, "production").json()
        text = http.get("/metrics").text

    assert [r.status_code for r in responses] == [200] * REQUESTS  # 0 failed
    answered = Counter()
    for pin, response in zip(pins, responses, strict=True):
        doc = response.json()
        # exactly one version answered, and the response names it consistently
        assert hashes[doc["model_version"]] == doc["patch_hash"] == response.headers["x-steerpatch-patch-hash"]
        assert doc["alias"] == (pin or "production")
        if doc["alias"] == "candidate":
            assert doc["model_version"] == "2"
        answered[doc["alias"]] += 1
    production_versions = Counter(r.json()["model_version"] for r in responses if r.json()["alias"] == "production")
    assert production_versions["1"] > 0  # version 1 answered before the move
    assert (after["model_version"], after["patch_hash"]) == ("2", second.content_hash)
    # the counters add up to the requests sent (+1 for `after`), per alias
    assert metric(text, "steerpatch_requests_total") == REQUESTS + 1
    assert metric(text, "steerpatch_requests_total", alias="production", status="200") == answered["production"] + 1
    assert metric(text, "steerpatch_requests_total", alias="candidate", status="200") == answered["candidate"]
    assert metric(text, "steerpatch_errors_total") == 0
    assert metric(text, "steerpatch_batch_rows_sum") == REQUESTS + 1
