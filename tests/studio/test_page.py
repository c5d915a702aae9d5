"""The studio page in headless Chromium: from a misclassified image to a saved, validated, registered patch."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.slow


def _open_first_mistake(page) -> str:
    page.select_option("#f-correct", "wrong")
    thumb = page.locator('#grid .thumb[data-correct="false"]').first
    expect(thumb).to_be_visible()
    key = thumb.get_attribute("data-key")
    thumb.click()
    expect(page.locator("#latents tbody tr[data-latent]").first).to_be_visible()
    return key


def test_misclassified_image_to_registered_patch(page, studio_url, studio_bench, concept_model, default_sae, tmp_path, screenshot_dir):
    from steerpatch.data import load_dataset
    from steerpatch.patch import load_patch
    from steerpatch.validate import validate_patch
    from steerpatch.world import write_world

    key = _open_first_mistake(page)
    index = int(key[1:])
    item = studio_bench.dataset[index]
    expect(page.locator("#inst-facts")).to_contain_text(f"label: {item.label}")
    before = page.locator("#verdict").get_attribute("data-after")
    assert before != item.label  # the list really put a mistake first

    # suppress the attributed latents, strongest first, until the prediction moves
    rows = page.locator("#latents tbody tr[data-latent]")
    suppressed = []
    for i in range(rows.count()):
        with page.expect_response("**/api/steer") as answer:
            rows.nth(i).locator("button.suppress").click()
        assert answer.value.ok
        suppressed.append(int(rows.nth(i).get_attribute("data-latent")))
        if page.locator("#verdict").get_attribute("data-changed") == "true":
            break
    expect(page.locator("#verdict")).to_have_attribute("data-changed", "true")
    after = page.locator("#verdict").get_attribute("data-after")
    assert after != before
    expect(page.locator("#edits-summary")).to_contain_text(f"{suppressed[0]}:scale:0")
    # the page shows what the library computes for the same edits
    edits = [{"latent": latent, "op": "scale", "value": 0.0} for latent in suppressed]
    assert studio_bench.steer(key, edits)["after"]["predicted"] == after

    with page.expect_response("**/api/tryon") as answer:
        page.click("#tryon-btn")
    near = page.locator('#tryon-table tr[data-set="near"]')
    expect(near).to_be_visible()
    # the page shows the library's try-on of the same edits, computed here independently
    from steerpatch.studio.tryon import try_on

    tokens = answer.value.request.post_data_json["tokens"]
    expected = try_on(studio_bench, key, edits, tokens)
    assert int(near.locator(".r2w").inner_text()) == expected["near"]["right_to_wrong"]
    assert int(near.locator(".w2r").inner_text()) == expected["near"]["wrong_to_right"]
    page.screenshot(path=str(screenshot_dir / "steered.png"), full_page=True)

    name = f"studio-test-{index}"
    page.fill("#patch-name", name)
    page.fill("#patch-rationale", "suppress the latents that drive this mistake")
    page.click("#save-btn")
    expect(page.locator("#saved-path")).to_contain_text(f"{name}.json")
    page.click("#validate-btn")
    expect(page.locator("#verdict-value")).to_have_text(re.compile("^(pass|fail)$"), timeout=120_000)
    from steerpatch.studio.lifecycle import report_dir
    from steerpatch.validate import load_report

    stored = load_report(report_dir(studio_bench, name) / "report.json")
    assert page.locator("#verdict-value").inner_text() == stored.verdict
    assert stored.verdict == ("fail" if stored.failed_gates else "pass")
    report = page.request.get(urljoin(studio_url, page.locator("#report-link").get_attribute("href")))
    assert report.ok and "<html" in report.text().lower()
    page.click("#register-btn")
    expect(page.locator("#registered")).to_contain_text("version", timeout=120_000)
    page.screenshot(path=str(screenshot_dir / "saved.png"), full_page=True)

    saved = load_patch(studio_bench.patch_dir / f"{name}.json")
    # the version the page names is in the store, holding this patch and this report's verdict
    from steerpatch.registry import history, resolve_patch_ref

    shown = re.fullmatch(r"registered (\S+) version (\d+) \(models:/\1/\2\)", page.locator("#registered").inner_text())
    assert shown is not None, page.locator("#registered").inner_text()
    registered, version = shown.groups()
    stored_patch, _ = resolve_patch_ref(f"{registered}@{version}", studio_bench.tracking_uri)
    assert stored_patch == saved and stored_patch.content_hash == saved.content_hash
    versions = {str(v["version"]): v for v in history(registered, tracking_uri=studio_bench.tracking_uri)["versions"]}
    assert versions[version]["verdict"] == stored.verdict and versions[version]["patch_hash"] == saved.content_hash
    assert [(e.latent, e.op, e.value) for e in saved.edits] == [(lat, "scale", 0.0) for lat in suppressed]
    assert saved.provenance.instances[0].id == item.id
    assert set(saved.provenance.instances[0].scores) >= {str(lat) for lat in suppressed}
    small = write_world(tmp_path / "small", split="test", n=48, seed=3)
    result = validate_patch(saved, load_dataset(small), model=concept_model, sae=default_sae, progress=False, dose=False)
    assert result.n == 48 and result.hashes.patch == saved.content_hash
    assert result.verdict == ("fail" if result.failed_gates else "pass")


def test_bad_input_shows_a_message_and_the_server_keeps_working(page, studio_bench, screenshot_dir):
    _open_first_mistake(page)

    page.fill("#add-latent", str(studio_bench.sae.d_sae + 5))
    page.click("#add-latent-btn")
    expect(page.locator("#message")).to_contain_text("unknown latent")

    page.locator("#latents tbody tr[data-latent]").first.locator("input.clamp").fill("5000")
    expect(page.locator("#message")).to_contain_text("out of range")

    page.set_input_files("#upload", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}])
    expect(page.locator("#message")).to_contain_text("not a readable image")
    page.screenshot(path=str(screenshot_dir / "bad-input.png"), full_page=True)

    # still serving: an uploaded real image is analysed
    import io

    buffer = io.BytesIO()
    studio_bench.dataset.load_image(0).save(buffer, format="PNG")
    page.set_input_files("#upload", files=[{"name": "ok.png", "mimeType": "image/png", "buffer": buffer.getvalue()}])
    expect(page.locator("#inst-facts")).to_contain_text("label: unknown")
    expect(page.locator("#latents tbody tr[data-latent]").first).to_be_visible()
