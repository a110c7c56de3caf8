"""The command as a user runs it: bad input ends in one line that names the problem, and writes nothing."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from pipeline.engine.net import free_port, http_answers, port_taken, wait_for

GOOD = """name: t
data: {name: synthetic}
models: [lenet5]
train: {epochs: 1}
"""


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("text, fragments", [
    ("name: t\nmodels: [lenet5\n", ["malformed YAML at line"]),
    (GOOD + "epochs: 3\n", ["unknown key 'epochs'"]),
    (GOOD.replace("epochs: 1", "epochs: one"), ["train.epochs", "valid integer"]),
    (GOOD.replace("lenet5", "resnet_20"), ["unknown model 'resnet_20'", "did you mean", "resnet20"]),
    (GOOD.replace("synthetic", "imagenet"), ["unknown data set 'imagenet'", "imagenet-1k"]),
])
def test_bad_specs(workdir, text, fragments):
    (workdir / "spec.yaml").write_text(text)
    for command in ("validate", "run"):
        assert_one_line_error(run_cli(command, "spec.yaml", cwd=workdir), *fragments)
    assert not (workdir / "mlflow.db").exists()


def test_missing_data_files(workdir):
    (workdir / "spec.yaml").write_text(GOOD.replace("synthetic", "fashion_mnist"))
    result = run_cli("run", "spec.yaml", cwd=workdir, env={"FASHION_MNIST_DIR": str(workdir)})
    assert_one_line_error(result, "train-images-idx3-ubyte.gz", "not found", "apt-get install dataset-fashion-mnist")
    assert not (workdir / "mlflow.db").exists()


def test_unreachable_tracking_server(workdir):
    (workdir / "spec.yaml").write_text(GOOD)
    result = run_cli("run", "spec.yaml", "--set", "tracking.uri=http://127.0.0.1:9", cwd=workdir)
    assert_one_line_error(result, "tracking server http://127.0.0.1:9 is unreachable")
    result = run_cli("run", "spec.yaml", cwd=workdir, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert_one_line_error(result, "unreachable")
    assert not (workdir / "mlflow.db").exists()


def test_missing_spec_file_and_bad_override(workdir):
    assert_one_line_error(run_cli("run", "nope.yaml", cwd=workdir), "spec file nope.yaml not found")
    (workdir / "spec.yaml").write_text(GOOD)
    assert_one_line_error(run_cli("validate", "spec.yaml", "--set", "train.warp=9", cwd=workdir), "unknown key")
    assert_one_line_error(run_cli("run", "spec.yaml", "--model", "resnet*", cwd=workdir),
                          "--model 'resnet*' matches no model of the spec")


def test_validate_and_leaderboard_messages(workdir):
    result = run_cli("validate", str(ROOT / "experiments" / "quickstart.yaml"), cwd=workdir)
    assert result.returncode == 0 and "ok" in result.stdout and "train -> leaderboard" in result.stdout
    result = run_cli("validate", str(ROOT / "experiments" / "fashion_mnist_zoo.yaml"), "--model", "vgg*",
                     "--skip", "*_bn_cifar", cwd=workdir)
    assert result.returncode == 0 and "4 model(s)" in result.stdout, result.stdout + result.stderr
    assert_one_line_error(run_cli("leaderboard", cwd=workdir), "no tracking store")
    assert_one_line_error(run_cli("leaderboard", "--format", "xml", cwd=workdir), "unknown format 'xml'")


def test_a_keyword_argument_the_model_does_not_take_is_refused_before_anything_runs(workdir):
    (workdir / "spec.yaml").write_text(GOOD.replace("models: [lenet5]", "models: [{name: lenet5, kwargs: {bogus_kwarg: 1}}]"))
    result = run_cli("run", "spec.yaml", cwd=workdir)
    assert_one_line_error(result, "model 'lenet5' takes no keyword argument 'bogus_kwarg'")
    assert not (workdir / "mlflow.db").exists()


def test_seeds_on_validate_status_and_the_dry_run(workdir):
    """`--seeds N` is the same on every command that reads a spec: a unit per model and seed, a fine-tuned seed
    needing its own seed's source."""
    (workdir / "spec.yaml").write_text(GOOD.replace(
        "models: [lenet5]", "models: [{id: source, name: lenet5}, {id: tuned, name: lenet5, init: 'unit:train/source'}]"))
    assert run_cli("validate", "spec.yaml", "--seeds", "2", cwd=workdir).returncode == 0
    for command in (("status", "spec.yaml", "--seeds", "2"), ("run", "spec.yaml", "--seeds", "2", "--dry-run")):
        result = run_cli(*command, cwd=workdir, env={"COLUMNS": "250"})
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if line.startswith("│ train/")}
        assert rows == {"train/source@seed0": "-", "train/source@seed1": "-", "train/tuned@seed0": "train/source@seed0",
                        "train/tuned@seed1": "train/source@seed1"}, out


def _processes_with(fragment: str) -> list[str]:
    """Command lines of the live processes that contain `fragment` (NUL-separated, as /proc holds them)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        if fragment.encode() in text:
            found.append(text.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_ctrl_c_stops_the_ui_with_one_line_and_leaves_no_server(workdir, sig):
    """Ctrl-C in the terminal (or its closing) reaches the whole foreground process group: `pipeline ui` stops its
    MLflow server, says so in one line, prints no traceback, and frees the port; a second `pipeline ui` on a
    taken port is refused in one line."""
    port = free_port()
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    ui = subprocess.Popen([sys.executable, "-m", "pipeline", "ui", "--port", str(port), "--tracking-uri", uri],
                          cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)  # its own group, as a shell gives a foreground job
    try:
        wait_for(lambda: ui.poll() is not None or http_answers(f"http://127.0.0.1:{port}/health"), 120,
                 "the MLflow UI")
        assert ui.poll() is None, ui.stdout.read()
        assert_one_line_error(run_cli("ui", "--port", str(port), "--tracking-uri", uri, cwd=workdir),
                              f"port {port}", "already in use", "--port")
        os.killpg(ui.pid, sig)
        out, _ = ui.communicate(timeout=60)
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
    assert ui.returncode == 0, out
    assert "Traceback" not in out and "CancelledError" not in out, out
    assert "Stopped the MLflow UI" in out, out
    assert not port_taken("127.0.0.1", port)
    assert not _processes_with(f"--port\0{port}\0"), "an MLflow server outlived `pipeline ui`"
