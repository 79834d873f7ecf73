"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema
(vendored: see SOURCE.md beside this file), then every service is checked against
the app itself: stage services run ``faust -A app worker`` for a real stage, every
``SPILLWAY_*`` variable is a real setting and the values parse, ports match the
settings' defaults and the web ports of app.factory, and the internal addresses
point at services that listen there.
"""

from __future__ import annotations

import ast
import json
import re
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft202012Validator

from app.factory import WEB_PORTS
from app.settings import PROJECT_ROOT, Settings, Stage

HERE = Path(__file__).parent
COMPOSE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
STAGES = [s for s in typing.get_args(Stage) if s != "all"]
DEFAULTS = Settings()
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's ``${VAR}`` / ``${VAR:-default}``, with an empty shell by default."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: (env or {}).get(m["name"]) or m["default"] or "", value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    resolved: dict[str, Any] = interpolate(raw)
    return resolved


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def env_of(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: None if v is None else str(v) for k, v in env.items()}


LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def published(spec: Any) -> tuple[str, str, str]:
    """(host ip, host port or range, container port) of one ``ports`` entry, short or
    long syntax; a missing host ip is "" (Compose then binds every interface)."""
    if isinstance(spec, dict):  # long syntax: target, published, host_ip, protocol
        return str(spec.get("host_ip") or ""), str(spec.get("published") or ""), str(
            spec["target"]
        )
    text = str(spec).split("/", 1)[0]  # drop /tcp, /udp
    ip = ""
    if text.startswith("["):  # [::1]:8080:80
        ip, _, text = text[1:].partition("]:")
    parts = text.split(":")
    if len(parts) == 3:
        ip, parts = parts[0], parts[1:]
    if len(parts) == 1:  # "8080": a random host port, every interface
        return ip, "", parts[0]
    return ip, parts[0], parts[1]


def host_ports(service: dict[str, Any]) -> dict[int, str]:
    """Container port -> published host port (or range)."""
    out: dict[int, str] = {}
    for spec in service.get("ports", []):
        _, host, container = published(spec)
        assert host, f"publish as [IP:]HOST:CONTAINER, not {spec!r}"
        out[int(container)] = host
    return out


def stage_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if "faust" in (s.get("command") or [])}


def port_of(url: str) -> int:
    port = urlsplit(url if "://" in url else f"x://{url}").port
    assert port is not None, url
    return port


# --- schema ------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification(raw: dict[str, Any]) -> None:
    schema = json.loads((HERE / "compose-spec.json").read_text())
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # and the validator does reject what Compose rejects
    assert list(validator.iter_errors({"services": {"x": {"ports": 5}}}))
    assert list(validator.iter_errors({"services": {"x": {"no_such_key": 1}}}))


# --- stage services ----------------------------------------------------------------------


def test_one_scalable_service_per_stage(services: dict[str, dict[str, Any]]) -> None:
    stages = stage_services(services)
    by_stage = {env_of(s)["SPILLWAY_STAGE"]: name for name, s in stages.items()}
    assert sorted(by_stage) == sorted(STAGES), "every stage (but dev-mode all) has a service"
    assert len(by_stage) == len(stages), "one service per stage"
    for name, service in stages.items():
        assert service["command"][:4] == ["faust", "-A", "app", "worker"], name
        assert service.get("build") == "." and (PROJECT_ROOT / "Dockerfile").exists()
        # --scale needs: no container name, no fixed host port
        assert "container_name" not in service and "hostname" not in service, name
        for host in host_ports(service).values():
            assert "-" in host, f"{name}: a fixed host port {host} breaks --scale"
        assert {"kafka", "registry"} <= set(service.get("depends_on", {})), name


def test_stage_settings_are_real_and_parse(services: dict[str, dict[str, Any]]) -> None:
    for name, service in stage_services(services).items():
        env = {k: v for k, v in env_of(service).items() if v is not None}
        values = {k.removeprefix("SPILLWAY_").lower(): v for k, v in env.items()}
        settings = Settings(**values)  # type: ignore[arg-type]  # strings, as from the env
        assert settings.stage == name, "name each stage service after its stage"
        assert settings.web_host == "0.0.0.0", f"{name} must listen beyond the container"
        web_port = settings.web_port or WEB_PORTS[settings.stage]
        for container_port in host_ports(service):
            assert container_port == web_port, f"{name} publishes {container_port}"


def test_every_spillway_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    fields = set(Settings.env_names())
    for name, service in services.items():
        for var in env_of(service):
            if var.startswith("SPILLWAY_"):
                field = var.removeprefix("SPILLWAY_").lower()
                assert field in fields, f"{name}: {var} is not a setting (app/settings.py)"


def test_intake_is_published_from_its_default_port(services: dict[str, dict[str, Any]]) -> None:
    [intake] = [
        s for s in stage_services(services).values() if env_of(s)["SPILLWAY_STAGE"] == "intake"
    ]
    [host] = host_ports(intake).values()
    assert int(host.split("-")[0]) == WEB_PORTS["intake"]
    assert env_of(intake)["SPILLWAY_INTAKE_API_KEYS"] is None, "keys come from the shell"


# --- private by default (issue 15) ---------------------------------------------------------


def test_published_ports_bind_loopback_only(raw: dict[str, Any]) -> None:
    """Kafka, registry, Kafka UI, Prometheus, Grafana, Mailpit and the intake have no
    authentication of their own here: nothing may be published on every interface."""
    exposed = [
        f"{name}: {spec!r}"
        for name, service in raw["services"].items()
        for spec in service.get("ports", [])
        if published(spec)[0] not in LOOPBACK
    ]
    assert not exposed, "published on all interfaces (bind 127.0.0.1:...): " + ", ".join(exposed)
    assert any(s.get("ports") for s in raw["services"].values()), "no port was checked"


@pytest.mark.parametrize(
    ("spec", "ip"),
    [
        ("9092:9092", ""),
        ("9092", ""),
        ("0.0.0.0:9092:9092", "0.0.0.0"),
        ("127.0.0.1:8080-8084:8080", "127.0.0.1"),
        ("[::1]:8080:80/tcp", "::1"),
        ("[::]:8080:80", "::"),
        ({"target": 80, "published": "8080"}, ""),
        ({"target": 80, "published": "8080", "host_ip": "127.0.0.1"}, "127.0.0.1"),
    ],
)
def test_port_parser_sees_the_host_ip(spec: Any, ip: str) -> None:
    assert published(spec)[0] == ip
    assert (ip in LOOPBACK) == (ip in ("127.0.0.1", "::1"))


# --- the addresses line up ---------------------------------------------------------------


def test_host_ports_match_the_local_stack_defaults(services: dict[str, dict[str, Any]]) -> None:
    kafka = host_ports(services["kafka"])
    assert str(port_of(DEFAULTS.kafka.bootstrap)) in kafka.values()
    registry = host_ports(services["registry"])
    assert registry[8080] == str(port_of(DEFAULTS.registry.url))
    assert host_ports(services["simulator"])[8030] == str(port_of(DEFAULTS.providers.http_url))
    assert host_ports(services["mailpit"])[2525] == str(DEFAULTS.providers.smtp_port)


def test_internal_addresses_point_at_listening_services(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka_env = env_of(services["kafka"])
    listeners = kafka_env["KAFKA_LISTENERS"] or ""
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"] or ""
    assert "HOST://127.0.0.1:9092" in advertised  # what host tools and the CLI use
    for service in stage_services(services).values():
        env = env_of(service)
        bootstrap = env["SPILLWAY_KAFKA_BOOTSTRAP"] or ""
        host, port = bootstrap.split(":")
        assert host == "kafka" and f"://{host}:{port}" in advertised
        assert f"://:{port}" in listeners
        registry = urlsplit(env["SPILLWAY_SCHEMA_REGISTRY_URL"] or "")
        assert registry.hostname == "registry" and registry.port in host_ports(services["registry"])
        assert registry.path == urlsplit(DEFAULTS.registry.url).path
        assert env["SPILLWAY_SMTP_HOST"] in services
        mailpit = env_of(services["mailpit"])
        assert (mailpit["MP_SMTP_BIND_ADDR"] or "").endswith(f":{env['SPILLWAY_SMTP_PORT']}")
        provider = urlsplit(env["SPILLWAY_PROVIDER_HTTP_URL"] or "")
        assert provider.hostname == "simulator"
        sim_cmd = services["simulator"]["command"]
        assert sim_cmd[:3] == ["python", "-m", "simulator.provider"]
        assert sim_cmd[sim_cmd.index("--port") + 1] == str(provider.port)
    ui = env_of(services["kafka-ui"])
    assert ui["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == "kafka:19092"
    assert ui["KAFKA_CLUSTERS_0_SCHEMAREGISTRY"] == "http://registry:8080/apis/ccompat/v7"


def test_prometheus_scrapes_every_stage_and_loads_our_rules(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    [config_ref] = prometheus["configs"]
    config = yaml.safe_load(compose["configs"][config_ref["source"]]["content"])
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in prometheus["volumes"])
    assert mounts["./deploy/prometheus/rules.yml"] in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name, service in stage_services(services).items():
        stage = env_of(service)["SPILLWAY_STAGE"] or ""
        [sd] = jobs[f"spillway-{stage}"]["dns_sd_configs"]  # rules match job=~"spillway.*"
        assert (sd["names"], sd["port"]) == ([name], WEB_PORTS[stage])
        assert jobs[f"spillway-{stage}"].get("metrics_path", "/metrics") == "/metrics"


def test_grafana_is_provisioned_from_deploy(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = PROJECT_ROOT / "deploy/grafana/provisioning/dashboards"
    for path in providers.glob("*.y*ml"):  # the provider must read where dashboards are
        for provider in yaml.safe_load(path.read_text())["providers"]:
            assert provider["options"]["path"] == mounts["./deploy/grafana/dashboards"]


def test_referenced_files_exist(compose: dict[str, Any]) -> None:
    deploy_ready = (PROJECT_ROOT / "deploy").is_dir()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./") and (deploy_ready or not source.startswith("./deploy")):
                assert (PROJECT_ROOT / source).exists(), f"{name}: {source} is missing"
            elif not source.startswith("./"):
                assert source in (compose.get("volumes") or {}), f"{name}: volume {source}"


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_matches_the_app() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    for source in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (PROJECT_ROOT / source).exists(), f"COPY {source}: missing"
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd and json.loads(cmd[1])[:4] == ["faust", "-A", "app", "worker"]
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert exposed == set(WEB_PORTS.values())
    health = re.search(r"ports = (\{[^}]*\})", text)
    assert health and ast.literal_eval(health[1]) == WEB_PORTS
    assert "SPILLWAY_WEB_HOST=0.0.0.0" in text
    assert re.search(r"^USER (?!root)", text, re.M), "run as a non-root user"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set((PROJECT_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".stack", ".env", "test-artifacts", "*-data", "**/node_modules"} <= ignored
    for needed in ("app", "simulator", "schemas", "templates", "pyproject.toml", "README.md"):
        assert needed not in ignored
