"""docker-compose.yaml and deploy/ checked statically (Docker does not run here).

It parses; every `continuum …` command is a real CLI command with real options; every variable set for
our containers is a real setting (or AWS_*); images build from files that exist; exactly one beat; the
GPU worker reserves an NVIDIA device; Redis keeps jobs (append-only, noeviction); the example secrets
are refused by the app.
"""

from __future__ import annotations

import plistlib
import re
from pathlib import Path

import pytest
import yaml

from common.errors import ConfigError
from tests.support.deploy_checks import (
    CommandProblems,
    as_argv,
    continuum_cli,
    environment_dict,
    interpolate_tree,
    parse_env_file,
    required_variables,
    resolve_command,
    unknown_variables,
)

REPO = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (REPO / "docker-compose.yaml").read_text(encoding="utf-8")
# Parsed once, interpolated per test: compose interpolates values after parsing (comments untouched).
COMPOSE_RAW = yaml.safe_load(COMPOSE_TEXT)
EXAMPLE_ENV = parse_env_file((REPO / ".env.example").read_text(encoding="utf-8"))
# Values a careful operator would put in .env: none is a known default.
STRONG_ENV = {
    "POSTGRES_PASSWORD": "pg-Xq7rT2vLm9",
    "REDIS_PASSWORD": "rd-Kp3sW8nZc1",
    "MINIO_ROOT_USER": "continuum-ops",
    "MINIO_ROOT_PASSWORD": "s3-Hv6yB4jQe0",
    "S3_BUCKET": "continuum",
    "FLOWER_BASIC_AUTH": "ops:fl-Ga5uN1xRd8",
}


def compose(env: dict[str, str] | None = None) -> dict:
    """The compose model after interpolation, as `docker compose config` would see it."""
    return interpolate_tree(COMPOSE_RAW, STRONG_ENV if env is None else env)


def services() -> dict[str, dict]:
    return compose()["services"]


def continuum_services() -> dict[str, dict]:
    """Services that run our image (everything built here or tagged continuum:*)."""
    return {
        name: svc
        for name, svc in services().items()
        if "build" in svc or str(svc.get("image", "")).startswith("continuum:")
    }


def cli_path(argv: list[str]) -> list[str]:
    """`continuum worker -Q io` → ["worker"]: the command words before the first option."""
    words = []
    for arg in argv[1:]:
        if arg.startswith("-"):
            break
        words.append(arg)
    return words


def test_compose_parses_and_has_the_stack():
    names = set(services())
    expected = {"postgres", "redis", "minio", "create-bucket", "migrate", "worker-cpu", "worker-cuda", "beat", "flower"}
    assert expected <= names, f"missing services: {sorted(expected - names)}"
    assert set(compose()["volumes"]) >= {"postgres-data", "redis-data", "minio-data"}


def test_every_continuum_command_is_a_real_cli_command_with_real_options():
    root = continuum_cli()
    problems = CommandProblems()
    for name, svc in continuum_services().items():
        argv = as_argv(svc.get("command"))
        assert argv[:1] == ["continuum"], f"service {name} runs {argv!r}, not a continuum command"
        resolve_command(argv, f"docker-compose service {name}", problems, root)
    assert not problems, "compose runs commands the CLI does not have (yet):\n" + str(problems)


def test_every_variable_set_for_our_containers_is_a_setting():
    for name, svc in continuum_services().items():
        env = environment_dict(svc.get("environment"))
        assert env.get("CONTINUUM_MODE") == "distributed", name
        assert not unknown_variables(set(env)), f"service {name} sets unknown variables: {unknown_variables(set(env))}"


def test_exactly_one_beat_and_the_one_shots():
    runs = {name: cli_path(as_argv(svc.get("command"))) for name, svc in continuum_services().items()}
    beats = [name for name, path in runs.items() if path == ["beat"]]
    assert beats == ["beat"], f"exactly one beat service expected, found {beats}"
    assert services()["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert runs["migrate"] == ["db", "upgrade"]
    assert services()["migrate"]["restart"] == "no"
    bucket = " ".join(as_argv(services()["create-bucket"].get("entrypoint")))
    assert services()["create-bucket"]["image"].startswith("minio/mc") and "mc mb --ignore-existing" in bucket
    assert runs["worker-cpu"] == ["worker"] and "io,cpu" in as_argv(services()["worker-cpu"]["command"])
    assert runs["flower"] == ["flower"]


def test_gpu_profile_reserves_an_nvidia_device():
    gpu = {name: svc for name, svc in services().items() if "gpu" in svc.get("profiles", [])}
    assert list(gpu) == ["worker-cuda"]
    devices = gpu["worker-cuda"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert "cuda" in as_argv(gpu["worker-cuda"]["command"])
    # Services outside the profile never ask for a GPU (they must start on a machine without one).
    for name, svc in services().items():
        if name not in gpu:
            assert "reservations" not in svc.get("deploy", {}).get("resources", {}), name


def test_redis_keeps_jobs_append_only_and_never_evicts():
    argv = as_argv(services()["redis"]["command"])
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--requirepass" in argv


def test_health_checks_and_depends_on_conditions():
    svcs = services()
    for name in ("postgres", "redis", "minio", "flower"):
        assert "test" in svcs[name].get("healthcheck", {}), f"{name} needs a healthcheck"
    one_shots = {name for name, svc in svcs.items() if svc.get("restart") == "no"}
    assert one_shots == {"create-bucket", "migrate"}
    for name, svc in svcs.items():
        for target, spec in (svc.get("depends_on") or {}).items():
            assert target in svcs, f"{name} depends on unknown service {target}"
            if target in one_shots:
                expected = "service_completed_successfully"
            else:
                assert "healthcheck" in svcs[target], f"{name} waits for {target}, which has no healthcheck"
                expected = "service_healthy"
            assert spec.get("condition") == expected, f"{name} → {target}: condition should be {expected}"
    for name in ("worker-cpu", "worker-cuda", "beat", "flower"):
        assert svcs[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert svcs["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_flower_has_basic_auth_and_only_loopback_ports():
    env = environment_dict(services()["flower"]["environment"])
    assert env["CONTINUUM_FLOWER_BASIC_AUTH"] == STRONG_ENV["FLOWER_BASIC_AUTH"]
    for name, svc in services().items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_secrets_come_from_env_and_compose_refuses_to_start_without_them():
    required = required_variables(COMPOSE_RAW)
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "FLOWER_BASIC_AUTH"} <= required
    assert required <= set(EXAMPLE_ENV), f".env.example lacks {sorted(required - set(EXAMPLE_ENV))}"
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        compose({k: v for k, v in STRONG_ENV.items() if k != "POSTGRES_PASSWORD"})
    for key in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "FLOWER_BASIC_AUTH"):
        assert STRONG_ENV[key] not in COMPOSE_TEXT and EXAMPLE_ENV[key] not in COMPOSE_TEXT, key
    gitignore = (REPO / ".gitignore").read_text(encoding="utf-8").split()
    assert ".env" in gitignore


def _settings_from(env: dict[str, str], monkeypatch):
    from common.settings import load_settings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


@pytest.mark.parametrize("service", ["worker-cpu", "flower"])
def test_the_example_secrets_are_refused_and_real_ones_accepted(service, monkeypatch):
    example = environment_dict(compose(EXAMPLE_ENV)["services"][service]["environment"])
    with pytest.raises(ConfigError) as refused:
        _settings_from(example, monkeypatch).check()
    assert "database password" in str(refused.value) and "S3 secret key" in str(refused.value)
    if service == "flower":
        with pytest.raises(ConfigError, match="FLOWER_BASIC_AUTH"):
            _settings_from(example, monkeypatch).check_flower_auth()

    strong = environment_dict(compose()["services"][service]["environment"])
    settings = _settings_from(strong, monkeypatch).check()
    assert settings.resolved_storage_url == "s3://continuum/continuum"
    if service == "flower":
        assert settings.check_flower_auth() == STRONG_ENV["FLOWER_BASIC_AUTH"]


def _dockerfile_problems(dockerfile: Path, context: Path) -> list[str]:
    problems = []
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            for source in words[1:-1]:
                if not source.startswith("--") and not (context / source).exists():
                    problems.append(f"{dockerfile.name}: COPY source {source} does not exist")
    return problems


def test_images_build_from_files_that_exist():
    dockerfiles = set()
    for name, svc in services().items():
        build = svc.get("build")
        if build is None:
            continue
        context = (REPO / build["context"]).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        assert not _dockerfile_problems(dockerfile, context), _dockerfile_problems(dockerfile, context)
        dockerfiles.add(dockerfile.relative_to(REPO).as_posix())
    assert dockerfiles == {"deploy/Dockerfile", "deploy/Dockerfile.cuda"}
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".env", ".git"} <= set(ignored), "the build context must not carry the venv or secrets"


def _pip_installs(dockerfile: str) -> list[str]:
    return [line.strip() for line in dockerfile.splitlines() if "pip install" in line]


def test_cpu_image_installs_the_pinned_cpu_torch_before_anything_else():
    text = (REPO / "deploy/Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    installs = _pip_installs(text)
    assert "torch==2.13.0" in installs[0] and "download.pytorch.org/whl/cpu" in installs[0], installs


def test_cuda_image_has_a_cuda_base_and_bitsandbytes():
    text = (REPO / "deploy/Dockerfile.cuda").read_text(encoding="utf-8")
    assert re.search(r"^ARG CUDA_IMAGE=(nvidia/cuda|pytorch/pytorch):", text, re.M)
    installs = _pip_installs(text)
    assert "torch==2.13.0" in installs[0], installs
    assert any(".[cuda]" in line for line in installs), installs
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^cuda = \[.*"bitsandbytes', pyproject, re.M)


# --- Apple-Silicon launchd agent -------------------------------------------------------------------


def test_launchd_plist_runs_a_native_mps_worker():
    plist = plistlib.loads((REPO / "deploy/macos/com.continuum.worker.plist").read_bytes())
    program, *args = plist["ProgramArguments"]
    wrapper = REPO / "deploy/macos" / Path(program).name
    assert wrapper.is_file() and wrapper.stat().st_mode & 0o111, f"{wrapper} must exist and be executable"
    assert args == ["worker", "--device", "mps"]
    problems = CommandProblems()
    resolve_command(["continuum", *args], "launchd plist", problems)
    assert not problems, str(problems)
    assert plist["KeepAlive"] is True and plist["RunAtLoad"] is True
    # Secrets stay out of the plist: no CONTINUUM_* variable is set there.
    assert not [k for k in plist.get("EnvironmentVariables", {}) if k.startswith("CONTINUUM_")]
    worker_env = parse_env_file((REPO / "deploy/macos/worker.env.example").read_text(encoding="utf-8"))
    assert not unknown_variables(set(worker_env)), unknown_variables(set(worker_env))
    assert (REPO / "deploy/macos/README.md").is_file()


# --- Kubernetes example ----------------------------------------------------------------------------


def k8s_objects() -> list[dict]:
    docs = []
    for path in sorted((REPO / "deploy/k8s").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


def _by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in k8s_objects() if doc["kind"] == kind}


def _pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def test_k8s_commands_and_variables_are_real():
    root = continuum_cli()
    problems = CommandProblems()
    workloads = {**_by_kind("Deployment"), **_by_kind("Job")}
    for name, obj in workloads.items():
        for container in _pod_spec(obj)["containers"]:
            resolve_command(as_argv(container["command"]), f"k8s {name}", problems, root)
            names = {env["name"] for env in container.get("env", [])}
            assert not unknown_variables(names), f"{name}: {unknown_variables(names)}"
            refs = {ref.get("secretRef", ref.get("configMapRef", {})).get("name") for ref in container["envFrom"]}
            assert refs == {"continuum-secrets", "continuum-settings"}, name
    assert not problems, "k8s manifests run commands the CLI does not have (yet):\n" + str(problems)
    configmap = _by_kind("ConfigMap")["continuum-settings"]["data"]
    secret = _by_kind("Secret")["continuum-secrets"]["stringData"]
    assert not unknown_variables(set(configmap) | set(secret))


def test_keda_scales_the_cuda_workers_on_the_cuda_queue_length():
    scaled = _by_kind("ScaledObject")["continuum-worker-cuda"]["spec"]
    worker = _by_kind("Deployment")[scaled["scaleTargetRef"]["name"]]
    container = _pod_spec(worker)["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "cuda" in as_argv(container["command"])
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == "cuda"
    auth = _by_kind("TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    secret_ref = auth["spec"]["secretTargetRef"][0]
    assert secret_ref["key"] in _by_kind("Secret")[secret_ref["name"]]["stringData"]


def test_k8s_runs_exactly_one_beat():
    beats = [
        obj
        for obj in _by_kind("Deployment").values()
        if cli_path(as_argv(_pod_spec(obj)["containers"][0]["command"])) == ["beat"]
    ]
    assert len(beats) == 1
    assert beats[0]["spec"]["replicas"] == 1 and beats[0]["spec"]["strategy"]["type"] == "Recreate"
