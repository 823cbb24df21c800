"""The deployment files (deploy/) against the code they run: commands and options
the CLI accepts, settings vidstyle reads, and what the fleet relies on (a GPU per
worker, the queue KEDA watches, a durable Redis, stop timeouts that let a job end)."""
from __future__ import annotations

import configparser
import json
import re
import runpy
import shlex
from pathlib import Path

import click
import yaml

from vidstyle.cli import cli
from vidstyle.settings import DECLARED
from vidstyle.workers.jobs import DEFAULT_QUEUE

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "vidstyle-worker@.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "worker.env.example"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def compose_workers() -> dict[str, dict]:
    return {name: service for name, service in compose()["services"].items() if name.startswith("worker")}


def k8s_objects() -> list[dict]:
    return [doc for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s(kind: str, name: str) -> dict:
    [found] = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(UNIT)
    return parser


def env_example() -> dict[str, str]:
    """The KEY=VALUE lines that are not commented out."""
    lines = (line.strip() for line in ENV_EXAMPLE.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def split_shell(text: str) -> list[list[str]]:
    """The commands of a shell line, without sudo or leading VAR=value."""
    commands, argv = [], []
    for token in [*shlex.split(text, comments=True), "&&"]:
        if token in ("&&", "||", "|", ";"):
            while argv and (argv[0] == "sudo" or re.fullmatch(r"\w+=\S*", argv[0])):
                argv.pop(0)
            commands += [argv] if argv else []
            argv = []
        else:
            argv.append(token)
    return commands


def commands() -> list[tuple[str, list[str]]]:
    """(file name, argv) of every command a deploy file runs or the README or a docs/ page shows."""
    found = []
    for line in re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text()).splitlines():
        instruction, _, rest = line.partition(" ")
        if instruction in ("CMD", "ENTRYPOINT"):
            found.append(("Dockerfile", json.loads(rest)))
        elif instruction == "RUN":
            found += [("Dockerfile", argv) for argv in split_shell(rest)]
    for service in compose()["services"].values():
        argv = []
        for key in ("entrypoint", "command"):
            value = service.get(key, [])
            argv += shlex.split(value) if isinstance(value, str) else value
        found += [("docker-compose.yml", argv)] if argv else []
    for obj in k8s_objects():
        for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            argv = [*container.get("command", []), *container.get("args", [])]
            found += [(obj["kind"] + "/" + obj["metadata"]["name"], argv)] if argv else []
    # In a unit file %% is a literal % and %i the instance (a GPU index).
    exec_start = re.sub(r"%[%i]", lambda m: {"%%": "%", "%i": "0"}[m[0]], unit()["Service"]["ExecStart"])
    found.append((UNIT.name, shlex.split(exec_start)))
    for page in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        name, text = str(page.relative_to(ROOT)), page.read_text()
        for block in re.findall(r"```sh\n(.*?)```", text, re.S):
            for line in re.sub(r"\\\n", " ", block).splitlines():
                found += [(name, argv) for argv in split_shell(line)]
        found += [(name, argv) for span in re.findall(r"`((?:vidstyle|celery) [^`]*)`", text)
                  for argv in split_shell(span)]
    return found


def program(name: str) -> list[tuple[str, list[str]]]:
    return [(where, argv) for where, argv in commands() if Path(argv[0]).name == name]


def test_every_vidstyle_command_and_option_exists_in_the_cli():
    runs = program("vidstyle")
    assert {where for where, _ in runs} >= {"Dockerfile", "docker-compose.yml", UNIT.name,
                                             "Deployment/vidstyle-worker", "README.md"}
    for where, argv in runs:
        assert len(argv) > 1, f"{where}: `vidstyle` without a command"
        command, depth = cli, 1
        while isinstance(command, click.Group):  # `vidstyle eval quality`: down to the subcommand
            name = argv[depth]
            command = command.get_command(click.Context(command), name)
            assert command is not None, f"{where}: `{shlex.join(argv[:depth + 1])}` is not a command"
            depth += 1
        accepted = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
        unknown = [arg for arg in argv[depth:] if arg.startswith("-") and arg.split("=")[0] not in accepted]
        assert not unknown, f"{where}: `{shlex.join(argv[:depth])}` does not accept {unknown}"


def test_celery_commands_load_the_vidstyle_app_or_run_flower():
    runs = program("celery")
    assert runs
    for where, argv in runs:
        loads_app = re.search(r"(^| )(-A|--app)[ =]vidstyle\.workers( |$)", shlex.join(argv[1:]))
        subcommand = next(arg for arg in argv[1:] if not arg.startswith("-"))
        assert loads_app or subcommand == "flower", f"{where}: `{shlex.join(argv)}` runs neither -A vidstyle.workers nor flower"


def test_every_vidstyle_setting_named_in_deploy_is_one_vidstyle_reads():
    read = set(DECLARED)
    assert {"VIDSTYLE_BROKER_URL", "VIDSTYLE_STORAGE", "VIDSTYLE_STYLES_PATH"} <= read
    for path in (p for p in DEPLOY.rglob("*") if p.is_file()):
        unknown = set(re.findall(r"\bVIDSTYLE_[A-Z0-9_]+", path.read_text())) - read
        assert not unknown, f"{path.relative_to(ROOT)} names settings vidstyle never reads: {sorted(unknown)}"


def k8s_worker_env() -> dict[str, object]:
    """The worker container's environment: its env entries and its ConfigMaps' data."""
    [container] = k8s("Deployment", "vidstyle-worker")["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}
    for source in container.get("envFrom", []):
        env.update(k8s("ConfigMap", source["configMapRef"]["name"])["data"])
    return env


def test_every_worker_gets_the_broker_and_the_storage_root():
    needed = {"VIDSTYLE_BROKER_URL", "VIDSTYLE_STORAGE"}
    assert compose_workers()
    for name, service in compose_workers().items():
        assert needed <= set(service["environment"]), name
        assert any(volume.endswith(":" + service["environment"]["VIDSTYLE_STORAGE"]) for volume in service["volumes"])
    assert needed <= set(env_example())
    assert needed <= set(k8s_worker_env())


def test_kubernetes_secret_references_name_keys_of_the_example_secret():
    secret = k8s("Secret", "vidstyle-redis")
    refs = []
    for obj in k8s_objects():
        if obj["kind"] == "Deployment":
            env = [e for c in obj["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])]
            refs += [e["valueFrom"]["secretKeyRef"] for e in env if "secretKeyRef" in e.get("valueFrom", {})]
        elif obj["kind"] == "TriggerAuthentication":
            refs += obj["spec"]["secretTargetRef"]
    assert len(refs) == 3  # the Redis password, the workers' broker URL, KEDA's password
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], ref


def test_kubernetes_worker_requests_one_gpu_and_mounts_shared_storage():
    pod = k8s("Deployment", "vidstyle-worker")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == k8s_worker_env()["VIDSTYLE_STORAGE"]]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = k8s("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_keda_scales_the_worker_deployment_on_the_default_queue():
    scaled = k8s("ScaledObject", "vidstyle-worker")
    assert k8s("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == DEFAULT_QUEUE
    assert k8s("TriggerAuthentication", trigger["authenticationRef"]["name"])
    # KEDA runs in its own namespace: the address must be the Service's full name.
    service = k8s("Service", "vidstyle-redis")["metadata"]
    assert trigger["metadata"]["address"].startswith(f"{service['name']}.{service['namespace']}.svc")


def test_kubernetes_objects_share_one_namespace():
    assert {obj["metadata"]["namespace"] for obj in k8s_objects()} == {"vidstyle"}


def assert_durable_with_password(argv: list[str]) -> None:
    assert argv[argv.index("--appendonly") + 1] == "yes", argv
    assert argv[argv.index("--requirepass") + 1], argv


def test_redis_keeps_an_append_only_file_and_requires_a_password():
    assert_durable_with_password(shlex.split(compose()["services"]["redis"]["command"]))
    [container] = k8s("Deployment", "vidstyle-redis")["spec"]["template"]["spec"]["containers"]
    assert_durable_with_password(container["args"])
    assert "$(REDIS_PASSWORD)" in container["args"]  # from the Secret, not written here


def test_compose_workers_each_reserve_their_own_nvidia_gpu():
    gpus = []
    for service in compose_workers().values():
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        gpus += device["device_ids"]
    assert len(gpus) >= 2 and len(set(gpus)) == len(gpus)


def test_systemd_instances_run_on_their_own_gpu_and_stop_warm():
    service = unit()["Service"]
    assert "--device cuda:%i" in service["ExecStart"] and "@%%h" in service["ExecStart"]
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert service["User"] not in ("root", "0")
    assert service["EnvironmentFile"] == "/etc/vidstyle/worker.env"


def test_dockerfile_installs_the_project_as_pinned_and_runs_as_a_user():
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    assert re.fullmatch(r"FROM nvidia/cuda:\S+", next(line for line in lines if line.startswith("FROM")))
    installs = [argv for where, argv in program("pip") if where == "Dockerfile"]
    # The project alone: torch and the rest as pyproject.toml pins them.
    assert [arg for argv in installs for arg in argv[2:] if not arg.startswith("-")] == ["/src"]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def seconds(duration: str | int) -> int:
    """Plain seconds, or a compose ("4h5m") or systemd ("4h 5min") duration."""
    if str(duration).isdigit():
        return int(duration)
    assert re.fullmatch(r"(\s*\d+\s*(h|min|m|s))+", duration), duration
    units = {"h": 3600, "min": 60, "m": 60, "s": 1}
    return sum(int(n) * units[unit] for n, unit in re.findall(r"(\d+)\s*(h|min|m|s)", duration))


def test_stop_timeouts_outlast_the_job_time_limit(monkeypatch, tmp_path):
    # The default limit, from the Celery settings with no settings of our own.
    monkeypatch.setenv("VIDSTYLE_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("VIDSTYLE_BROKER_URL", "redis://localhost:6379/0")
    for name in ("VIDSTYLE_JOB_TIME_LIMIT", "VIDSTYLE_VISIBILITY_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    default = runpy.run_path(str(ROOT / "workers" / "celeryconfig.py"))["task_time_limit"]
    for name, service in compose_workers().items():
        limit = float(service["environment"].get("VIDSTYLE_JOB_TIME_LIMIT", default))
        assert seconds(service["stop_grace_period"]) > limit, name
    assert seconds(unit()["Service"]["TimeoutStopSec"]) > float(env_example().get("VIDSTYLE_JOB_TIME_LIMIT", default))
    grace = k8s("Deployment", "vidstyle-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(k8s_worker_env().get("VIDSTYLE_JOB_TIME_LIMIT", default))
