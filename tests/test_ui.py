"""The leaderboard in the MLflow UI: headless Debian Chromium, driven by Playwright, against a real `mlflow server`."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.tracking import Tracker

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_DIR = Path(os.environ.get("UI_SCREENSHOT_DIR", Path(__file__).resolve().parents[1] / ".pipeline"))

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed "
                                                                    "(scripts/setup.sh installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri)
    experiment = tracker.experiment_id("fashion-mnist")
    errors = {"resnet20": 8.42, "lenet5": 10.87, "vit_tiny_patch4_32": 12.35}
    for model, error in errors.items():
        run_id = tracker.start_run(experiment, model, tags={"model": model, "stage": "train"},
                                   metrics={"top1_err": error, "top1": 100 - error, "top5_err": 0.5})
        tracker.finish(run_id)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
                                "--default-artifact-root", (tmp_path / "artifacts").as_uri(), "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow server did not come up"
            time.sleep(0.5)
        yield url, experiment, errors
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_runs_table_shows_models_and_top1_errors_sorted(server):
    from playwright.sync_api import sync_playwright

    url, experiment, errors = server
    # The UI keeps the chosen columns (and sort) of an experiment's runs table in localStorage.
    key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment}"]-ReactComponentState'
    state = {"selectedColumns": ["metrics.`top1_err`", "metrics.`top1`", "tags.`model`"],
             "orderByKey": "metrics.`top1_err`", "orderByAsc": True}
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / "ui_leaderboard.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.add_init_script(f"window.localStorage.setItem({json.dumps(key)}, {json.dumps(json.dumps(state))});")
            page.goto(f"{url}/#/experiments/{experiment}/runs?orderByKey=metrics.%60top1_err%60&orderByAsc=true",
                      timeout=60_000)
            for model in errors:
                page.get_by_text(model, exact=True).first.wait_for(timeout=60_000)
            page.get_by_text(f"{errors['resnet20']}", exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=str(shot), full_page=True)
            text = page.inner_text("body")
        finally:
            browser.close()
    for model, error in errors.items():
        assert model in text and str(error) in text
    # Sorted by top-1 error (the runs were created best first, and the UI's default is newest first).
    assert "Sort: top1_err" in text
    positions = [text.index(model) for model in sorted(errors, key=errors.get)]
    assert positions == sorted(positions)
    assert shot.stat().st_size > 10_000
