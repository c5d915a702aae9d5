"""One server, several versions: aliases, canary, shadow, patch_index, /metrics and the batcher."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from steerpatch.compile.runtime import create_session
from steerpatch.serve import GraphSource, ServerThread, create_app
from steerpatch.serve.batching import Batcher, run_graph
from steerpatch.serve.fleet import Canary, Fleet
from steerpatch.serve.metrics import scrape
from tests.helpers.serve import pixels_of

SIZE = 64


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, parsed with prometheus_client's parser."""
    return scrape(text, name, **labels)


def _fleet(graph, candidate, **kw) -> Fleet:
    return Fleet({"production": GraphSource(graph[1]), "candidate": GraphSource(candidate[1])}, **kw)


def test_pinned_aliases_canary_share_and_an_unknown_alias(graph, candidate):
    fleet = _fleet(graph, candidate, canary=Canary("candidate", 0.3), seed=7)
    expected_draws = random.Random(7)
    body = {"tensor": pixels_of(0)[0].tolist()}
    with ServerThread(create_app(fleet, follow=False)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        answered = [http.post("/predict", json=body).json()["alias"] for _ in range(30)]
        expected = ["candidate" if expected_draws.random() < 0.3 else "production" for _ in range(30)]
        assert answered == expected and 0 < answered.count("candidate") < 30

        pinned = http.post("/predict", json=body, headers={"X-Steerpatch-Alias": "candidate"})
        assert pinned.json()["alias"] == "candidate" and pinned.json()["patch_hash"] == candidate[0].content_hash
        assert pinned.headers["x-steerpatch-patch-hash"] == candidate[0].content_hash
        by_query = http.post("/predict?alias=production", json=body).json()
        assert by_query["patch_hash"] == graph[0].content_hash
        ort = create_session(candidate[1]).run(["probs"], {"pixels": pixels_of(0)})[0][0]
        np.testing.assert_allclose(list(pinned.json()["predictions"][0]["probs"].values()), ort, atol=1e-6)

        unknown = http.post("/predict", json=body, headers={"X-Steerpatch-Alias": "staging"})
        assert unknown.status_code == 400
        assert unknown.json() == {"error": "alias 'staging' is not served here; served aliases: production, candidate "
                                           "(header X-Steerpatch-Alias or query parameter alias)"}
        text = http.get("/metrics").text
    assert metric(text, "steerpatch_requests_total", alias="candidate", status="200") == answered.count("candidate") + 1
    assert metric(text, "steerpatch_requests_total", alias="production", status="200") == answered.count("production") + 1
    assert metric(text, "steerpatch_errors_total", alias="-", status="400") == 1
    assert metric(text, "steerpatch_requests_total") == 33
    assert metric(text, "steerpatch_request_seconds_count", alias="candidate") == answered.count("candidate") + 1


@pytest.mark.parametrize("shadowed", ["candidate", "same"])
def test_shadow_answers_from_the_default_and_counts_disagreements(graph, candidate, shadowed):
    # "same" serves the default's own graph as the shadow: every row agrees, no drift
    other = candidate[1] if shadowed == "candidate" else graph[1]
    fleet = Fleet({"production": GraphSource(graph[1]), shadowed: GraphSource(other)}, shadow=shadowed)
    batch = pixels_of(1, rows=24)
    production = create_session(graph[1]).run(["probs"], {"pixels": batch})[0]
    shadow = create_session(other).run(["probs"], {"pixels": batch})[0]
    differ = int((production.argmax(1) != shadow.argmax(1)).sum())
    assert differ == (24 if shadowed == "candidate" else 0)  # the fixtures' patches disagree on every row
    with ServerThread(create_app(fleet, follow=False)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for start in (0, 8, 16):
            answer = http.post("/predict", json={"tensor": batch[start:start + 8].tolist()}).json()
            assert answer["alias"] == "production" and answer["patch_hash"] == graph[0].content_hash
        text = http.get("/metrics").text
    assert metric(text, "steerpatch_shadow_requests_total", alias=shadowed) == 24
    assert metric(text, "steerpatch_shadow_disagreements_total", alias=shadowed) == differ
    drift = np.abs(production - shadow).max(axis=1)
    assert metric(text, "steerpatch_shadow_probability_drift_sum", alias=shadowed) == pytest.approx(drift.sum(), abs=1e-5)


def test_patch_index_selects_each_requests_patch(graph, candidate, multi):
    session = create_session(multi)
    body = {"tensor": pixels_of(2, rows=2).tolist()}
    with ServerThread(create_app(multi)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for index, patch in ((0, None), (1, graph[0]), (2, candidate[0])):
            answer = http.post(f"/predict?patch_index={index}", json=body).json()
            assert answer["patch_hash"] == (patch.content_hash if patch else None)
            expected = session.run(["probs"], {"pixels": pixels_of(2, rows=2), "patch_index": np.full(2, index)})[0]
            got = [list(item["probs"].values()) for item in answer["predictions"]]
            np.testing.assert_allclose(got, expected, atol=1e-6)
        mixed = http.post("/predict", json=body, headers={"X-Steerpatch-Patch-Index": "2,0"}).json()
        assert [p["patch_hash"] for p in mixed["predictions"]] == [candidate[0].content_hash, None]
        assert mixed["patch_hash"] is None
        out_of_range = http.post("/predict?patch_index=3", json=body)
        assert out_of_range.status_code == 422
        assert out_of_range.json()["error"] == ("patch_index 3 is out of range; this graph holds 2 patches: "
                                                "give 0 (unpatched) to 2")
        assert http.post("/predict?patch_index=x", json=body).status_code == 422
        assert http.post("/predict?patch_index=1,2,0", json=body).status_code == 422


def test_patch_index_on_a_single_patch_graph_is_refused(client):
    answer = client.post("/predict?patch_index=1", json={"tensor": pixels_of(3)[0].tolist()})
    assert answer.status_code == 422 and "takes no patch_index" in answer.json()["error"]
    assert client.post("/predict?patch_index=0", json={"tensor": pixels_of(3)[0].tolist()}).status_code == 200


def test_the_batcher_runs_queued_requests_in_one_call_per_graph_and_splits_them_back(graph, candidate, multi):
    graphs = {name: GraphSource(path).current for name, path in (("a", graph[1]), ("b", candidate[1]), ("m", multi))}
    rows: list[int] = []
    batcher = Batcher(max_wait_ms=50, max_rows=64, observe=rows.append)
    jobs = [("a", pixels_of(10, 2), None), ("m", pixels_of(11, 3), np.array([2, 0, 1])), ("a", pixels_of(12, 1), None),
            ("b", pixels_of(13, 1), None), ("m", pixels_of(14, 1), np.array([1]))]
    # queued before the thread starts, so the first gather sees them all: one call per graph
    futures = [batcher.submit(graphs[g], p, i) for g, p, i in jobs]
    batcher.start()
    try:
        results = [future.result(timeout=60) for future in futures]
    finally:
        batcher.stop()
    assert sorted(rows) == [1, 3, 4]  # a: 2+1 rows, m: 3+1, b: 1
    for (g, pixels, index), result in zip(jobs, results, strict=True):
        alone = run_graph(graphs[g], pixels, index)
        for name in alone:
            np.testing.assert_allclose(result[name], alone[name], atol=1e-5)


class _Meeting:
    """A real graph whose calls wait inside ONNX Runtime's `run` until `parties` calls are there at once."""

    def __init__(self, real, parties: int, timeout: float) -> None:
        self.real, self.info, self.output_names, self.session = real, real.info, real.output_names, self
        self.inside = threading.Event()
        self.meeting = threading.Barrier(parties, timeout=timeout)

    def run(self, names, feeds):
        self.inside.set()
        self.meeting.wait()  # BrokenBarrierError (the request fails) when no second call comes
        return self.real.session.run(names, feeds)


@pytest.mark.parametrize("lanes", [1, 2])
def test_batcher_lanes_run_batches_at_once(graph, lanes):
    # a second batch runs while the first is still inside ONNX Runtime: both cores compute, as without batching
    meeting = _Meeting(GraphSource(graph[1]).current, parties=2, timeout=30 if lanes == 2 else 2)
    batcher = Batcher(max_wait_ms=0, lanes=lanes).start()
    try:
        first = batcher.submit(meeting, pixels_of(20, 1))
        assert meeting.inside.wait(timeout=30)
        second = batcher.submit(meeting, pixels_of(21, 1))
        if lanes == 2:
            assert len(first.result(timeout=60)["embedding"]) == len(second.result(timeout=60)["embedding"]) == 1
        else:  # one lane: the second batch waits for the first, which waits for a second call in vain
            with pytest.raises(threading.BrokenBarrierError):
                first.result(timeout=60)
    finally:
        batcher.stop()


def test_batching_on_a_live_server_gathers_concurrent_requests(graph):
    app = create_app(graph[1], batch_wait_ms=200)
    body = {"tensor": pixels_of(4)[0].tolist()}
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: http.post("/predict", json=body), range(8)))
        assert [a.status_code for a in answers] == [200] * 8
        text = http.get("/metrics").text
    assert metric(text, "steerpatch_batch_rows_sum") == 8
    assert metric(text, "steerpatch_batch_rows_count") < 8  # some calls carried several requests


def test_an_unknown_alias_or_model_is_named_but_not_echoed_whole():
    # a hostile pin must not make the error as large as itself: the message names it, cut, with its length
    from steerpatch.serve.fleet import Fleet
    from steerpatch.serve.payload import BadPayload

    fleet = Fleet({"production": object(), "candidate": object()}, default="production", name="concept-clip")
    with pytest.raises(BadPayload) as caught:
        fleet.route("s" * 5000)
    message = str(caught.value)
    assert len(message) < 300 and "5,000 characters" in message and "served aliases: production, candidate" in message
    with pytest.raises(BadPayload, match="alias 'staging' is not served here"):
        fleet.route("staging")


def test_a_request_pinning_two_different_aliases_is_refused_naming_both(graph, candidate):
    # header vs query, two headers, two query values: no silent precedence; identical repeats are one pin
    fleet = _fleet(graph, candidate, name="tiny")
    body = {"tensor": pixels_of(0)[0].tolist()}
    header = "X-Steerpatch-Alias"
    conflicts = [
        ({"headers": {header: "candidate"}, "params": {"alias": "production"}},
         "'candidate' (header X-Steerpatch-Alias) and 'production' (query parameter alias)"),
        ({"headers": [(header, "production"), (header, "candidate")]},
         "'production' (header X-Steerpatch-Alias) and 'candidate' (header X-Steerpatch-Alias)"),
        ({"params": [("alias", "candidate"), ("alias", "s" * 5000)]},
         "'candidate' (query parameter alias) and 'sssssss"),
    ]
    with ServerThread(create_app(fleet, follow=False)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for options, named in conflicts:
            refused = http.post("/predict", json=body, **options)
            assert refused.status_code == 400, refused.text
            message = refused.json()["error"]
            assert message.startswith("the request pins two aliases: " + named) and message.endswith("; send one alias")
            assert len(message) < 300  # the 5,000-character pin is cut (errors.shown_value)
        same = http.post("/predict", json=body, headers=[(header, "candidate"), (header, "candidate")],
                         params=[("alias", "candidate"), ("alias", "candidate")])
        assert same.status_code == 200 and same.json()["alias"] == "candidate"
        # the KServe route: a header naming another alias than the path's version is the same conflict
        infer = {"inputs": [{"name": "pixels", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32",
                             "data": pixels_of(0).reshape(-1).tolist()}]}
        v2 = http.post("/v2/models/tiny/versions/candidate/infer", json=infer, headers={header: "production"})
        assert v2.status_code == 400
        assert v2.json()["error"] == ("the request pins two aliases: 'candidate' (path) and 'production' "
                                      "(header X-Steerpatch-Alias); send one alias")
        agreeing = http.post("/v2/models/tiny/versions/candidate/infer", json=infer, headers={header: "candidate"})
        assert agreeing.status_code == 200 and agreeing.json()["parameters"]["alias"] == "candidate"
        unpinned_path = http.post("/v2/models/tiny/infer", json=infer, params=[("alias", "production"), ("alias", "candidate")])
        assert unpinned_path.status_code == 400
        text = http.get("/metrics").text
    assert metric(text, "steerpatch_errors_total", alias="-", status="400", route="predict") == 3
    assert metric(text, "steerpatch_errors_total", alias="-", status="400", route="v2-infer") == 2
    assert metric(text, "steerpatch_requests_total", status="400") == 5
