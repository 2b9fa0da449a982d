"""deploy/docker-compose.yml checked without an engine, against the project: two replicas of the
image the Dockerfile builds (its user, read-only root, state volume, port, config path), a
config that loads through the project's loader with every `os.environ/` key the compose file
provides and `server.state.backend: redis` pointing at the compose Redis, and Prometheus
scraping both replicas."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from itsproxy.proxy.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROXIES = ("proxy-a", "proxy-b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def dockerfile(instruction: str) -> list[str]:
    lines = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    return [line.split(None, 1)[1] for line in lines if line.startswith(instruction + " ")]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to deploy/) or volume name."""
    out = {}
    for v in service.get("volumes", []):
        source, target = v.split(":")[:2]
        out[target] = source
    return out


def environment(service: dict[str, Any]) -> dict[str, str]:
    """What the container gets: `${VAR:?msg}` / `${VAR:-}` stand for values the operator supplies."""
    return {k: re.sub(r"\$\{(\w+)[^}]*\}", r"value-of-\1", str(v)) for k, v in service["environment"].items()}


def test_two_replicas_of_the_dockerfile_image(compose) -> None:
    services = compose["services"]
    assert set(services) >= {*PROXIES, "redis", "prometheus", "grafana"}
    (port,) = dockerfile("EXPOSE")
    (volume,) = dockerfile("VOLUME")
    (workdir,) = [w for w in dockerfile("WORKDIR")][-1:]
    cmd = yaml.safe_load(dockerfile("CMD")[0])
    config_path = cmd[cmd.index("--config") + 1]
    assert yaml.safe_load(volume) == [workdir], "the state volume is the working directory"
    host_ports = set()
    for name in PROXIES:
        s = services[name]
        build = s["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
        assert s["read_only"] is True and "/tmp" in s["tmpfs"]
        assert s.get("user") in (None, "its", "10001"), "the image's own unprivileged user"
        m = mounts(s)
        assert m[workdir] in compose["volumes"]
        assert (DEPLOY / m[config_path]).is_file()
        published, target = s["ports"][0].split(":")
        assert target == port
        host_ports.add(published)
        assert "healthcheck" not in s or "/health" in str(s["healthcheck"])  # the image's HEALTHCHECK
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"
    assert len(host_ports) == 2
    assert mounts(services[PROXIES[0]])[workdir] != mounts(services[PROXIES[1]])[workdir]
    assert "useradd" in dockerfile("RUN")[0] and "10001 its" in dockerfile("RUN")[0]
    assert dockerfile("USER") == ["its"]


def test_the_config_loads_with_what_compose_provides(compose, monkeypatch) -> None:
    for name in PROXIES:
        s = compose["services"][name]
        path = DEPLOY / mounts(s)["/app/config.yaml"]
        wanted = set(re.findall(r"os\.environ/(\w+)", path.read_text()))
        env = environment(s)
        assert wanted <= set(env), f"{name}: {wanted - set(env)} not set by docker-compose.yml"
        for key in list(env):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            if value:
                monkeypatch.setenv(key, value)
        config = load_config(str(path))
        state = config.server.state
        assert state.backend == "redis"
        url = urlsplit(state.url or "")
        assert url.hostname == "redis" and (url.port or 6379) == 6379
        assert not Path(config.server.state_dir).is_absolute(), "state lands in the working directory (the volume)"
        assert any(r.cache_ttl_s for r in config.routes)


def test_prometheus_scrapes_both_replicas(compose) -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "itsproxy")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    (port,) = dockerfile("EXPOSE")
    assert targets == {f"{name}:{port}" for name in PROXIES}
    assert mounts(compose["services"]["prometheus"])["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"
    for target, source in mounts(compose["services"]["grafana"]).items():
        if source.startswith("."):
            assert (DEPLOY / source).exists(), target


def test_healthcheck_polls_the_served_port() -> None:
    (check,) = dockerfile("HEALTHCHECK")
    (port,) = dockerfile("EXPOSE")
    assert f"127.0.0.1:{port}/health" in check
    cmd = shlex.split(dockerfile("CMD")[0].strip("[]").replace(",", " "))
    assert cmd[cmd.index("--port") + 1] == port
