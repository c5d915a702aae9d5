"""The studio's "Suggest a fix": the page runs `steerpatch suggest` on the inspected image as a job,
shows the candidates the library wrote, and loads one into the edit sliders."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(studio_bench):
    from fastapi.testclient import TestClient

    from steerpatch.studio import create_app

    app = create_app(studio_bench)
    with TestClient(app, base_url="http://127.0.0.1", headers={"x-steerpatch-token": app.state.token}) as test_client:
        yield test_client


def _conflicting_mistake(bench) -> int:
    """A misclassified image of the conflicting group (water, not a star): the shortcut's failure."""
    index = bench.index
    for i in range(len(bench.dataset)):
        if not bool(index.correct[i]) and index.group_of(i) == "conflicting":
            return i
    raise AssertionError("the default model gets every conflicting image right; the planted bug is gone")


def _wait(client, job: dict, limit_s: float = 300.0) -> dict:
    deadline = time.monotonic() + limit_s
    while job["state"] == "running":
        assert time.monotonic() < deadline, f"suggest job {job['job']} still running after {limit_s:.0f} s"
        time.sleep(0.2)  # polling a job the server runs, as the page does
        job = client.get(f"/api/suggest/{job['job']}").json()
    return job


def test_bad_suggest_requests_get_one_line_4xx(client, studio_bench):
    i = _conflicting_mistake(studio_bench)
    label = studio_bench.dataset[i].label
    r = client.post("/api/suggest", json={"key": f"d{i}", "label": "dragon"})
    assert r.status_code == 422 and "'dragon' is not a class" in r.json()["error"]
    predicted = studio_bench.describe(studio_bench.instance(f"d{i}"))["prediction"]["predicted"]
    r = client.post("/api/suggest", json={"key": f"d{i}", "label": predicted})
    assert r.status_code == 422 and "already gives this image" in r.json()["error"]
    r = client.post("/api/suggest", json={"key": f"d{i}", "label": label, "budget": 0})
    assert r.status_code == 422
    r = client.post("/api/suggest", json={"key": "d999999", "label": label})
    assert r.status_code == 404 and "unknown image" in r.json()["error"]
    assert client.get("/api/suggest/s999").status_code == 404
    assert not (studio_bench.patch_dir / "suggestions").exists() or not any(
        p.name.endswith(f"-d{i}-dragon") for p in (studio_bench.patch_dir / "suggestions").iterdir()
    )


def test_suggest_button_loads_the_written_top_candidate(page, studio_bench, screenshot_dir):
    from steerpatch.patch import load_patch

    i = _conflicting_mistake(studio_bench)
    item = studio_bench.dataset[i]
    page.evaluate(f"selectInstance('d{i}')")
    expect(page.locator("#inst-facts")).to_contain_text(f"label: {item.label}")
    assert page.locator("#suggest-label").input_value() == item.label  # the true class is offered first
    page.fill("#suggest-budget", "6")
    with page.expect_response("**/api/suggest") as started:
        page.click("#suggest-btn")
    job = started.value.json()
    assert job["label"] == item.label and job["state"] == "running"
    rows = page.locator("#suggest-table tbody tr")
    expect(rows.first).to_be_visible(timeout=300_000)
    done = page.request.get(page.url.rstrip("/") + f"/api/suggest/{job['job']}").json()
    assert done["state"] == "done" and rows.count() == len(done["candidates"]) >= 1
    top = done["candidates"][0]
    written = load_patch(top["patch"])  # the patch the library wrote for the top candidate
    assert [(e["latent"], e["op"], e["value"]) for e in top["edit_list"]] == [
        (e.latent, e.op, e.value) for e in written.edits
    ]
    assert "steerpatch suggest" in written.provenance.note and written.provenance.instances[0].id == str(item.path)
    assert page.locator("#suggest-plot").evaluate("img => img.complete && img.naturalWidth > 0")

    with page.expect_response("**/api/steer"):
        rows.first.locator("button.use").click()
    expected = " ".join(f"{e.latent}:{e.op}:{e.value:g}" for e in written.edits)
    expect(page.locator("#edits-summary")).to_have_text(expected)
    # the page's steered prediction is the library's for the same edits
    edits = [{"latent": e.latent, "op": e.op, "value": e.value} for e in written.edits]
    after = studio_bench.steer(f"d{i}", edits)["after"]["predicted"]
    expect(page.locator("#verdict")).to_have_attribute("data-after", after)
    assert (after == item.label) == (top["objective"]["targets_fixed"] == 1.0)
    page.screenshot(path=str(screenshot_dir / "suggested.png"), full_page=True)
