"""Reliability under load: requests at concurrency 16 mixing aliases while `production` moves mid-run.

`run` sends the requests to a real server following two registered graph versions (`production` ->
1, `candidate` -> 2), moves `production` to version 2 a quarter of the way through, and checks:
0 failed requests; every answer names exactly one version (body `model_version`, `patch_hash` and
the `X-Steerpatch-Patch-Hash` header agree) and the alias it was routed to; `/metrics` counters
add up to the requests sent, per alias. The test suite runs it with 400 requests
(tests/serve/test_reliability.py); this script runs the issue's 2,000 on the default model.

    python bench/bench_reliability.py [--requests 2000] [--concurrency 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ALIASES = (None, "production", "candidate")  # None: un-pinned, answered by the default (production)


def png(size: int, seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def run(store: str, versions: list[tuple[Any, Any]], requests: int, concurrency: int = 16, seed: int = 3) -> dict:
    """Send `requests` uploads mixing aliases, move `production` mid-run, and check every answer and counter.

    Args:
        store: the MLflow tracking URI holding both versions.
        versions: `[(patch, GraphVersion)]` for version 1 (`production`) and version 2 (`candidate`).
        requests: how many requests to send.
        concurrency: requests in flight at once.
        seed: seed of the alias each request pins.

    Returns:
        A summary: requests, seconds, throughput, and the answers per alias and version.

    Raises:
        AssertionError: naming the first check that failed.
    """
    import httpx
    import mlflow

    from steerpatch.serve import ServerThread, create_app
    from steerpatch.serve.fleet import Fleet
    from steerpatch.serve.metrics import scrape as metric

    (first, v1), (second, v2) = versions
    hashes = {v1.version: first.content_hash, v2.version: second.content_hash}
    fleet = Fleet.open(v1.name, ["production", "candidate"], tracking_uri=store, poll_seconds=0.2)
    size = fleet.sources["production"].current.info.preprocessing.image_size
    rng = random.Random(seed)
    pins = [rng.choice(ALIASES) for _ in range(requests)]
    images = [png(size, i) for i in range(16)]

    def send(http: httpx.Client, i: int) -> httpx.Response:
        headers = {"content-type": "image/png", **({"X-Steerpatch-Alias": pins[i]} if pins[i] else {})}
        return http.post("/predict", content=images[i % len(images)], headers=headers)

    limits = httpx.Limits(max_connections=concurrency)
    with ServerThread(create_app(fleet)) as server, httpx.Client(base_url=server.url, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(send, http, i) for i in range(requests)]
            futures[requests // 4].result()  # a quarter of the run has been answered
            mlflow.MlflowClient(store, store).set_registered_model_alias(v1.name, "production", v2.version)
            responses = [f.result() for f in futures]
        seconds = time.perf_counter() - started
        assert fleet.sources["production"].wait_for_reloads(1, timeout=60), "production never reloaded"
        after = http.post("/predict", content=images[0], headers={"content-type": "image/png"}).json()
        text = http.get("/metrics").text

    failed = [r.status_code for r in responses if r.status_code != 200]
    assert not failed, f"{len(failed)} of {requests} requests failed: {Counter(failed)}"
    answered: Counter[str] = Counter()
    by_version: Counter[tuple[str, str]] = Counter()
    for pin, response in zip(pins, responses, strict=True):
        doc = response.json()
        # exactly one version answered, and the response names it consistently
        assert hashes[doc["model_version"]] == doc["patch_hash"] == response.headers["x-steerpatch-patch-hash"], doc
        assert doc["alias"] == (pin or "production"), (pin, doc["alias"])
        if doc["alias"] == "candidate":
            assert doc["model_version"] == v2.version
        answered[doc["alias"]] += 1
        by_version[(doc["alias"], doc["model_version"])] += 1
    assert by_version[("production", v1.version)] > 0, "version 1 never answered before the move"
    assert (after["model_version"], after["patch_hash"]) == (v2.version, second.content_hash)
    # the counters add up to the requests sent (+1 for `after`), per alias
    assert metric(text, "steerpatch_requests_total") == requests + 1
    assert metric(text, "steerpatch_requests_total", alias="production", status="200") == answered["production"] + 1
    assert metric(text, "steerpatch_requests_total", alias="candidate", status="200") == answered["candidate"]
    assert metric(text, "steerpatch_errors_total") == 0
    assert metric(text, "steerpatch_batch_rows_sum") == requests + 1
    return {"requests": requests, "concurrency": concurrency, "failed": 0, "seconds": round(seconds, 1),
            "throughput_rps": round(requests / seconds, 1),
            "answered": {f"{alias} v{version}": n for (alias, version), n in sorted(by_version.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from steerpatch.compile import compile_patch, register_graph
    from steerpatch.models import load_model
    from steerpatch.patch import new_patch
    from steerpatch.sae import default_sae_path, load_sae

    loaded = load_model("concept-clip")
    sae = load_sae(default_sae_path())
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as folder:
        store = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        versions = []
        for version, edits, alias in (("1.0.0", ["3:scale:0"], "production"),
                                      ("1.1.0", ["3:scale:0", "5:clamp:1.0"], "candidate")):
            patch = new_patch("steady-fix", loaded, sae, edits, rationale="benchmark", author="bench", version=version,
                              tokens=sae.hook.tokens)
            result = compile_patch(patch, model=loaded, sae=sae, progress=False)
            versions.append((patch, register_graph(result, alias=alias, tracking_uri=store)))
        summary = run(store, versions, args.requests, args.concurrency)
    print(json.dumps(summary, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
