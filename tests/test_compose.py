"""compose.yml, Dockerfile and nginx.conf, checked by reading (Docker isn't on these machines)."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = re.compile(r"^\$\{([A-Z_]+):\?[^}]*\}$")
SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|_KEY|AUTH)")
SECRETS = {
    "SECRET_KEY",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yml").read_text())


def env_of(compose: dict, service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment should be a mapping"
    return {k: str(v) for k, v in env.items()}


def test_it_defines_the_production_services(compose):
    assert {"postgres", "redis", "migrate", "web", "worker", "nginx"} <= set(compose["services"])
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["nginx"]["image"].startswith("nginx")
    assert "pgdata" in compose["volumes"]
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])


def test_it_builds_web_and_worker_from_the_dockerfile(compose):
    services = compose["services"]
    for name in ("web", "worker", "migrate"):
        assert services[name]["build"] == "."
    assert "daphne" in services["web"]["command"]
    assert "sophia_web.asgi:application" in services["web"]["command"]
    assert services["worker"]["command"] == ["python", "manage.py", "run_worker"]
    assert "migrate" in " ".join(services["migrate"]["command"])


def test_it_checks_health_and_orders_start_up(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "web", "nginx"):
        assert services[name]["healthcheck"]["test"], name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name in ("web", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"


def test_it_gives_web_and_worker_database_redis_and_every_secret_from_env(compose):
    for name in ("web", "worker", "migrate"):
        env = env_of(compose, name)
        assert env["DATABASE_URL"].startswith("postgresql://sophia:${POSTGRES_PASSWORD:?")
        assert env["DATABASE_URL"].endswith("@postgres:5432/sophia")
        assert env["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        assert env["REDIS_URL"].endswith("@redis:6379/0")
        assert env["DEBUG"] == "False"
        for secret in SECRETS:
            assert REQUIRED.match(env[secret]), f"{name}: {secret} must be ${{{secret}:?…}}"
            assert REQUIRED.match(env[secret]).group(1) == secret
        assert env["OPENAI_API_KEY"] == "${OPENAI_API_KEY:-}"
        assert "${ALLOWED_HOSTS:?" in env["ALLOWED_HOSTS"]


def test_it_hard_codes_no_secret(compose):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:[?-][^}]*\}", str(value)), f"{name}.{key}"
    text = (ROOT / "compose.yml").read_text()
    for url in re.findall(r"(?:postgresql|redis)://[^\s\"']+", text):
        credentials = url.split("://", 1)[1].split("@", 1)[0]
        assert "${" in credentials, f"hard-coded credentials in {url}"
    redis_command = " ".join(compose["services"]["redis"]["command"])
    assert "--requirepass ${REDIS_PASSWORD:?" in redis_command


def strings_in(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings_in(v)]
    return [node] if isinstance(node, str) else []


def test_it_documents_every_required_variable_in_the_env_example(compose):
    required = {
        name for value in strings_in(compose) for name in re.findall(r"\$\{([A-Z_]+):\?", value)
    }
    assert SECRETS | {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "ALLOWED_HOSTS"} <= required
    example = (ROOT / "deploy" / "env.example").read_text()
    documented = set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    assert required <= documented
    # No value filled in for a secret in the example.
    for line in example.splitlines():
        key, _, value = line.partition("=")
        if key in SECRETS | {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "OPENAI_API_KEY"}:
            assert value == "", key


def test_it_serves_static_files_and_websockets_through_nginx(compose):
    nginx = compose["services"]["nginx"]
    assert "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    assert "static:/srv/static:ro" in nginx["volumes"]
    assert "static:/app/var/static" in compose["services"]["migrate"]["volumes"]
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_pass http://sophia_web;" in conf
    assert "server web:8000;" in conf
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert "location /static/" in conf and "alias /srv/static/;" in conf
    assert conf.count("{") == conf.count("}")


def test_it_builds_a_slim_image_with_messages_and_static_files():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") or dockerfile.startswith("FROM")
    assert "FROM python:3.12-slim" in dockerfile
    assert "pip install ." in dockerfile
    assert "python scripts/i18n.py compile" in dockerfile
    assert "collectstatic --noinput" in dockerfile
    assert re.search(r"^USER \w+", dockerfile, re.MULTILINE), "run as a non-root user"
