"""The leaderboard where users look: the MLflow UI of a real `mlflow server` over the session's `trained`
workflow (runs of the real train stage), in Debian's headless Chromium driven by Playwright, with a fresh
profile: nothing is put in the browser's localStorage, so what it shows is what a new user sees."""
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import TRAINED_MODELS, run_cli

from pipeline.engine.net import free_port

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_DIR = Path(os.environ.get("UI_SCREENSHOT_DIR", Path(__file__).resolve().parents[1] / ".pipeline"))

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed "
                                                                    "(scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def server(trained):
    """`mlflow server` over the trained workflow's store, as `pipeline ui` starts it."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(trained.folder / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", trained.uri,
                                "--default-artifact-root", (trained.folder / "mlartifacts").as_uri(),
                                "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None, (trained.folder / "server.log").read_text()[-3000:]
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=5).status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow server did not come up"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"])
        try:
            yield launched
        finally:
            launched.close()


TRAINING_VIEW = "?workflowType=machine_learning"  # the links `pipeline ui` prints open this view


def open_page(browser, url: str, wait_for: str):
    """A fresh browser context (its own empty profile and localStorage) on `url`, once `wait_for` shows; the
    UI's assistant panel, which opens beside the tables, is closed as a user would."""
    context = browser.new_context(viewport={"width": 2200, "height": 1000})
    page = context.new_page()
    page.goto(url, timeout=90_000)
    page.get_by_text(wait_for, exact=True).first.wait_for(timeout=90_000)
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
    return context, page


def shot(page, name: str) -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def test_models_view_lists_the_trained_models_with_their_top1_error(trained, server, browser):
    from pipeline.tracking.logged_models import model_of_run

    context, page = open_page(browser, f"{server}/#/experiments/{trained.experiment_id}/models{TRAINING_VIEW}",
                              "lenet5")
    try:
        for model in TRAINED_MODELS:
            page.get_by_text(model, exact=True).first.wait_for(timeout=90_000)
        page.get_by_text("top1_err", exact=True).first.wait_for(timeout=60_000)
        client = trained.tracker.client
        lenet = client.get_logged_model(model_of_run(client, trained.runs["lenet5"]))
        error = {m.key: m.value for m in lenet.metrics}["top1_err"]
        text = page.inner_text("body")
        shot(page, "ui_models.png")
    finally:
        context.close()
    assert "synthetic-test (#" in text  # the metrics' column group: the data set they were measured on
    assert str(error)[:5] in text  # lenet5's test error, as the table prints it


def test_runs_table_names_the_data_set_and_shows_the_leader(trained, server, browser):
    context, page = open_page(browser, f"{server}/#/experiments/{trained.experiment_id}/runs{TRAINING_VIEW}",
                              "Dataset")
    try:
        page.get_by_text("synthetic-train", exact=False).first.wait_for(timeout=90_000)
        text = page.inner_text("body")
        shot(page, "ui_runs.png")
    finally:
        context.close()
    assert "synthetic-train" in text and "Leader:" in text  # the Dataset column; the description's first line


def test_workflow_run_page_shows_the_leaderboard_in_its_description(trained, server, browser):
    run_id = trained.context.parent_run_id
    context, page = open_page(browser, f"{server}/#/experiments/{trained.experiment_id}/runs/{run_id}{TRAINING_VIEW}",
                              "Description")
    try:
        page.get_by_text("Leader:", exact=False).first.wait_for(timeout=90_000)
        page.get_by_text("Show more", exact=True).first.click()  # the description opens collapsed
        for model in TRAINED_MODELS:
            page.get_by_text(model, exact=True).first.wait_for(timeout=30_000)
        text = page.inner_text("body")
        shot(page, "ui_workflow_run.png")
    finally:
        context.close()
    assert "best_top1_err" in text and "nothing is selected on it" in text


def test_ui_command_prints_where_to_look(trained, server):
    result = run_cli("ui", "-e", trained.experiment, "--tracking-uri", server, cwd=trained.folder)
    assert result.returncode == 0, result.stderr
    base = f"{server}/#/experiments/{trained.experiment_id}"
    assert f"{base}/models{TRAINING_VIEW}" in result.stdout
    assert f"{base}/runs/{trained.context.parent_run_id}{TRAINING_VIEW}" in result.stdout
