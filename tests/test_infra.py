"""Static and fast functional checks of the deployment files under infra/.

The end-to-end check of infra/mlflow/run-local.sh (PostgreSQL + MLflow basic auth) starts real
servers; it runs only with INFRA_E2E=1.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
import yaml

from pipeline.spec.loading import load_spec

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
MLFLOW = INFRA / "mlflow"
LAUNCHER = INFRA / "cluster-launcher" / "aws.yaml"
DOCKERFILE = INFRA / "docker" / "Dockerfile"

YAML_FILES = sorted(p for ext in ("*.yaml", "*.yml") for p in INFRA.rglob(ext))
SHELL_SCRIPTS = sorted(INFRA.rglob("*.sh"))


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects(directory: Path) -> list[dict]:
    return [d for p in sorted(directory.rglob("*.yaml")) for d in load_docs(p) if "kind" in d]


def one(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pinned(requirement_name: str) -> str:
    pyproject = (ROOT / "pyproject.toml").read_text()
    m = re.search(rf'"{requirement_name}\s*==\s*([\w.]+)"', pyproject)
    assert m, f"{requirement_name} is not pinned in pyproject.toml"
    return m.group(1)


# --- every file -------------------------------------------------------------------------------


def test_infra_has_the_expected_pieces():
    for rel in [
        "README.md",
        "docker/Dockerfile",
        "docker/README.md",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/README.md",
        "cluster-launcher/aws.yaml",
        "cluster-launcher/README.md",
        "mlflow/docker-compose.yaml",
        "mlflow/run-local.sh",
        "mlflow/README.md",
    ]:
        assert (INFRA / rel).is_file(), rel
    assert len(YAML_FILES) >= 8


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_yaml_parses(path):
    docs = load_docs(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(INFRA)))
def test_shell_scripts_are_valid_and_executable(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(path, os.X_OK), f"{path} is not executable"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")


def test_there_are_shell_scripts():
    names = {p.name for p in SHELL_SCRIPTS}
    assert {"run-local.sh", "start-server.sh"} <= names


# --- KubeRay ----------------------------------------------------------------------------------


def ray_containers(cluster_spec: dict):
    yield cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    for group in cluster_spec["workerGroupSpecs"]:
        yield group["template"]["spec"]["containers"][0]


def check_ray_cluster_spec(spec: dict, pvc_name: str) -> None:
    assert spec["rayVersion"].startswith("2.60")
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    head_container = head["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {})
    assert 8265 in {p["containerPort"] for p in head_container["ports"]}

    gpu_groups = [
        g
        for g in spec["workerGroupSpecs"]
        if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        > 0
    ]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    for g in gpu_groups:
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
        assert g["maxReplicas"] > g["minReplicas"], "GPU group cannot autoscale"

    images = set()
    pod_specs = [head["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pod_specs:
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        container = pod["containers"][0]
        images.add(container["image"])
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert claims.get(mounts.get("/mnt/shared")) == pvc_name, "/mnt/shared is not the shared PVC"
        env = {e["name"]: e for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert "secretKeyRef" in env[key]["valueFrom"], f"{key} must come from a Secret"
    assert len(images) == 1, f"head and workers run different images: {images}"


def test_kuberay_manifests():
    objs = k8s_objects(KUBERAY)
    pvc = one(objs, "PersistentVolumeClaim")
    assert pvc["apiVersion"] == "v1"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pvc_name = pvc["metadata"]["name"]

    cluster = one(objs, "RayCluster")
    job = one(objs, "RayJob")
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    check_ray_cluster_spec(cluster["spec"], pvc_name)
    check_ray_cluster_spec(job["spec"]["rayClusterSpec"], pvc_name)

    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    assert "auth_token" in secrets[cluster["spec"]["authOptions"]["secretName"]]["stringData"]
    env = {e["name"]: e for e in next(ray_containers(cluster["spec"]))["env"]}
    ref = env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] in secrets[ref["name"]]["stringData"]


def test_rayjob_runs_the_pipeline_cli():
    job = one(k8s_objects(KUBERAY), "RayJob")
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint.startswith("pipeline run ")
    spec_path = entrypoint.split()[2]
    assert spec_path.startswith("experiments/") and spec_path.endswith(".yaml")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    # The units ask for the accelerators the cluster has: every worker fits one GPU pod of a worker group.
    words = shlex.split(entrypoint)
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    spec = load_spec(ROOT / spec_path, overrides)
    pods = [g["template"]["spec"]["containers"][0]["resources"]["limits"]
            for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    for entry in spec.models:
        resources = spec.resources_for(entry)
        assert resources.gpus_per_worker >= 1, entry.name
        assert any(int(pod.get("nvidia.com/gpu", 0)) >= resources.gpus_per_worker
                   and float(pod["cpu"]) >= resources.cpus_per_worker for pod in pods), entry.name
        groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        assert resources.num_workers <= sum(g["maxReplicas"] for g in groups), entry.name


def test_the_image_holds_the_data_the_rayjob_trains_on_and_its_entrypoint_runs_on_that_layout(tmp_path):
    """The RayJob's spec reads Fashion-MNIST: the image recipe copies it to the folder its $FASHION_MNIST_DIR
    names, no manifest points elsewhere, and the entrypoint command trains on that layout (here, one small
    model on CPU: the same command with the cluster's GPU requests overridden)."""
    ins = dockerfile_instructions(DOCKERFILE)
    env = dict(a.split("=", 1) for op, a in ins if op == "ENV" and "=" in a and " " not in a)
    copied = [a.split()[-2:] for op, a in ins if op == "COPY" and "fashion-mnist" in a]
    assert copied and copied[0][1].rstrip("/") == env["FASHION_MNIST_DIR"]
    source = copied[0][0].rstrip("/")
    fetch = INFRA / "docker" / "fetch-fashion-mnist.sh"
    assert fetch.read_text().count(Path(source).name) >= 1
    for obj in (one(k8s_objects(KUBERAY), "RayJob")["spec"]["rayClusterSpec"], one(k8s_objects(KUBERAY), "RayCluster")["spec"]):
        for container in ray_containers(obj):
            paths = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert paths.get("FASHION_MNIST_DIR", env["FASHION_MNIST_DIR"]) == env["FASHION_MNIST_DIR"]

    image_root = tmp_path / "image"
    layout = image_root / env["FASHION_MNIST_DIR"].lstrip("/")
    filled = subprocess.run([str(fetch), str(layout)], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "FASHION_MNIST_DIR"})
    assert filled.returncode == 0, filled.stderr
    assert sorted(p.name for p in layout.iterdir()) == sorted(
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"])
    words = shlex.split(one(k8s_objects(KUBERAY), "RayJob")["spec"]["entrypoint"])
    assert words[:2] == ["pipeline", "run"]
    work = tmp_path / "work"
    shutil.copytree(ROOT / "experiments", work / "experiments")
    local = ["--model", "lenet5", "--set", "resources.gpus_per_worker=0", "--set", "resources.num_workers=1",
             "--set", "resources.cpus_per_worker=1", "--set", "models.lenet5.train.epochs=1",
             "--set", "data.limit_train=600", "--set", "data.limit_test=200",
             "--set", f"storage_path={tmp_path / 'checkpoints'}", "--set", "tracking.uri=sqlite:///mlflow.db"]
    result = subprocess.run([sys.executable, "-m", "pipeline", *words[1:], *local], cwd=work, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "FASHION_MNIST_DIR": str(layout),
                                                         "RAY_ADDRESS": "", "PIPELINE_STORAGE_PATH": ""})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "train/lenet5 test: top-1" in result.stdout


# --- Ray cluster launcher ---------------------------------------------------------------------


def validate_launcher(config: dict) -> dict:
    """What `ray up` does before touching the cloud: fill defaults, then schema-validate."""
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_config_passes_ray_schema():
    config = yaml.safe_load(LAUNCHER.read_text())
    assert config["provider"]["type"] == "aws"
    prepared = validate_launcher(config)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(t["max_workers"] > t.get("min_workers", 0) for t in gpu_types)
    assert types[prepared["head_node_type"]]["resources"].get("GPU", 0) == 0


def test_launcher_installs_project_and_enables_token_auth():
    config = yaml.safe_load(LAUNCHER.read_text())
    remote_repo = next(k for k, v in config["file_mounts"].items() if v == ".")
    assert "~/.ray/auth_token" in config["file_mounts"]
    setup = "\n".join(config["setup_commands"])
    assert f"torch=={pinned('torch')}" in setup
    assert f"torchvision=={pinned('torchvision')}" in setup
    assert re.search(rf"install .*-e {re.escape(remote_repo)}\b", setup)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = "\n".join(config[key])
        assert "RAY_AUTH_MODE=token" in start and "ray start" in start


def test_launcher_commands_are_valid_bash():
    config = yaml.safe_load(LAUNCHER.read_text())
    keys = [k for k in config if k.endswith("_commands")]
    assert {"setup_commands", "head_start_ray_commands", "worker_start_ray_commands"} <= set(keys)
    for key in keys:
        for command in config[key]:
            result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
            assert result.returncode == 0, f"{key}: {command}\n{result.stderr}"


@pytest.mark.parametrize(
    "breakage",
    ["unknown_top_level_key", "node_type_without_node_config", "gpu_count_as_string", "no_provider"],
)
def test_launcher_schema_check_rejects_broken_copies(breakage):
    import jsonschema

    config = yaml.safe_load(LAUNCHER.read_text())
    types = config["available_node_types"]
    gpu = next(name for name, t in types.items() if t["resources"].get("GPU"))
    if breakage == "unknown_top_level_key":
        config["head_node_instance"] = "m6i.2xlarge"
    elif breakage == "node_type_without_node_config":
        del types[gpu]["node_config"]
    elif breakage == "gpu_count_as_string":
        types[gpu]["resources"]["GPU"] = "1"
    elif breakage == "no_provider":
        config["provider"] = "aws"
    with pytest.raises((jsonschema.ValidationError, ValueError, TypeError, AttributeError)):
        validate_launcher(config)


# --- container image --------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_installs_the_project():
    ins = dockerfile_instructions(DOCKERFILE)
    ops = [op for op, _ in ins]
    assert set(ops[: ops.index("FROM")]) <= {"ARG"}, "only ARG may precede FROM"
    args = dict(a.split("=", 1) for op, a in ins if op == "ARG" and "=" in a)
    base = next(a for op, a in ins if op == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"(rayproject/ray:2\.60\.\d+-py311(-gpu|-cpu)?|python:3\.11\S*)", base), base

    runs = [a for op, a in ins if op == "RUN"]
    assert any(
        f"torch=={pinned('torch')}" in r and f"torchvision=={pinned('torchvision')}" in r for r in runs
    )
    copy_at = next(i for i, (op, a) in enumerate(ins) if op == "COPY" and a.split()[-2:] == [".", "."])
    install_at = next(
        i for i, (op, a) in enumerate(ins) if op == "RUN" and re.search(r"pip install (-e )?\.(\s|$)", a)
    )
    assert copy_at < install_at, "the project is installed before it is copied in"
    assert any(op == "WORKDIR" for op, _ in ins[:copy_at])


def test_dockerignore_keeps_the_sources():
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert "**/.venv" in ignore and "**/.git" in ignore
    for needed in ("pipeline", "models", "experiments", "pyproject.toml", "README.md"):
        assert not any(p.strip("/") in (needed, "*", "**") for p in ignore), needed


# --- MLflow server ----------------------------------------------------------------------------


def test_mlflow_kubernetes_manifests():
    objs = k8s_objects(MLFLOW / "k8s")
    deploy = one(objs, "Deployment")
    service = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "mlflow")
    one(objs, "StatefulSet")
    secret = one(objs, "Secret")
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert env["MLFLOW_AUTH_DATABASE_URI"].startswith("postgresql+psycopg://")
    assert "MLFLOW_ARTIFACTS_DESTINATION" in env
    assert container["envFrom"][0]["secretRef"]["name"] == secret["metadata"]["name"]
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "POSTGRES_PASSWORD"):
        assert key in secret["stringData"]
    # The Ray manifests point at this service.
    ray_cluster = one(k8s_objects(KUBERAY), "RayCluster")
    ray_env = {e["name"]: e for e in next(ray_containers(ray_cluster["spec"]))["env"]}
    ns = deploy["metadata"]["namespace"]
    assert f"//{service['metadata']['name']}.{ns}.svc" in ray_env["MLFLOW_TRACKING_URI"]["value"]


def test_mlflow_compose():
    compose = yaml.safe_load((MLFLOW / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    env = services["mlflow"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert "postgres" in services["mlflow"]["depends_on"]
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert key in env
    image = (MLFLOW / "Dockerfile").read_text()
    assert "mlflow[auth]" in image and "psycopg[binary]" in image


def run_start_server(tmp_path: Path, env_overrides: dict) -> subprocess.CompletedProcess:
    """Run start-server.sh with a stand-in `mlflow` that reports its arguments and auth config."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mlflow"
    fake.write_text('#!/usr/bin/env bash\necho "ARGS $*"\ncat "$MLFLOW_AUTH_CONFIG_PATH"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path), **env_overrides}
    return subprocess.run(
        ["bash", str(MLFLOW / "start-server.sh")], env=env, capture_output=True, text=True, timeout=10
    )


SERVER_ENV = {
    "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg://u:p@db:5432/mlflow",
    "MLFLOW_AUTH_DATABASE_URI": "postgresql+psycopg://u:p@db:5432/mlflow_auth",
    "MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "pw",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
}


def test_start_server_writes_auth_config_and_starts_basic_auth(tmp_path):
    result = run_start_server(tmp_path, SERVER_ENV)
    assert result.returncode == 0, result.stderr
    args = result.stdout.splitlines()[0]
    assert args.startswith("ARGS server ")
    assert "--app-name basic-auth" in args
    assert "--backend-store-uri postgresql+psycopg://u:p@db:5432/mlflow " in args
    assert "--artifacts-destination s3://bucket" in args
    assert "database_uri = postgresql+psycopg://u:p@db:5432/mlflow_auth" in result.stdout
    assert "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" in result.stdout


@pytest.mark.parametrize("missing", ["MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"])
def test_start_server_refuses_to_start_without_secrets(tmp_path, missing):
    env = {k: v for k, v in SERVER_ENV.items() if k != missing}
    result = run_start_server(tmp_path, env)
    assert result.returncode != 0
    assert "ARGS" not in result.stdout
    assert missing in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("INFRA_E2E") != "1", reason="set INFRA_E2E=1 to start real servers")
def test_run_local_serves_mlflow_with_logins():
    if not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("PostgreSQL is not installed")
    if shutil.which("mlflow", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}") is None:
        pytest.skip("mlflow is not installed")
    # PostgreSQL runs as user postgres when the tests run as root: it needs a path it can reach.
    tmp_path = Path(tempfile.mkdtemp(prefix="mlflow-e2e-"))
    tmp_path.chmod(0o755)
    home = tmp_path / "server"
    pg_port, port = free_port(), free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_SERVER_HOME": str(home),
        "PGPORT": str(pg_port),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_AUTH_ADMIN_PASSWORD": "e2e-Admin-pw1",
    }
    script = str(MLFLOW / "run-local.sh")
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([script], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def status(path, auth=None):
        req = urllib.request.Request(base + path)
        if auth:
            req.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
        try:
            return urllib.request.urlopen(req, timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if status("/health") == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        api = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert status(api) == 401
        assert status(api, "admin:e2e-Admin-pw1") == 200
        assert status(api, "admin:wrong") == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=60)
        log.close()
        shutil.rmtree(tmp_path, ignore_errors=True)
