"""The studio's JSON API on the default model: answers agree with the library, bad input gets a 4xx."""

from __future__ import annotations

import io

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def client(studio_bench):
    from fastapi.testclient import TestClient

    from steerpatch.studio import create_app

    app = create_app(studio_bench)
    # a loopback Host and the session token, as the studio's own page sends them
    with TestClient(app, base_url="http://127.0.0.1", headers={"x-steerpatch-token": app.state.token}) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def mistake(client) -> str:
    items = client.get("/api/items", params={"correct": "wrong", "limit": 1}).json()["items"]
    assert items, "the default model makes no mistakes on the test world; the studio needs one to start from"
    return items[0]["key"]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_items_put_mistakes_first_and_filter(client, studio_bench):
    rows = client.get("/api/items", params={"limit": 500}).json()
    flags = [item["correct"] for item in rows["items"]]
    assert flags == sorted(flags)  # every False (mistake) before every True
    right = next(item for item in rows["items"] if item["correct"])
    label, group = right["label"], right["group"]
    page = client.get("/api/items", params={"label": label, "group": group, "correct": "right", "limit": 500}).json()
    assert right["key"] in {i["key"] for i in page["items"]}
    assert all(i["label"] == label and i["group"] == group and i["correct"] for i in page["items"])


def test_no_edits_is_the_clean_prediction(client, mistake):
    answer = client.post("/api/steer", json={"key": mistake, "edits": []}).json()
    assert answer["after"]["probs"] == answer["before"]["probs"]
    assert answer["changed"] is False


def test_attribution_ablation_matches_a_suppressing_edit(client, studio_bench, mistake):
    label = studio_bench.dataset[int(mistake[1:])].label
    result = client.get(f"/api/attribution/{mistake}", params={"target": label, "n": 4}).json()
    assert result["against"] == label
    scores = [row["score"] for row in result["latents"]]
    assert scores == sorted(scores, reverse=True)
    for row in result["latents"]:
        edit = {"latent": row["latent"], "op": "scale", "value": 0}
        steered = client.post("/api/steer", json={"key": mistake, "edits": [edit]}).json()
        assert steered["after"]["predicted"] == row["ablated_prediction"]
        assert row["exemplars"], f"latent {row['latent']} has no exemplar images"
    heat = client.get(f"/api/heatmap/{mistake}/{result['latents'][0]['latent']}")
    assert heat.status_code == 200 and Image.open(io.BytesIO(heat.content)).format == "PNG"


def test_try_on_counts_match_rows(client, studio_bench, mistake):
    latent = client.get(f"/api/attribution/{mistake}", params={"n": 1}).json()["latents"][0]["latent"]
    body = {"key": mistake, "edits": [{"latent": latent, "op": "scale", "value": 0}], "n_near": 20, "n_other": 30}
    result = client.post("/api/tryon", json=body).json()
    item = studio_bench.dataset[int(mistake[1:])]
    assert 0 < result["near"]["n"] <= 20 and result["other"]["n"] == 30
    for name in ("near", "other"):
        rows = result[name]["rows"]
        r2w = sum(r["before"] == r["label"] != r["after"] for r in rows)
        w2r = sum(r["before"] != r["label"] == r["after"] for r in rows)
        assert (result[name]["right_to_wrong"], result[name]["wrong_to_right"]) == (r2w, w2r)
    assert all(r["label"] == item.label for r in result["near"]["rows"])
    assert all(r["label"] != item.label for r in result["other"]["rows"])
    assert mistake not in {r["key"] for r in result["near"]["rows"]}


@pytest.mark.parametrize(
    ("edit", "status", "words"),
    [
        ({"latent": 10**6, "op": "scale", "value": 0}, 422, "unknown latent"),
        ({"latent": -1, "op": "scale", "value": 0}, 422, "unknown latent"),
        ({"latent": 0, "op": "scale", "value": 11}, 422, "out of range"),
        ({"latent": 0, "op": "add", "value": -1e9}, 422, "out of range"),
        ({"latent": 0, "op": "explode", "value": 1}, 422, "unknown op"),
        ({"latent": "zero", "op": "scale", "value": 1}, 422, "latent"),
        ({"latent": 0, "op": "scale", "value": "big"}, 422, "value"),
    ],
)
def test_bad_edits_are_4xx(client, mistake, edit, status, words):
    answer = client.post("/api/steer", json={"key": mistake, "edits": [edit]})
    assert answer.status_code == status
    assert words in answer.json()["error"]


def test_bad_requests_are_4xx_and_the_server_keeps_serving(client, mistake, studio_bench):
    edit = {"latent": 0, "op": "scale", "value": 0.5}
    cases = [
        (client.post("/api/steer", json={"key": "d999999", "edits": []}), 404),
        (client.post("/api/steer", json={"key": mistake, "edits": [edit, edit]}), 422),
        (client.post("/api/steer", json={"key": mistake, "edits": [], "tokens": "middle"}), 422),
        (client.post("/api/steer", content=b"{not json", headers={"content-type": "application/json"}), 422),
        (client.get("/api/items", params={"correct": "maybe"}), 422),
        (client.get("/api/items", params={"label": "dragon"}), 422),
        (client.get(f"/api/attribution/{mistake}", params={"target": "dragon"}), 422),
        (client.get(f"/api/heatmap/{mistake}/{studio_bench.sae.d_sae}"), 404),
        (client.get(f"/api/exemplars/{studio_bench.sae.d_sae}"), 404),
        (client.get("/reports/..%2Fsecret/report.html"), 404),
        (client.get("/reports/Not%20A%20Slug/report.html"), 422),
        (client.get("/reports/never-saved/report.html"), 404),
    ]
    for answer, status in cases:
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]
    assert client.get("/api/info").json()["d_sae"] == studio_bench.sae.d_sae


def test_uploads_are_checked(client, studio_bench):
    from steerpatch.studio import MAX_UPLOAD_BYTES

    def upload(name: str, data: bytes):
        return client.post("/api/upload", files={"file": (name, data, "application/octet-stream")})

    assert upload("notes.txt", b"hello").status_code == 400
    assert upload("empty.png", b"").status_code == 400
    assert upload("big.png", b"\x89PNG" + b"0" * MAX_UPLOAD_BYTES).status_code == 413
    assert upload("huge.png", _png(Image.new("1", (5000, 5000)))).status_code == 413
    good = upload("ok.png", _png(studio_bench.dataset.load_image(0)))
    assert good.status_code == 200
    described = good.json()
    assert described["key"].startswith("u") and described["label"] is None
    assert described["prediction"]["predicted"] == studio_bench.index.describe(0, studio_bench.classes)["predicted"]


def test_save_refuses_bad_patches(client, mistake):
    edit = {"latent": 0, "op": "scale", "value": 0}
    base = {"key": mistake, "edits": [edit], "rationale": "why"}
    assert client.post("/api/patches", json={**base, "name": "Not A Slug"}).status_code == 422
    assert client.post("/api/patches", json={**base, "name": "no-edits", "edits": []}).status_code == 422
    assert client.post("/api/patches", json={**base, "name": "no-why", "rationale": " "}).status_code == 422
    assert client.post("/api/patches", json={**base, "name": "twice"}).status_code == 200
    again = client.post("/api/patches", json={**base, "name": "twice"})
    assert again.status_code == 409 and "already saved" in again.json()["error"]
    assert client.post("/api/patches/never-saved/validate").status_code == 404
    assert client.post("/api/patches/twice/register").status_code == 409


def test_a_patch_saved_without_an_author_is_the_current_users(client, mistake, monkeypatch):
    from steerpatch.patch import load_patch

    monkeypatch.setenv("STEERPATCH_USER", "grace")  # the same rule as `patch new` and `register`
    edit = {"latent": 0, "op": "scale", "value": 0}
    saved = client.post("/api/patches", json={"key": mistake, "edits": [edit], "rationale": "why", "name": "by-grace"})
    assert saved.status_code == 200, saved.text
    assert load_patch(saved.json()["path"]).author == "grace"
