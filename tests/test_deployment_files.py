"""Consistency checks for the deployment files.

These tests read Dockerfile, docker-compose.yml, config/nginx.conf and
pyproject.toml as text/YAML/TOML and check that they agree with each other in
the ways a user would notice at `docker compose up` time: ports, service
names, health-gated startup, the console script, and that no key material is
committed. Nothing here needs Docker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

from service.settings import Settings
from tests.support.cli import clean_environ
from tests.support.tools import debian_tool

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NGINX_CONF = ROOT / "config" / "nginx.conf"
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
CLIENT_PYPROJECT = ROOT / "client" / "pyproject.toml"

# The service's secret settings and the compose secret each one is read from.
SECRET_FILES = {"SECRETS_MASTER_KEYS": "master_keys", "API_KEY_HASH_KEY": "api_key_hash_key"}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends with a line continuation"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    """Instructions of the last build stage (the image that is shipped)."""
    instructions = dockerfile_instructions()
    starts = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    assert starts, "Dockerfile has no FROM"
    return instructions[starts[-1] :]


def exec_form(args: str) -> list[str]:
    """Parse a JSON (exec form) CMD/ENTRYPOINT argument list; shell form is split."""
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value
    return shlex.split(args)


def dockerfile_cmd() -> list[str]:
    cmds = [args for kw, args in final_stage() if kw == "CMD"]
    assert cmds, "Dockerfile final stage has no CMD"
    entrypoints = [args for kw, args in final_stage() if kw == "ENTRYPOINT"]
    assert not entrypoints, "tests assume CMD alone starts the service"
    return exec_form(cmds[-1])


def option_value(argv: list[str], option: str) -> str:
    for i, arg in enumerate(argv):
        if arg == option:
            assert i + 1 < len(argv), f"{option} has no value in {argv}"
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{option} not found in {argv}")


def served_port() -> int:
    """The port `secrets-service serve` listens on inside the container."""
    return int(option_value(dockerfile_cmd(), "--port"))


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    svcs = compose.get("services")
    assert isinstance(svcs, dict) and svcs
    return svcs


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {k: (v[0] if v else "") for k, *v in pairs}
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return {name: (spec or {"condition": "service_started"}) for name, spec in deps.items()}


def profiles(service: dict) -> set[str]:
    return set(service.get("profiles") or [])


def builds_repo_image(service: dict) -> bool:
    return "build" in service


def build_paths(service: dict) -> tuple[Path, Path]:
    build = service["build"]
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    context_dir = (ROOT / context).resolve()
    return context_dir, (context_dir / dockerfile).resolve()


def has_healthcheck(service: dict) -> bool:
    hc = service.get("healthcheck")
    if hc is None:
        # An image built from our Dockerfile inherits its HEALTHCHECK.
        return builds_repo_image(service) and any(
            kw == "HEALTHCHECK" and not args.upper().startswith("NONE") for kw, args in final_stage()
        )
    if hc.get("disable"):
        return False
    test = hc.get("test")
    return bool(test) and test != ["NONE"]


def published_container_ports(service: dict) -> set[int]:
    ports = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            spec = str(entry).split("/")[0]
            ports.add(int(spec.rsplit(":", 1)[-1]))
    return ports


def command_of(service: dict) -> list[str]:
    command = service.get("command")
    if command is None:
        return dockerfile_cmd()
    return command if isinstance(command, list) else shlex.split(command)


def repo_services(services: dict[str, dict]) -> dict[str, dict]:
    """The instances of the service: built from the repository, serving the API (not the sync agent)."""
    return {
        name: svc
        for name, svc in services.items()
        if builds_repo_image(svc) and command_of(svc)[0] != "secrets-sync"
    }


def kafka_service_name(services: dict[str, dict]) -> str:
    names = [n for n, s in services.items() if str(s.get("image", "")).startswith("apache/kafka:")]
    assert len(names) == 1, f"expected exactly one apache/kafka service, found {names}"
    return names[0]


# --------------------------------------------------------------------------
# Dockerfile / packaging
# --------------------------------------------------------------------------


def test_dockerfile_runs_the_serve_command_on_all_interfaces():
    cmd = dockerfile_cmd()
    assert cmd[:2] == ["secrets-service", "serve"], cmd
    # Bound to 127.0.0.1 the published port would be unreachable.
    assert option_value(cmd, "--host") == "0.0.0.0"


def test_dockerfile_does_not_run_as_root():
    users = [args for kw, args in final_stage() if kw == "USER"]
    assert users, "final stage has no USER line, so the service would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"


def test_dockerfile_exposes_the_port_it_serves_on():
    exposed = set()
    for kw, args in final_stage():
        if kw == "EXPOSE":
            exposed.update(int(p.split("/")[0]) for p in args.split())
    assert served_port() in exposed, f"CMD serves on {served_port()}, EXPOSE lists {exposed}"


def test_dockerfile_healthcheck_probes_readyz_on_the_served_port():
    checks = [args for kw, args in final_stage() if kw == "HEALTHCHECK"]
    assert checks, "Dockerfile has no HEALTHCHECK"
    assert f"127.0.0.1:{served_port()}/readyz" in checks[-1]
    assert "urllib" in checks[-1], "the slim image has no curl/wget; use python's urllib"


def test_dockerfile_installs_the_locked_dependencies_then_the_project_alone():
    base = [args for kw, args in dockerfile_instructions() if kw == "FROM"]
    assert all(b.split()[0].startswith("python:3.11-slim") for b in base), base
    runs = [args for kw, args in dockerfile_instructions() if kw == "RUN"]
    locked = [r for r in runs if "pip install" in r and "-r requirements.lock" in r]
    assert locked and "--require-hashes" in locked[0], runs
    project = [r for r in runs if re.search(r"pip install .*--no-deps.* \.(\s|$)", r)]
    assert project, "the package itself must be installed with --no-deps, so nothing unlocked comes in"
    assert runs.index(locked[0]) < runs.index(project[0])
    copies = [args for kw, args in dockerfile_instructions() if kw == "COPY"]
    assert any(c.split()[0] == "requirements.lock" for c in copies), copies


def locked_pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a `--generate-hashes` requirements file."""
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text()):
        match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            pins[name] = (match.group(2), block.count("--hash=sha256:"))
    return pins


@pytest.mark.parametrize(("lock", "extras"), [(LOCK, ()), (DEV_LOCK, ("test", "dev"))])
def test_the_locks_pin_every_dependency_by_hash(lock: Path, extras: tuple[str, ...]):
    assert lock.exists(), f"{lock.name} is missing: make lock"
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]
    wanted += tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]
    # The client is installed from client/ (not locked, not on PyPI); its dependencies are locked.
    client = tomllib.loads(CLIENT_PYPROJECT.read_text())["project"]
    wanted = [line for line in wanted if Requirement(line).name != client["name"]]
    wanted += client["dependencies"] + client["optional-dependencies"]["events"]
    pins = locked_pins(lock)
    for line in wanted:
        requirement = Requirement(line)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not in {lock.name}: run make lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name}=={version}, pyproject.toml wants {requirement.specifier}: run make lock"
        )
    assert all(hashes for _, hashes in pins.values()), f"{lock.name} has pins without hashes"


def test_make_install_and_ci_use_the_dev_lock():
    makefile = (ROOT / "Makefile").read_text()
    install = makefile[makefile.index("$(VENV)/.installed:") :].split("\n\n")[0]
    assert "--require-hashes -r requirements-dev.lock" in install
    assert "--no-deps" in install
    assert re.search(r"^lock:", makefile, re.M), "no documented way to update the locks (make lock)"
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_console_script_in_cmd_is_declared_in_pyproject():
    assert PYPROJECT.exists(), "pyproject.toml is missing: the image cannot be built"
    project = tomllib.loads(PYPROJECT.read_text()).get("project", {})
    scripts = project.get("scripts", {})
    script = dockerfile_cmd()[0]
    assert script in scripts, f"[project.scripts] does not declare {script!r}: {scripts}"
    module, _, func = scripts[script].partition(":")
    assert func, f"entry point {scripts[script]!r} names no function"
    module_path = ROOT.joinpath(*module.split("."))
    assert module_path.with_suffix(".py").exists() or (module_path / "__init__.py").exists(), (
        f"entry point module {module} not found in the repository"
    )


def test_dockerignore_keeps_local_state_out_but_not_the_package():
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    for required in (".git", ".venv", "data", "bench/results"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    assert any("__pycache__" in p for p in patterns)
    for needed in ("pyproject.toml", "service", "*.toml", "*.py", "*"):
        assert needed not in patterns, f".dockerignore excludes {needed}, which pip install . needs"


# --------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------


def test_compose_uses_the_compose_spec_without_version(compose: dict):
    assert "version" not in compose, "top-level `version:` is obsolete in the Compose spec"


def test_every_built_service_uses_the_repo_dockerfile(services: dict[str, dict]):
    built = repo_services(services)
    assert built, "no service builds the service image"
    for name, svc in built.items():
        context, dockerfile = build_paths(svc)
        assert context == ROOT, f"{name} builds from {context}, not the repository"
        assert dockerfile == DOCKERFILE.resolve(), f"{name} uses {dockerfile}"
        assert dockerfile.exists()


def test_default_secrets_service_serves_and_publishes_its_port(services: dict[str, dict]):
    svc = services.get("secrets")
    assert svc is not None, "no `secrets` service"
    assert profiles(svc) == {"single"}, "`secrets` must start with the single profile, and only with it"
    assert builds_repo_image(svc)
    # The command comes from the Dockerfile CMD (`secrets-service serve`).
    command = svc.get("command")
    if command is not None:
        argv = command if isinstance(command, list) else shlex.split(command)
        assert argv[:2] == ["secrets-service", "serve"], argv
    assert "entrypoint" not in svc
    assert served_port() in published_container_ports(svc), (
        f"`secrets` publishes {svc.get('ports')} but serves on {served_port()}"
    )
    # Plain HTTP is published on the host's loopback only, never on every interface.
    for entry in svc.get("ports") or []:
        host_ip = entry.get("host_ip") if isinstance(entry, dict) else str(entry).split(":")[0]
        assert host_ip == "127.0.0.1", f"`secrets` publishes {entry} beyond loopback"


def test_default_secrets_service_keeps_sqlite_on_a_volume(compose: dict, services: dict[str, dict]):
    svc = services["secrets"]
    url = environment(svc).get("DATABASE_URL", "")
    assert url.startswith("sqlite:////data/"), url
    mounts = [str(v).split(":") for v in svc.get("volumes") or [] if not isinstance(v, dict)]
    named = {src for src, dst, *_ in mounts if dst == "/data"}
    assert named, "/data is not a volume: the database would be lost with the container"
    assert named <= set(compose.get("volumes") or {}), f"undeclared volume(s) {named}"


def test_service_instances_reach_kafka_at_its_advertised_listener(services: dict[str, dict]):
    kafka_name = kafka_service_name(services)
    kafka_env = environment(services[kafka_name])
    advertised = {
        urlsplit(listener).netloc for listener in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    listener_ports = {urlsplit(listener).port for listener in kafka_env["KAFKA_LISTENERS"].split(",")}
    for name, svc in repo_services(services).items():
        bootstrap = environment(svc).get("KAFKA_BOOTSTRAP_SERVERS")
        assert bootstrap, f"{name} has no KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1 is wrong in a container)"
        for server in bootstrap.split(","):
            host, _, port = server.strip().rpartition(":")
            assert host == kafka_name, f"{name} bootstraps from {server}, not the {kafka_name} service"
            assert int(port) in listener_ports, f"kafka does not listen on {port}"
            assert server.strip() in advertised, f"{server} is not an advertised kafka listener {advertised}"


def test_kafka_runs_single_node_kraft(services: dict[str, dict]):
    env = environment(services[kafka_service_name(services)])
    node_id = env["KAFKA_NODE_ID"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1 and voters[0].startswith(f"{node_id}@")
    controller_port = int(voters[0].rsplit(":", 1)[1])
    controller_prefix = env["KAFKA_CONTROLLER_LISTENER_NAMES"] + "://"
    controllers = [
        listener for listener in env["KAFKA_LISTENERS"].split(",") if listener.startswith(controller_prefix)
    ]
    assert controllers and urlsplit(controllers[0]).port == controller_port
    # With one broker, internal topics must not ask for more replicas than exist.
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env.get(key) == "1", f"{key} must be 1 on a single node"


def test_depends_on_targets_exist_and_wait_for_health(services: dict[str, dict]):
    for name, svc in services.items():
        for target, spec in depends_on(svc).items():
            assert target in services, f"{name} depends on unknown service {target}"
            if has_healthcheck(services[target]):
                assert spec.get("condition") == "service_healthy", (
                    f"{name} should wait for {target} to be healthy, not {spec.get('condition')}"
                )
            # A service must not depend on one that its profiles do not enable.
            target_profiles = profiles(services[target])
            if target_profiles:
                assert profiles(svc) and profiles(svc) <= target_profiles, (
                    f"{name} (profiles {profiles(svc) or 'default'}) depends on {target} "
                    f"which only runs with profiles {target_profiles}"
                )


def test_dependencies_with_healthchecks_are_probed(services: dict[str, dict]):
    # Everything others wait on must actually have a healthcheck, or
    # `service_healthy` would block forever.
    for name, svc in services.items():
        for target, spec in depends_on(svc).items():
            if target in services and spec.get("condition") == "service_healthy":
                assert has_healthcheck(services[target]), (
                    f"{name} waits for {target}, which has no healthcheck"
                )


def test_service_healthchecks_probe_readyz_on_the_served_port(services: dict[str, dict]):
    for name, svc in repo_services(services).items():
        test = svc.get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
        text = " ".join(test) if isinstance(test, list) else test
        assert f"127.0.0.1:{served_port()}/readyz" in text, f"{name} healthcheck: {text}"


def test_keys_come_from_compose_secrets_not_the_environment(compose: dict, services: dict[str, dict]):
    declared = compose.get("secrets") or {}
    for name, svc in repo_services(services).items():
        env = environment(svc)
        mounted = set(svc.get("secrets") or [])
        for var, secret in SECRET_FILES.items():
            assert var not in env, f"{name} passes {var} in its environment: `config` and `inspect` show it"
            assert env.get(f"{var}_FILE") == f"/run/secrets/{secret}", f"{name}: {var}_FILE"
            assert secret in mounted, f"{name} does not mount the {secret} secret"
            assert "file" in declared.get(secret, {}), f"the {secret} secret names no file"
    text = COMPOSE_FILE.read_text()
    # base64 of 32 bytes (a master or hash key), with or without a key id.
    assert not re.search(r"[A-Za-z0-9+/]{43}=", text), "compose file contains what looks like a key"


def test_the_secret_files_stay_out_of_git_and_the_image(compose: dict):
    directories = {Path(spec["file"]).parts[-2] for spec in (compose.get("secrets") or {}).values()}
    assert directories == {"secrets"}, directories
    for path in (".env", ".env.local", "secrets/master_keys", "data/dev.env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"git does not ignore {path}"
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert {"secrets", ".env"} <= patterns, "the build context would carry the key files"


# --------------------------------------------------------------------------
# `docker-compose config`: the file is valid, and each profile starts exactly its services
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_compose() -> str:
    return debian_tool("docker-compose", "docker-compose")


def compose_config(docker_compose: str, *profile: str, env: dict[str, str] | None = None) -> dict:
    args = [docker_compose, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    for name in profile:
        args += ["--profile", name]
    done = subprocess.run(
        [*args, "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_environ(**(env or {})),
        timeout=60,
    )
    assert done.returncode == 0, f"docker-compose config failed: {done.stderr[-2000:]}"
    assert "WARNING" not in done.stderr, done.stderr
    config = yaml.safe_load(done.stdout)
    assert isinstance(config, dict)
    config["_text"] = done.stdout
    return config


def started(config: dict, active: set[str]) -> set[str]:
    """What `up` starts: services without profiles, and those with an active profile (the Compose rule)."""
    return {
        name
        for name, svc in config["services"].items()
        if not svc.get("profiles") or active & set(svc["profiles"])
    }


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ((), set()),
        (("single",), {"kafka", "secrets"}),
        (("scaled",), {"kafka", "postgres", "secrets-a", "secrets-b", "lb"}),
        (("single", "sync"), {"kafka", "secrets", "secrets-sync", "example-app"}),
    ],
    ids=["no profile", "single", "scaled", "single+sync"],
)
def test_compose_config_starts_exactly_the_profiles_services(
    docker_compose: str, profile: tuple[str, ...], expected: set[str]
):
    config = compose_config(docker_compose, *profile)
    services = started(config, set(profile))
    assert services == expected
    for name in services:
        for dependency in config["services"][name].get("depends_on") or {}:
            assert dependency in services, (
                f"{name} depends on {dependency}, which this profile does not start"
            )


def test_kafka_answers_the_host_on_a_loopback_listener(docker_compose: str):
    for host_port in ("9092", "29092"):
        config = compose_config(docker_compose, "single", env={"KAFKA_HOST_PORT": host_port})
        kafka = config["services"]["kafka"]
        env = environment(kafka)
        listeners = {urlsplit(i).scheme.upper(): urlsplit(i).port for i in env["KAFKA_LISTENERS"].split(",")}
        advertised = {
            urlsplit(i).scheme.upper(): urlsplit(i) for i in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        }
        protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        published = [str(entry).removesuffix("/tcp").rsplit(":", 2) for entry in kafka.get("ports") or []]
        assert len(published) == 1, published
        host_ip, published_port, container_port = published[0]
        names = [name for name, port in listeners.items() if port == int(container_port)]
        assert len(names) == 1, f"{container_port} is not one listener of {listeners}"
        name = names[0]
        assert host_ip == "127.0.0.1", "a PLAINTEXT listener without authentication must stay on loopback"
        assert published_port == host_port
        # What the host dials after the bootstrap is what the broker advertises for that listener.
        assert (advertised[name].hostname, str(advertised[name].port)) == ("127.0.0.1", host_port)
        assert protocols[name] == "PLAINTEXT"


def test_compose_config_shows_no_key(docker_compose: str):
    canary = "canary-" + os.urandom(8).hex()
    env = {"SECRETS_MASTER_KEYS": canary, "API_KEY_HASH_KEY": canary, "POSTGRES_PASSWORD": canary}
    config = compose_config(docker_compose, "scaled", env=env)
    assert canary not in config["_text"]
    assert not re.search(r"PASSWORD: (?!/run/secrets/)", config["_text"]), "a password in the environment"


# --------------------------------------------------------------------------
# Key files with nothing but the image (scripts/compose-secrets)
# --------------------------------------------------------------------------


def fake_docker(tmp_path: Path) -> Path:
    """A `docker` that runs `docker run --rm --network none IMAGE CMD...` as CMD on this machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(
        "#!/usr/bin/env bash\n"
        'set -euo pipefail\n[[ "$1 $2" == "run --rm" ]] || exit 3\nshift 2\n'
        'while [[ "$1" == --* ]]; do shift 2; done\n'
        f'shift\nexec "{Path(sys.executable).parent}/$1" "${{@:2}}"\n'
    )
    script.chmod(0o755)
    return bin_dir


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the files to uid 10001 takes root")
def test_compose_secrets_makes_private_key_files_the_service_accepts(tmp_path: Path):
    bin_dir = fake_docker(tmp_path)
    target = tmp_path / "secrets"
    env = {**clean_environ(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        [str(ROOT / "scripts" / "compose-secrets"), "--dir", str(target)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", "key material reached stdout"
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    files = {path.name: path for path in target.iterdir()}
    assert set(files) == {"master_keys", "api_key_hash_key", "postgres_password"}
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert (path.stat().st_uid, path.stat().st_gid) == (10001, 10001)
    settings = Settings.from_env(
        {
            "SECRETS_MASTER_KEYS_FILE": str(files["master_keys"]),
            "API_KEY_HASH_KEY_FILE": str(files["api_key_hash_key"]),
            "DATABASE_URL": "postgresql+asyncpg://secrets@postgres:5432/secrets",
            "DATABASE_PASSWORD_FILE": str(files["postgres_password"]),
        }
    )
    assert len(settings.api_key_hash_key.reveal()) == 32
    before = {name: path.read_bytes() for name, path in files.items()}
    again = subprocess.run(
        [str(ROOT / "scripts" / "compose-secrets"), "--dir", str(target)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 0
    assert {name: path.read_bytes() for name, path in files.items()} == before, "a second run replaced a key"


# --------------------------------------------------------------------------
# scaled profile + nginx
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scaled(services: dict[str, dict]) -> dict[str, dict]:
    svcs = {name: svc for name, svc in services.items() if "scaled" in profiles(svc)}
    assert svcs, "no services in the `scaled` profile"
    return svcs


def scaled_replicas(scaled: dict[str, dict]) -> dict[str, dict]:
    return {name: svc for name, svc in scaled.items() if builds_repo_image(svc)}


def test_scaled_profile_has_postgres_two_replicas_and_an_lb(scaled: dict[str, dict]):
    assert "postgres" in scaled and str(scaled["postgres"]["image"]).startswith("postgres:")
    assert sorted(scaled_replicas(scaled)) == ["secrets-a", "secrets-b"]
    assert "lb" in scaled and str(scaled["lb"]["image"]).startswith("nginx:")


def test_scaled_replicas_share_the_postgres_database(scaled: dict[str, dict]):
    postgres = scaled["postgres"]
    pg_env = environment(postgres)
    assert "POSTGRES_PASSWORD" not in pg_env, "the PostgreSQL password is hard-coded"
    password_file = pg_env["POSTGRES_PASSWORD_FILE"]
    assert password_file.startswith("/run/secrets/")
    assert password_file.rsplit("/", 1)[1] in set(postgres.get("secrets") or [])
    urls = set()
    for name, svc in scaled_replicas(scaled).items():
        env = environment(svc)
        url = env.get("DATABASE_URL", "")
        parts = urlsplit(url)
        assert parts.scheme == "postgresql+asyncpg", f"{name}: {url}"
        assert parts.hostname == "postgres" and (parts.port or 5432) == 5432, f"{name}: {url}"
        assert parts.username == pg_env["POSTGRES_USER"], f"{name}: wrong user in {url}"
        assert parts.password is None, f"{name}: a password in DATABASE_URL"
        assert env.get("DATABASE_PASSWORD_FILE") == password_file, f"{name} reads another password"
        assert password_file.rsplit("/", 1)[1] in set(svc.get("secrets") or [])
        assert parts.path.lstrip("/") == pg_env["POSTGRES_DB"], f"{name}: wrong database in {url}"
        assert "postgres" in depends_on(svc), f"{name} does not wait for postgres"
        urls.add(url)
    assert len(urls) == 1, "replicas must use the same database"


def nginx_upstreams() -> dict[str, list[tuple[str, int]]]:
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())
    upstreams = {}
    for name, body in re.findall(r"\bupstream\s+(\S+)\s*\{([^}]*)\}", text):
        upstreams[name] = [
            (host, int(port)) for host, port in re.findall(r"^\s*server\s+([\w.-]+):(\d+)\b", body, re.M)
        ]
    return upstreams


def test_nginx_balances_over_both_replicas_on_their_served_port(scaled: dict[str, dict]):
    upstreams = nginx_upstreams()
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())
    proxied = set(re.findall(r"\bproxy_pass\s+http://([\w.-]+)\s*;", text))
    assert proxied, "nginx.conf has no proxy_pass"
    assert proxied <= set(upstreams), f"proxy_pass targets {proxied} are not upstreams {set(upstreams)}"
    expected = {(name, served_port()) for name in scaled_replicas(scaled)}
    for upstream in proxied:
        assert set(upstreams[upstream]) == expected, (
            f"upstream {upstream} lists {upstreams[upstream]}, replicas listen on {sorted(expected)}"
        )


def test_nginx_keeps_upstream_connections_alive_and_limits_bodies():
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())
    assert re.search(r"^\s*keepalive\s+\d+\s*;", text, re.M), "upstream has no keepalive pool"
    # keepalive to upstreams only works with HTTP/1.1 and no `Connection: close`.
    assert re.search(r"^\s*proxy_http_version\s+1\.1\s*;", text, re.M)
    assert re.search(r'^\s*proxy_set_header\s+Connection\s+""\s*;', text, re.M)
    # nginx refuses what the service would refuse, no more: the body limits agree.
    from service.settings import Settings

    limit = re.search(r"^\s*client_max_body_size\s+(\d+)k\s*;", text, re.M)
    assert limit and int(limit.group(1)) * 1024 == Settings.max_body_bytes
    assert re.search(r"^\s*location\s+=?\s*/healthz\s*\{", text, re.M), "no /healthz location"
    # The auth headers must reach the replicas untouched.
    for header in ("X-Auth-Token", "Authorization", "Idempotency-Key"):
        assert not re.search(rf"proxy_set_header\s+{header}\s", text, re.I), f"{header} is overridden"
    assert not re.search(r"proxy_pass_request_headers\s+off", text)


def test_lb_mounts_the_nginx_config_and_waits_for_replicas(scaled: dict[str, dict]):
    lb = scaled["lb"]
    mounts = [str(v).split(":") for v in lb.get("volumes") or []]
    conf_mounts = [m for m in mounts if (ROOT / m[0]).resolve() == NGINX_CONF.resolve()]
    assert conf_mounts, f"lb does not mount config/nginx.conf: {lb.get('volumes')}"
    _src, dst, *mode = conf_mounts[0]
    assert dst == "/etc/nginx/nginx.conf", dst  # the file is a full nginx.conf, not a conf.d snippet
    assert mode and "ro" in mode[0].split(","), "mount the config read-only"
    assert 80 in published_container_ports(lb)
    assert set(depends_on(lb)) >= set(scaled_replicas(scaled))


# --------------------------------------------------------------------------
# The `docker run` example (README and Dockerfile header)
# --------------------------------------------------------------------------


def docker_run_examples() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    header = "\n".join(
        line.removeprefix("#").strip() for line in DOCKERFILE.read_text().splitlines() if line.startswith("#")
    )
    examples = []
    for text in (readme, header):
        match = re.search(r"docker run -d (?:[^\n]*\\\n)*[^\n]*", text)
        assert match, "no `docker run -d` example"
        examples.append(shlex.split(match.group(0).replace("\\\n", " ")))
    return examples


@pytest.mark.parametrize("argv", docker_run_examples(), ids=["README", "Dockerfile"])
def test_the_docker_run_example_keeps_the_database_and_reaches_kafka(argv: list[str]):
    workdir = [args for kw, args in final_stage() if kw == "WORKDIR"][-1]
    default_url = next(
        f for f in Settings.__dataclass_fields__.values() if f.metadata["env"] == "DATABASE_URL"
    )
    database_dir = str((Path(workdir) / default_url.default.removeprefix("sqlite:///")).parent)
    volumes = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-v"]
    env = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "-e")
    assert any(v.split(":")[1] == database_dir for v in volumes), f"nothing keeps {database_dir}: {volumes}"
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "")
    assert bootstrap and not bootstrap.startswith(("127.", "localhost")), "Kafka is not in the container"
    for var in SECRET_FILES:
        assert var not in env, f"{var} on the command line ends up in the shell history and `docker inspect`"
        path = env.get(f"{var}_FILE")
        assert path and any(v.split(":")[1] == path for v in volumes), f"{var}_FILE is not a mounted file"
    assert argv[-1] == "secrets-service"
    published = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-p"]
    assert published and all(p.startswith("127.0.0.1:") for p in published), "plain HTTP beyond loopback"


# --------------------------------------------------------------------------
# profile "sync": the sync agent as a sidecar, an app reading its files
# --------------------------------------------------------------------------


def mounts(service: dict) -> dict[str, tuple[str, list[str]]]:
    """Container path -> (source, options) of a service's short-form volumes."""
    found = {}
    for entry in service.get("volumes") or []:
        source, target, *options = str(entry).split(":")
        found[target] = (source, options[0].split(",") if options else [])
    return found


def dockerfile_uid() -> str:
    users = [args for kw, args in final_stage() if kw == "USER"]
    return users[-1].split(":")[0]


@pytest.fixture(scope="module")
def agent(services: dict[str, dict]) -> tuple[str, dict]:
    found = [
        (n, s) for n, s in services.items() if builds_repo_image(s) and command_of(s)[0] == "secrets-sync"
    ]
    assert len(found) == 1, "expected one secrets-sync sidecar"
    return found[0]


def test_the_agent_runs_the_clients_console_script_against_the_service(
    agent: tuple[str, dict], compose: dict, services: dict[str, dict]
) -> None:
    _, svc = agent
    scripts = tomllib.loads(CLIENT_PYPROJECT.read_text())["project"]["scripts"]
    assert "secrets-sync" in scripts, "client/pyproject.toml does not declare secrets-sync"
    runs = [args for kw, args in dockerfile_instructions() if kw == "RUN"]
    assert any(re.search(r"pip install .*--no-deps.* \./client(\s|$)", r) for r in runs), (
        "the image does not install the client (and with it secrets-sync)"
    )
    url = urlsplit(option_value(command_of(svc), "--url"))
    assert url.hostname in repo_services(services) and url.port == served_port(), (
        f"--url {url.geturl()} is no instance of the service"
    )
    env = environment(svc)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == environment(services[url.hostname])["KAFKA_BOOTSTRAP_SERVERS"]
    assert "KAFKA_TOPIC" in env
    # The agent's own key: a compose secret read through SECRETS_API_KEY_FILE, never in the environment.
    assert "SECRETS_API_KEY" not in env
    secret = env["SECRETS_API_KEY_FILE"].removeprefix("/run/secrets/")
    assert secret in (svc.get("secrets") or []) and "file" in (compose.get("secrets") or {})[secret]
    for var, key in SECRET_FILES.items():
        assert var not in env and f"{var}_FILE" not in env, f"the agent is given {var}"
        assert key not in (svc.get("secrets") or []), (
            f"the agent mounts {key}: it needs only a secrets:read key"
        )


def test_the_agent_writes_to_a_tmpfs_volume_that_the_app_mounts_read_only(
    agent: tuple[str, dict], compose: dict, services: dict[str, dict]
) -> None:
    agent_name, svc = agent
    directory = option_value(command_of(svc), "--dir")
    volume, options = mounts(svc)[directory]
    assert "ro" not in options, "the agent cannot write to a read-only mount"
    assert not directory.startswith("/run/secrets"), "compose mounts its secrets there"
    spec = (compose.get("volumes") or {}).get(volume) or {}
    driver = spec.get("driver_opts") or {}
    assert driver.get("type") == "tmpfs", f"{volume} is not a tmpfs: synced secrets would reach a disk"
    tmpfs_options = dict(o.split("=", 1) for o in driver.get("o", "").split(",") if "=" in o)
    assert tmpfs_options.get("mode") == "0700"
    assert tmpfs_options.get("uid") == dockerfile_uid(), "the agent (the image's user) must own the volume"
    assert "test" in svc["healthcheck"]["test"] and f"{directory}/.ready" in svc["healthcheck"]["test"]

    readers = {
        name: s
        for name, s in services.items()
        if name != agent_name and any(source == volume for source, _ in mounts(s).values())
    }
    assert readers, f"no application mounts {volume}"
    for name, reader in readers.items():
        assert all("ro" in opts for source, opts in mounts(reader).values() if source == volume), (
            f"{name} mounts the secrets volume writable"
        )
        assert str(reader.get("user", "")).split(":")[0] == dockerfile_uid(), (
            f"{name} cannot read the agent's 0600 files as another uid"
        )
        assert depends_on(reader)[agent_name]["condition"] == "service_healthy", (
            f"{name} starts before the first sync is on the volume"
        )
        assert profiles(reader) == profiles(svc)
