"""The MLflow UI, served by `mlflow server` on the test's own store, shows a patch version's metrics.

MLflow 3.17's model version page shows the version's tags and links its source LoggedModel; the
LoggedModel page lists the metrics with the dataset they were measured on and the run that logged
them. The test opens both in headless Chromium and reads the numbers off the page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from steerpatch.registry.metrics import report_metrics
from steerpatch.validate.report import load_report

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "registry"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium package (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def _metric_rows(text: str, names: set[str]) -> dict[str, tuple[str, str]]:
    """metric -> (dataset cell, value cell) from the LoggedModel page's metrics table, read as text."""
    lines = [line.strip() for line in text.splitlines()]
    return {line: (lines[i + 1], lines[i + 3]) for i, line in enumerate(lines) if line in names}


@pytest.mark.slow
def test_model_version_and_logged_model_pages_show_the_metrics(workspace, mlflow_server, browser, monkeypatch, tmp_path):
    from playwright.sync_api import expect

    from steerpatch.registry import register_patch

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cand = workspace.candidate(name="ui-check", right_to_wrong=1)
    version = register_patch(cand.patch, cand.report, tracking_uri=mlflow_server, dataset_source="/data/heldout")
    report = load_report(cand.report)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{mlflow_server}/#/models/{version.name}/versions/{version.version}")
    expect(page.locator("body")).to_contain_text("steerpatch.accuracy_after", timeout=60_000)
    expect(page.locator("body")).to_contain_text(report.patch.split("@")[0])  # the source model link
    page.screenshot(path=str(SCREENSHOTS / "model-version.png"), full_page=True)

    page.get_by_role("link", name="ui-check", exact=True).click()  # to the LoggedModel page
    expect(page).to_have_url(re.compile(rf".*/#/experiments/\d+/models/{version.logged_model_id}$"), timeout=30_000)
    expect(page.locator("body")).to_contain_text("right_to_wrong_rate", timeout=60_000)
    expected = report_metrics(report)
    rows = _metric_rows(page.inner_text("body"), set(expected))
    assert set(rows) == set(expected)
    digest = report.hashes.dataset[:36]
    for name, value in expected.items():
        dataset, shown = rows[name]
        assert dataset == f"heldout (#{digest})", name
        assert float(shown) == pytest.approx(value), name
    assert float(rows["right_to_wrong_rate"][1]) == pytest.approx(0.01)  # 1 flip of 100
    page.screenshot(path=str(SCREENSHOTS / "logged-model.png"), full_page=True)
    page.get_by_text("Artifacts", exact=True).click()  # the report travels as an artifact of the same model
    expect(page.locator("body")).to_contain_text("report.json", timeout=30_000)
    assert not errors, f"JavaScript errors on the page: {errors}"
    page.close()
