"""compose.yml, Dockerfile and nginx.conf, checked by reading (Docker isn't on these machines)."""

import json
import re
from pathlib import Path

import pytest
import yaml

from sophia_web import metrics

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


NGINX_FILES = ("nginx.conf", "nginx-tls.conf", "nginx/common.conf", "nginx/locations.conf",
               "nginx/proxy.conf")  # fmt: skip


def nginx_conf(main: str = "nginx.conf") -> str:
    """The server config with its includes (of deploy/nginx/, mounted at /etc/nginx/sophia/)."""

    def expand(text: str) -> str:
        def include(match: re.Match) -> str:
            return expand((ROOT / "deploy" / "nginx" / match.group(1)).read_text())

        return re.sub(r"include /etc/nginx/sophia/([\w.]+);", include, text)

    return expand((ROOT / "deploy" / main).read_text())


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
    conf = nginx_conf()
    assert "proxy_pass http://sophia_web;" in conf
    assert "server web:8000 max_fails=3 fail_timeout=30s;" in conf
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert "location /static/" in conf and "alias /srv/static/;" in conf
    for path in NGINX_FILES:
        text = (ROOT / "deploy" / path).read_text()
        assert text.count("{") == text.count("}"), path
    assert "./deploy/nginx:/etc/nginx/sophia:ro" in nginx["volumes"]


def test_it_builds_a_slim_image_with_messages_and_static_files():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") or dockerfile.startswith("FROM")
    assert "FROM python:3.12-slim" in dockerfile
    assert "pip install ." in dockerfile
    assert "python scripts/i18n.py compile" in dockerfile
    assert "collectstatic --noinput" in dockerfile
    assert re.search(r"^USER \w+", dockerfile, re.MULTILINE), "run as a non-root user"


# --- scale, TLS, rate limits, monitoring (issue 10) ------------------------------------------


def test_it_runs_several_web_and_worker_replicas_sharing_the_metrics_directory(compose):
    services = compose["services"]
    assert services["web"]["deploy"]["replicas"] == "${WEB_REPLICAS:-2}"
    assert services["worker"]["deploy"]["replicas"] == "${WORKER_REPLICAS:-2}"
    for name in ("web", "worker"):
        assert env_of(compose, name)["PROMETHEUS_MULTIPROC_DIR"] == "/app/var/metrics"
        assert "metrics:/app/var/metrics" in services[name]["volumes"]
        assert REQUIRED.match(env_of(compose, name)["METRICS_TOKEN"])
    assert "metrics" in compose["volumes"]
    worker_check = services["worker"]["healthcheck"]["test"]
    assert worker_check[:4] == ["CMD", "python", "manage.py", "worker_health"]
    assert "mkdir -p var/metrics" in (ROOT / "Dockerfile").read_text()
    redis_command = " ".join(services["redis"]["command"])
    assert "--maxmemory ${REDIS_MAXMEMORY:-512mb}" in redis_command


def test_nginx_applies_the_seeds_rate_limits_and_logs_no_query_string():
    conf = nginx_conf()
    assert "limit_req_zone $binary_remote_addr zone=api_limit:10m rate=10r/s;" in conf
    assert "limit_req_zone $binary_remote_addr zone=webhook_limit:10m rate=100r/s;" in conf
    assert "limit_req_status 429;" in conf
    api = conf[conf.index("location /api/") :]
    assert api.index("limit_req zone=api_limit burst=20 nodelay;") < api.index("}")
    webhook = conf[conf.index("location /whatsapp/webhook/") :]
    assert webhook.index("limit_req zone=webhook_limit") < webhook.index("}")
    # Documents travel in query strings: the access log writes $uri, never $request or $args.
    log_format = conf[conf.index("log_format") : conf.index("access_log /var/log")]
    assert '"path":"$uri"' in log_format
    assert "$request " not in log_format and '$request"' not in log_format
    assert "$args" not in log_format and "$request_uri" not in log_format
    assert "location = /metrics" in conf
    assert "proxy_set_header X-Request-ID $request_id;" in conf


def test_tls_is_one_override_away(compose):
    tls = yaml.safe_load((ROOT / "compose.tls.yml").read_text())
    nginx = tls["services"]["nginx"]
    assert "./deploy/nginx-tls.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    assert "./deploy/tls:/etc/nginx/tls:ro" in nginx["volumes"]
    assert "${HTTPS_PORT:-443}:443" in nginx["ports"]
    conf = nginx_conf("nginx-tls.conf")
    assert "listen 443 ssl" in conf and "ssl_certificate /etc/nginx/tls/fullchain.pem;" in conf
    assert "return 301 https://$host$request_uri;" in conf
    assert "proxy_set_header Upgrade $http_upgrade;" in conf  # websockets over TLS too
    assert env_of(compose, "web")["SOPHIA_HTTPS"] == "${SOPHIA_HTTPS:-True}"


def test_monitoring_profile_scrapes_with_the_token_and_loads_the_alerts(compose):
    services = compose["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    [job] = config["scrape_configs"]
    assert job["authorization"]["credentials_file"] == "/prometheus/metrics_token"
    assert "/prometheus/metrics_token" in " ".join(services["prometheus"]["entrypoint"])
    assert job["static_configs"][0]["targets"] == ["web:8000"]


ALERTS = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "sophia.json").read_text())


def test_it_has_the_seeds_six_critical_alerts():
    rules = {r["alert"]: r for g in ALERTS["groups"] for r in g["rules"]}
    seed = {
        "SophiaHighErrorRate": ("sophia_http_requests_total", "> 0.05"),
        "SophiaHighLatency": ("histogram_quantile(0.95", "> 5"),
        "SophiaOrphanedLocks": ("sophia_locks_orphaned", "> 10"),
        "SophiaStaleConversations": ("sophia_conversaciones_stale", "> 50"),
        "SophiaDatabaseConnections": ("sophia_db_connections_max", "> 0.8"),
        "SophiaRedisMemory": ("sophia_redis_memory_max_bytes", "> 0.9"),
    }
    for name, fragments in seed.items():
        rule = rules[name]
        assert all(f in rule["expr"] for f in fragments), name
        assert rule["labels"]["severity"] == "critical"
        assert rule["for"] and rule["annotations"]["summary"]
    assert "[5m]" in rules["SophiaHighErrorRate"]["expr"]


def test_the_dashboard_has_the_seeds_panels():
    titles = [p["title"] for p in DASHBOARD["panels"]]
    for seed in (
        "Conversaciones activas",
        "Citas agendadas hoy",
        "Tasa de errores por flujo",
        "Latencia HTTP p50 / p95 / p99",
        "Locks activos",
        "Rate limiting hits",
    ):
        assert any(t.startswith(seed) for t in titles), seed
    kinds = {p["title"]: p["type"] for p in DASHBOARD["panels"]}
    assert kinds["Conversaciones activas"] == "gauge" and kinds["Locks activos"] == "gauge"
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(sophia_[a-z_]+)", expr))


@pytest.mark.django_db
def test_alerts_and_panels_only_use_metrics_sophia_exposes(client, clinic):

    # Labelled series appear once used.
    for metric, labels in (
        (metrics.LLM_CALLS, {"purpose": "x"}),
        (metrics.LLM_ERRORS, {"purpose": "x"}),
        (metrics.LLM_TOKENS, {"kind": "prompt"}),
        (metrics.BOOKING_CONFLICTS, {"code": "slot_taken"}),
        (metrics.RATE_LIMIT_HITS, {"scope": "api"}),
        (metrics.OUTGOING_WEBHOOK_DELIVERIES, {"outcome": "retry"}),
        (metrics.CITAS_AGENDADAS, {"clinic": "1"}),
    ):
        metric.labels(**labels)
    client.get("/health/")
    exposed = client.get("/metrics").content.decode()
    names = set(re.findall(r"^(sophia_[a-z_]+)", exposed, re.MULTILINE))
    used = {
        name
        for expr in [r["expr"] for g in ALERTS["groups"] for r in g["rules"]]
        + [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
        for name in metric_names_in(expr)
    }
    assert used and used <= names, sorted(used - names)
