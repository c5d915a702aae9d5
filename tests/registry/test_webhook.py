"""Promotion that deploys itself: MLflow (SQL backend) webhook -> compile -> graph alias -> server reloads."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest

from steerpatch.cli.main import cli
from steerpatch.registry.webhook import WebhookReceiver, make_server, sign
from tests.helpers.tiny import make_patch, random_sae, tiny_model

SECRET = "s3cret-for-tests"


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    # the receiver judges versions under the registry workspace's policy (written before it starts)
    """An MLflow server that may call loopback, a receiver listening, and the webhook installed."""
    from steerpatch.registry.webhook import install_webhook
    from tests.registry.conftest import running_mlflow_server

    root = tmp_path_factory.mktemp("webhook")
    # loopback plain http is refused by MLflow unless the server allows it (production: an https receiver)
    env = {"MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
           "MLFLOW_WEBHOOK_CACHE_TTL": "1"}
    with running_mlflow_server(root, env) as uri:
        policy = root / "policy.toml"
        policy.write_text("format_version = 1\n[gates]\nmax_right_to_wrong_rate = 0.02\nmin_cos_mean = 0.8\n")
        receiver = WebhookReceiver(SECRET, tracking_uri=uri, policy=str(policy), log=lambda line: None)
        server = make_server(receiver)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        install_webhook(url, SECRET, tracking_uri=uri)
        try:
            yield uri, url, receiver, root
        finally:
            server.shutdown()
            server.server_close()
            receiver.close()


def _deployed(receiver, n):
    return lambda deployments: sum(d.status in ("deployed", "failed") for d in deployments) >= n


@pytest.mark.slow
def test_promote_compiles_registers_and_the_server_answers_with_the_new_version(loop, monkeypatch):
    from steerpatch.patch import save_patch
    from steerpatch.registry import promote, register_patch
    from steerpatch.registry.metrics import logged_model_metrics, version_model_id
    from steerpatch.registry.store import client, resolve_store
    from steerpatch.serve import GraphSource, ServerThread, create_app
    from tests.registry.conftest import Workspace

    uri, _, receiver, root = loop
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    tiny = tiny_model(root)
    sae = random_sae("standard", tiny.model.visual.transformer.width, root)
    ws = Workspace(root / "work")
    patches = []
    for version, edits in (("1.0.0", ["3:scale:0"]), ("1.1.0", ["3:scale:0", "5:clamp:1.0"])):
        patch = make_patch(tiny, sae, name="hook-fix", version=version, edits=edits)
        folder = root / version
        folder.mkdir()
        path = save_patch(patch, folder / "patch.json")
        registered = register_patch(path, ws.write_report(patch, folder), tracking_uri=uri)
        patches.append((patch, registered))
    (p1, v1), (p2, v2) = patches

    promote(v1.name, v1.version, "production", policy=ws.policy, tracking_uri=uri)
    assert receiver.wait_for(_deployed(receiver, 1), timeout=300), receiver.deployments
    first = [d for d in receiver.deployments if d.status in ("deployed", "failed")][0]
    assert first.status == "deployed", first.detail
    graph = first.graph["name"]
    assert first.graph["patch_hash"] == p1.content_hash
    # the graph's own alias event reaches the receiver too, and is not a patch: nothing is compiled for it
    assert receiver.wait_for(lambda ds: any(d.name == graph and d.status == "skipped" for d in ds), timeout=60)

    c = client(resolve_store(uri))
    metrics = logged_model_metrics(c, version_model_id(c.get_model_version(graph, first.graph["version"])))
    assert 0 <= metrics["parity_max_abs_diff"] <= metrics["parity_tolerance"]
    assert metrics["graph_size_bytes"] > 1e5

    source = GraphSource(f"{graph}@production", tracking_uri=uri, poll_seconds=0.2)
    try:
        with ServerThread(create_app(source)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/metadata").json()["patch_hash"] == p1.content_hash
            promote(v2.name, v2.version, "production", policy=ws.policy, tracking_uri=uri)
            assert receiver.wait_for(_deployed(receiver, 2), timeout=300), receiver.deployments
            assert source.wait_for_reloads(1, timeout=60)
            body = http.post("/predict", json={"tensor": [[[0.0] * 64] * 64] * 3}).json()
            assert body["patch_hash"] == p2.content_hash and body["model_version"] == "2"
    finally:
        source.stop()

    # an alias set outside `steerpatch promote` on a failing version: judged, refused, graph alias untouched
    patch = make_patch(tiny, sae, name="hook-fix", version="1.2.0", edits=["3:scale:0", "9:scale:0"])
    (root / "1.2.0").mkdir()
    path = save_patch(patch, root / "1.2.0" / "patch.json")
    v3 = register_patch(path, ws.write_report(patch, root / "1.2.0", right_to_wrong=5), tracking_uri=uri)
    c.set_registered_model_alias(v3.name, "production", v3.version)
    assert receiver.wait_for(_deployed(receiver, 3), timeout=120), receiver.deployments
    third = [d for d in receiver.deployments if d.version == v3.version and d.name == v3.name][0]
    assert third.status == "failed" and "fails max_right_to_wrong_rate" in third.detail
    assert str(c.get_model_version_by_alias(graph, "production").version) == "2"


def _post(url, body: dict, *, secret=SECRET, stamp=None):
    text = json.dumps(body)
    delivery, stamp = str(uuid.uuid4()), str(stamp if stamp is not None else int(time.time()))
    headers = {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp,
               "X-MLflow-Signature": sign(secret, delivery, stamp, text), "Content-Type": "application/json"}
    return httpx.post(url, content=text, headers=headers, timeout=10)


EVENT = {"entity": "model_version_alias", "action": "created",
         "data": {"name": "concept-clip.hook-fix", "alias": "production", "version": "1"}}


@pytest.mark.parametrize(
    ("body", "kw", "status", "says"),
    [
        (EVENT, {"secret": "wrong"}, 401, "signature does not match"),
        (EVENT, {"stamp": 1_000_000}, 401, "refusing a replay"),
        ({**EVENT, "entity": "registered_model"}, {}, 400, "'registered_model.created' is not handled"),
        ({**EVENT, "data": {"name": "x", "alias": "production", "version": "1 or 1=1"}}, {}, 400, "not a version number"),
    ],
)
def test_bad_deliveries_are_refused_and_nothing_is_done(loop, body, kw, status, says):
    _, url, receiver, _ = loop
    before = len(receiver.deployments)
    answer = _post(url, body, **kw)
    assert answer.status_code == status and says in answer.json()["error"]
    assert len(receiver.deployments) == before


def test_an_unsigned_delivery_is_refused(loop):
    _, url, receiver, _ = loop
    before = len(receiver.deployments)
    answer = httpx.post(url, content=json.dumps(EVENT), timeout=10)
    assert answer.status_code == 401 and len(receiver.deployments) == before


def test_install_needs_a_tracking_server(runner, store_uri, monkeypatch):
    monkeypatch.setenv("STEERPATCH_WEBHOOK_SECRET", SECRET)
    out = runner.invoke(cli, ["webhook", "install", "--url", "http://127.0.0.1:8900/", "--tracking-uri", store_uri])
    assert out.exit_code == 2
    assert "MLflow sends webhooks only from a tracking server with a SQL backend" in out.output
    monkeypatch.delenv("STEERPATCH_WEBHOOK_SECRET")
    out = runner.invoke(cli, ["webhook", "install", "--url", "http://127.0.0.1:8900/", "--tracking-uri", store_uri])
    assert out.exit_code == 2 and "STEERPATCH_WEBHOOK_SECRET" in out.output
