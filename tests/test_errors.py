"""User mistakes and bad servers end in one line that names the problem and the fix: exit code 2, no traceback,
no password. Against real servers: `mlflow server` with logins, `python -m http.server` as a server that is not
MLflow, and a closed port."""
import io
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

from pipeline.engine import warm_cluster
from pipeline.errors import PipelineError
from pipeline.tracking.store import redact
from pipeline.training.model_checks import check_model_kwargs

SENTINEL = "Sentinel-pw-4711-xyz"  # the admin password of the server with logins; must never be printed
WRONG = "Wrong-sentinel-pw-0815"  # a password that is wrong; must never be printed either
SPEC = """name: t
data: {name: synthetic}
models: [lenet5]
train: {epochs: 1}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_error(result, *fragments):
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and SENTINEL not in output and WRONG not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        assert time.time() < deadline, f"{url} did not come up: " + log.read_text()[-3000:]
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(autouse=True)
def no_credentials_in_the_environment(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def login_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth` (infra/mlflow/start-server.sh) on SQLite, admin password SENTINEL."""
    home = tmp_path_factory.mktemp("login-server")
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{home / 'mlflow.db'}",
           "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{home / 'auth.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(home / "artifacts"), "MLFLOW_AUTH_CONFIG_PATH": str(home / "auth.ini"),
           "MLFLOW_AUTH_ADMIN_PASSWORD": SENTINEL, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
           "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = home / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(ROOT / "infra" / "mlflow" / "start-server.sh")], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process, log)
        yield port, home
    finally:
        stop(process)


@pytest.fixture(scope="module")
def not_mlflow(tmp_path_factory):
    """`python -m http.server`: / answers 404 to MLflow's API; /html/ answers it with an HTML page."""
    root = tmp_path_factory.mktemp("static")
    page = root / "html" / "api" / "2.0" / "mlflow" / "experiments" / "search"
    page.parent.mkdir(parents=True)
    page.write_text("<!doctype html><html><body>hello</body></html>")
    port = free_port()
    log = root / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                    "--directory", str(root)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/", process, log, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


# --- the tracking server ---------------------------------------------------------------------------------

def tracking_commands(tmp_path: Path) -> list[list[str]]:
    """Every command that reads or writes MLflow and takes --tracking-uri, as a user types it."""
    image = tmp_path / "shoe.png"
    if not image.exists():
        from PIL import Image

        Image.new("L", (28, 28)).save(image)
    return [["leaderboard", "-e", "fashion-mnist"], ["report", "-e", "fashion-mnist", "-o", str(tmp_path / "r")],
            ["register", "-e", "fashion-mnist"], ["predict", str(image), "--run", "0123456789abcdef"],
            ["ui", "--port", str(free_port())], ["rerun", "0123456789abcdef"]]


def spec_commands(tmp_path: Path) -> list[list[str]]:
    """The commands that take the tracking URI from the spec or $MLFLOW_TRACKING_URI."""
    (tmp_path / "spec.yaml").write_text(SPEC)
    return [["run", "spec.yaml"], ["run", "spec.yaml", "--dry-run"], ["status", "spec.yaml"],
            ["run", "spec.yaml", "--rerun", "lenet5"], ["run", "spec.yaml", "--address", f"http://127.0.0.1:{free_port()}"]]


def test_every_tracking_command_is_in_the_dead_server_test(tmp_path):
    import inspect

    from pipeline.cli.main import app

    takes_store = {(c.name or c.callback.__name__) for c in app.registered_commands
                   if {"tracking_uri", "spec"} & set(inspect.signature(c.callback).parameters)} - {"validate"}
    covered = {command[0] for command in tracking_commands(tmp_path) + spec_commands(tmp_path)}
    assert takes_store and takes_store <= covered, takes_store - covered


def test_nothing_listening_is_a_one_line_error_for_every_tracking_command(tmp_path):
    dead = f"http://admin:{SENTINEL}@127.0.0.1:{free_port()}"
    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    for command in tracking_commands(tmp_path):
        for how in ("option", "environment"):
            args = [*command, "--tracking-uri", dead] if how == "option" else command
            result = run_cli(*args, cwd=tmp_path, timeout=120, env={**fast, "MLFLOW_TRACKING_URI": dead}
                             if how == "environment" else fast)
            line = assert_one_line_error(result, "is unreachable", "http://admin:***@127.0.0.1")
            assert "no run" not in line  # predict used to blame the run id
    for command in spec_commands(tmp_path):
        for env in ({"MLFLOW_TRACKING_URI": dead}, {}):
            args = command if env else [*command, "--set", f"tracking.uri={dead}"]
            result = run_cli(*args, cwd=tmp_path, timeout=120, env={**fast, **env})
            if "--address" in command:  # refused before any server is asked: a job would show the password
                assert_one_line_error(result, "holds a password", "http://admin:***@127.0.0.1")
            else:
                assert_one_line_error(result, "is unreachable", "http://admin:***@127.0.0.1")
    assert not (tmp_path / "mlflow.db").exists()


def test_an_unexpected_error_prints_its_traceback_without_the_password(tmp_path):
    """A bug's traceback is kept (to report it) and goes through the same redaction as the one-line errors."""
    script = ("import sys; from pipeline.cli import main\n"
              f"def boom(): raise RuntimeError('failed at http://admin:{SENTINEL}@127.0.0.1:5000/api')\n"
              "main.app = boom; main.main()")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" in result.stderr, result.stderr
    assert SENTINEL not in result.stderr and "RuntimeError: failed at http://admin:***@127.0.0.1:5000" in result.stderr


def test_a_server_that_is_not_mlflow_is_named_as_such(tmp_path, not_mlflow):
    for uri in (not_mlflow, f"{not_mlflow}/html"):
        result = run_cli("leaderboard", "--tracking-uri", uri, cwd=tmp_path)
        assert_one_line_error(result, f"{uri} is not an MLflow tracking server")
    # `run` checks before it starts Ray (it used to fail 22 s later with a traceback).
    (tmp_path / "spec.yaml").write_text(SPEC)
    result = run_cli("run", "spec.yaml", "--set", f"tracking.uri={not_mlflow}", cwd=tmp_path, timeout=60)
    assert_one_line_error(result, "is not an MLflow tracking server")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_server_with_logins_asks_for_credentials_and_never_prints_the_password(tmp_path, login_server):
    port, _ = login_server
    for uri in (f"http://127.0.0.1:{port}", f"http://admin:{WRONG}@127.0.0.1:{port}"):
        for command in tracking_commands(tmp_path)[:2]:
            result = run_cli(*command, "--tracking-uri", uri, cwd=tmp_path)
            assert_one_line_error(result, "refused the request (HTTP 401)", "MLFLOW_TRACKING_USERNAME",
                                  "MLFLOW_TRACKING_PASSWORD")
    # The wrong password in the environment is refused the same way.
    result = run_cli("leaderboard", "--tracking-uri", f"http://127.0.0.1:{port}", cwd=tmp_path,
                     env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": WRONG})
    assert_one_line_error(result, "refused the request")


def test_credentials_in_the_uri_pass_the_check_and_are_redacted(tmp_path, login_server):
    from mlflow import MlflowClient

    port, _ = login_server
    uri = f"http://admin:{SENTINEL}@127.0.0.1:{port}"
    # The check lets the command through to MLflow (it used to call such a server unreachable) ...
    result = run_cli("leaderboard", "-e", "nope", "--tracking-uri", uri, cwd=tmp_path)
    assert_one_line_error(result, f"no experiment 'nope' in http://admin:***@127.0.0.1:{port}")
    # ... and a command that succeeds writes no password either: the report's links to the MLflow UI.
    client = MlflowClient(uri)
    experiment = client.create_experiment("logins")
    run = client.create_run(experiment, tags={"model": "lenet5", "stage": "train"})
    for key, value in {"top1_err": 9.5, "top5_err": 0.5, "top1": 90.5, "top5": 99.5}.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    result = run_cli("report", "-e", "logins", "-o", str(tmp_path / "report"), "--tracking-uri", uri, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert SENTINEL not in result.stdout + result.stderr
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs/{run.info.run_id}" in page
    for written in (tmp_path / "report").iterdir():
        assert SENTINEL.encode() not in written.read_bytes(), written


def test_redact_hides_passwords_in_uris_and_messages():
    assert redact("http://admin:s3cret@host:5000/x") == "http://admin:***@host:5000/x"
    assert redact("https://TOKEN@host") == "https://***@host"
    assert redact("postgresql://u:p@ss@db/mlflow") == "postgresql://u:***@db/mlflow"
    assert redact("request to http://a:b@h/api failed; see http://h2") == "request to http://a:***@h/api failed; see http://h2"
    for unchanged in ("http://127.0.0.1:5000", "sqlite:////tmp/a@b/mlflow.db", "mail me at a@b.c"):
        assert redact(unchanged) == unchanged


# --- the spec and its overrides ---------------------------------------------------------------------------

@pytest.mark.parametrize("override, fragments", [
    ("train.lr=[1", ["override 'train.lr=[1'", "'[1' is not valid YAML"]),
    ("train.lr=-1", ["override 'train.lr=-1': train.lr: Input should be greater than 0 (got -1)"]),
    ("models.lenet5.train.lr=0", ["override 'models.lenet5.train.lr=0': models[lenet5].train: lr: Input should be "
                                  "greater than 0"]),
])
def test_a_bad_override_is_named(tmp_path, override, fragments):
    (tmp_path / "spec.yaml").write_text(SPEC)
    assert_one_line_error(run_cli("validate", "spec.yaml", "--set", "train.epochs=2", "--set", override,
                                  cwd=tmp_path), *fragments)


def test_an_error_of_the_file_itself_names_the_file_not_an_override(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC.replace("epochs: 1", "epochs: 0"))
    line = assert_one_line_error(run_cli("validate", "spec.yaml", "--set", "train.lr=0.01", cwd=tmp_path),
                                 "spec.yaml: train.epochs: Input should be greater than or equal to 1")
    assert "override" not in line


def test_a_spec_that_is_not_utf8_or_is_a_folder(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(SPEC.replace("name: t", "name: t\ndescription: caf\xe9").encode("latin-1"))
    assert_one_line_error(run_cli("validate", "latin1.yaml", cwd=tmp_path), "latin1.yaml is not UTF-8", "0xe9")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "quick.yaml").write_text(SPEC)
    line = assert_one_line_error(run_cli("run", "specs", cwd=tmp_path), "spec specs is a folder", "quick.yaml")
    assert "not found" not in line


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: PIL reads the size before any data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_predict_refuses_huge_and_broken_images_by_name(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    files = {"bomb.png": png_header(15000, 15000),  # 225 megapixels: PIL's DecompressionBombError
             "big.png": png_header(10000, 10000),  # 100 megapixels: PIL only warns
             "notes.png": b"not an image at all\n"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    for name, fragment in (("bomb.png", "is too large"), ("big.png", "is too large"),
                           ("notes.png", "is not an image file")):
        result = run_cli("predict", name, "--run", "0123456789abcdef", "--tracking-uri", uri, cwd=tmp_path)
        assert_one_line_error(result, name, fragment)


@pytest.mark.parametrize("command", [["jobs"], ["logs", "job1"], ["stop", "job1"], ["run", "spec.yaml"]])
def test_a_ray_address_without_scheme_fails_at_once(tmp_path, command):
    (tmp_path / "spec.yaml").write_text(SPEC)
    # Ray took this for a GCS address and gave up on it after 40-50 s, with its C++ warnings and another message.
    result = run_cli(*command, "--address", "127.0.0.1:9", cwd=tmp_path, timeout=120)
    assert_one_line_error(result, "Ray address '127.0.0.1:9' has no scheme", "http://HOST:8265")


# --- model keyword arguments ------------------------------------------------------------------------------

def test_unknown_model_kwargs_are_refused_with_the_ones_the_model_takes():
    with pytest.raises(PipelineError, match=r"^model 'lenet5' takes no keyword argument 'bogus_kwarg'; "
                                            r"it takes: act_layer, drop_rate$"):
        check_model_kwargs("lenet5", {"drop_rate": 0.1, "bogus_kwarg": 1})
    with pytest.raises(PipelineError, match=r"model 'resnet18' takes no keyword argument 'drop_path'"
                                            r" \(did you mean drop_path_rate.*it takes: .*drop_block_rate"):
        check_model_kwargs("resnet18", {"drop_path": 0.1})
    with pytest.raises(PipelineError, match="kwargs.num_classes is set by the pipeline"):
        check_model_kwargs("resnet20", {"num_classes": 3})
    check_model_kwargs("resnet18", {"drop_path_rate": 0.1, "pretrained_cfg_overlay": {}})  # timm's builder takes it


def test_the_kwargs_of_every_shipped_spec_are_accepted():
    checked = 0
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        for entry in yaml.safe_load(path.read_text()).get("models") or []:
            if isinstance(entry, dict) and entry.get("kwargs"):
                check_model_kwargs(entry["name"], entry["kwargs"])
                checked += 1
    assert checked >= 5


@pytest.mark.parametrize("kwargs, fragments", [
    ("{depth: four}", ["kwargs.depth is 'four' (str), it takes int (default 12)", "fix kwargs.depth"]),
    ("{depth: 4, mlp_ratio: '2.0'}", ["kwargs.mlp_ratio is '2.0' (str), it takes int or float"]),
    ("{depth: 4, qkv_bias: 1}", ["kwargs.qkv_bias is 1 (int), it takes bool"]),
    ("{depth: 4, global_pool: mean}", ["kwargs.global_pool is 'mean'", "'avg'", "'token'"]),
])
def test_a_model_kwarg_of_the_wrong_type_fails_in_validate_and_before_the_run(tmp_path, kwargs, fragments):
    (tmp_path / "spec.yaml").write_text(SPEC.replace("models: [lenet5]", f"models: [{{name: vit_tiny_patch4_32, "
                                                                         f"kwargs: {kwargs}}}]"))
    for command in (["validate", "spec.yaml"], ["run", "spec.yaml"]):
        assert_one_line_error(run_cli(*command, cwd=tmp_path, timeout=120), "model 'vit_tiny_patch4_32'", *fragments)
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was tracked
    # The same types pass (an int for a float, a tuple as a list, a null where the model takes one).
    check_model_kwargs("vit_tiny_patch4_32", {"depth": 4, "mlp_ratio": 2, "img_size": [28, 28], "init_values": None,
                                              "global_pool": "avg", "qkv_bias": False})
    # A zoo model without annotations is checked by the type of its defaults.
    with pytest.raises(PipelineError, match=r"kwargs.stem_width is 16.5 \(float\), it takes int \(default 16\)"):
        check_model_kwargs("resnet20", {"stem_width": 16.5})


# --- bad input that used to end in a traceback ------------------------------------------------------------

def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 4) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for label, shade in zip(classes, (40, 200)):
            (root / split / label).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (12, 12), (shade + i,) * 3).save(root / split / label / f"{i}.png")


def image_folder_spec(tmp_path: Path, folder: str) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC.replace("data: {name: synthetic}", f"data: {{name: huggingface, path: "
                                                     f"{folder}, image_size: 16, in_chans: 3}}"))


def test_an_image_folder_with_a_file_that_is_not_an_image_names_the_file(tmp_path):
    write_image_folder(tmp_path / "pets")
    (tmp_path / "pets" / "train" / "dog" / "notes.png").write_bytes(b"not an image\n")
    from PIL import Image

    noise = io.BytesIO()
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(noise, "PNG")
    # Truncated: PIL opens it (the header is whole) and fails only when it decodes the pixels.
    (tmp_path / "pets" / "train" / "cat" / "cut.png").write_bytes(noise.getvalue()[:len(noise.getvalue()) // 2])
    image_folder_spec(tmp_path, "pets")
    env = {"PIPELINE_CACHE": str(tmp_path / "cache")}
    line = assert_one_line_error(run_cli("run", "spec.yaml", cwd=tmp_path, env=env, timeout=180),
                                 "is not an image it can read", "and 1 more of its 10 images", "remove or replace")
    assert "cut.png" in line or "notes.png" in line
    # The other file, named when the first is gone.
    first = "notes.png" if "notes.png" in line else "cut.png"
    next(tmp_path.glob(f"pets/train/*/{first}")).unlink()
    line = assert_one_line_error(run_cli("run", "spec.yaml", cwd=tmp_path, env=env, timeout=180), "is not an image")
    assert ({"cut.png", "notes.png"} - {first}).pop() in line and "more" not in line
    assert not (tmp_path / "mlflow.db").exists()


def test_skip_unreadable_leaves_the_files_out_with_a_count_and_keeps_every_label_with_its_image(tmp_path, capsys,
                                                                                                monkeypatch):
    from pipeline.data import load_splits
    from pipeline.spec.options import check_options
    from pipeline.spec.sections import DataConfig, TrainConfig

    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    write_image_folder(tmp_path / "pets", per_class=5)
    (tmp_path / "pets" / "train" / "cat" / "0.png").write_bytes(b"not an image\n")  # the first cat
    (tmp_path / "pets" / "train" / "dog" / "notes.png").write_bytes(b"not an image either\n")
    data = {"name": "huggingface", "path": str(tmp_path / "pets"), "image_size": 12, "in_chans": 3,
            "val_fraction": 0}
    with pytest.raises(PipelineError, match=r"and 1 more of its 11 images.*data.skip_unreadable: true"):
        load_splits(DataConfig(**data))
    splits = load_splits(DataConfig(**data, skip_unreadable=True))
    assert "left out 2 of its 11 images" in capsys.readouterr().out
    # Nine images: four cats (shades 41-44; 0.png was the one cut) and five dogs, each with its own label.
    assert len(splits.train.labels) == 9 and splits.train.classes == ["cat", "dog"]
    shades = splits.train.images[:, 0, 0, 0].tolist()
    assert sorted(zip(splits.train.labels.tolist(), shades)) == [(0, s) for s in range(41, 45)] + \
        [(1, s) for s in range(200, 205)]
    assert len(splits.test.labels) == 10  # the test split had nothing to leave out
    # Options that cannot apply are refused in one line: a streamed set, a set not read from files.
    with pytest.raises(PipelineError, match=r"data.skip_unreadable applies to in-memory data sets"):
        check_options(DataConfig(**data, skip_unreadable=True, streaming=True), TrainConfig())
    with pytest.raises(ValueError, match=r"data.skip_unreadable does not apply to data set 'fashion_mnist'"):
        DataConfig(name="fashion_mnist", skip_unreadable=True)


def test_an_image_folder_with_a_single_class_says_it_needs_two(tmp_path):
    write_image_folder(tmp_path / "lonely", classes=("cat",))
    image_folder_spec(tmp_path, "lonely")
    env = {"PIPELINE_CACHE": str(tmp_path / "cache")}
    for command in ("validate", "run"):
        if command == "validate":  # the spec itself is fine: it is the data that is wrong
            assert run_cli(command, "spec.yaml", cwd=tmp_path).returncode == 0
            continue
        line = assert_one_line_error(run_cli(command, "spec.yaml", cwd=tmp_path, env=env, timeout=180),
                                     "single class folder 'cat'", "at least two classes")
        assert "label column" not in line


def test_a_tracking_uri_with_an_unknown_scheme_is_named(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    for command in (["leaderboard", "--tracking-uri", "foo://x"], ["status", "spec.yaml", "--set", "tracking.uri=foo://x"],
                    ["run", "spec.yaml", "--set", "tracking.uri=foo://x"]):
        assert_one_line_error(run_cli(*command, cwd=tmp_path, timeout=120), "tracking URI foo://x has an unknown "
                              "scheme 'foo'", "sqlite:///PATH")


def test_a_tracking_store_that_is_not_a_database_is_named_and_left_as_it_is(tmp_path):
    garbage = tmp_path / "mlflow.db"
    content = secrets.token_bytes(4096)
    garbage.write_bytes(content)
    (tmp_path / "spec.yaml").write_text(SPEC)
    for command in (["run", "spec.yaml"], ["status", "spec.yaml"], ["leaderboard"]):
        assert_one_line_error(run_cli(*command, cwd=tmp_path, timeout=120), f"tracking database {garbage} is not a "
                              "readable SQLite database", "move the file away")
    assert garbage.read_bytes() == content


def test_report_out_naming_an_existing_file_is_refused_and_the_file_kept(tmp_path):
    from pipeline.tracking.store import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tracker.start_run(tracker.experiment_id("e"), "r", tags={"model": "lenet5", "stage": "train"},
                            metrics={"top1_err": 9.0, "top5_err": 1.0, "top1": 91.0, "top5": 99.0})
    tracker.finish(run)
    (tmp_path / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("report", "-e", "e", "--out", "notes.txt", cwd=tmp_path),
                          "report folder notes.txt is a file", "pass --out a folder")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert [r.data.tags.get("stage") for r in tracker.client.search_runs([tracker.experiment_id("e")])] == ["train"]


def test_a_rerun_pattern_that_matches_no_unit_is_named(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    for command in ("status", "run"):
        assert_one_line_error(run_cli(command, "spec.yaml", "--rerun", "train/lenet5", "--rerun", "resnet*",
                                      cwd=tmp_path, timeout=120),
                              "--rerun 'resnet*' matches no unit of the spec", "train/lenet5, leaderboard")
    assert run_cli("status", "spec.yaml", "--rerun", "lenet*", cwd=tmp_path).returncode == 0


def files_holding(root: Path, secret: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and secret in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue
    return found


def test_the_tracking_password_reaches_no_worker_log_no_store_and_no_job(tmp_path, login_server):
    """A training run against a server with logins: the password, given to the driver in its environment,
    appears in no file of the Ray session (its runtime-env agent logs every worker's environment), in no
    file of the tracking store or its artifacts, and in nothing printed; a job would not carry it."""
    port, home = login_server
    uri = f"http://127.0.0.1:{port}"
    spec = {"name": "secret", "data": {"name": "synthetic", "synthetic_size": 200}, "models": ["lenet5"],
            "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
            "resources": {"num_workers": 1, "max_failures": 0}, "stages": ["train", "leaderboard"],
            "storage_path": str(tmp_path / "checkpoints")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": SENTINEL,
           "RAY_ADDRESS": ""}
    started = time.time()
    result = run_cli("run", "spec.yaml", cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert SENTINEL not in result.stdout + result.stderr
    # The session the run used: the kept cluster's when one is up (the suite's), else the run's own.
    kept = warm_cluster.current()
    session = (Path(kept["temp"]) if kept else Path("/tmp/ray")).joinpath("session_latest").resolve()
    assert any(log.stat().st_mtime >= started for log in (session / "logs").iterdir())  # written by this run
    assert files_holding(session, SENTINEL.encode()) == []
    assert files_holding(home / "artifacts", SENTINEL.encode()) == []
    assert SENTINEL.encode() not in (home / "mlflow.db").read_bytes()
    assert files_holding(tmp_path / "checkpoints", SENTINEL.encode()) == []
    # Submitting it as a Ray Job with the password inside the URI is refused before anything is sent.
    withheld = run_cli("run", "spec.yaml", "--address", "http://127.0.0.1:9",
                       "--set", f"tracking.uri=http://admin:{SENTINEL}@127.0.0.1:{port}", cwd=tmp_path)
    assert withheld.returncode == 2 and "holds a password" in withheld.stderr
    assert SENTINEL not in withheld.stdout + withheld.stderr
