"""API key authentication, scope permission and the per-key rate limit (DRF classes)."""

from __future__ import annotations

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions, permissions, throttling
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request
from rest_framework.settings import api_settings

from integrations.keys import ApiKeyError, api_key_authenticate
from integrations.models import ApiKey
from sophia_web import logging as sophia_logging
from sophia_web import metrics


@dataclass(frozen=True)
class ApiClient:
    """`request.user` for an API call: the clinic's system behind one key."""

    key: ApiKey
    is_authenticated: bool = True
    is_active: bool = True

    @property
    def pk(self) -> str:
        return f"api-key-{self.key.pk}"


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer sk_…` (or `X-Api-Key: sk_…`)."""

    def authenticate(self, request: Request) -> tuple[ApiClient, ApiKey] | None:
        header = request.headers.get("Authorization", "")
        raw = header[7:].strip() if header.startswith("Bearer ") else ""
        raw = raw or request.headers.get("X-Api-Key", "").strip()
        if not raw:
            return None
        try:
            key = api_key_authenticate(raw)
        except ApiKeyError as exc:
            error = exceptions.AuthenticationFailed(str(exc), code=exc.code)
            raise error from exc
        sophia_logging.bind(clinic=key.clinic_id, action="api")
        return ApiClient(key), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="sophia"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "integrations.api.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "sk_<prefix>_<secret>"}


class HasApiKey(permissions.BasePermission):
    """A valid key; writes need a key with the write scope."""

    def has_permission(self, request: Request, view) -> bool:
        key = request.auth
        if not isinstance(key, ApiKey):
            raise exceptions.NotAuthenticated()
        if request.method not in permissions.SAFE_METHODS and not key.can_write:
            raise exceptions.PermissionDenied(
                "this API key may only read", code="insufficient_scope"
            )
        return True


class ApiKeyRateThrottle(throttling.SimpleRateThrottle):
    """N requests per window per key, counted in the cache (Redis in production)."""

    scope = "api_key"
    cache_format = "throttle_api_key_%(ident)s"

    def get_rate(self) -> str:
        # Read at each request (not frozen at import), so a settings change applies.
        return api_settings.DEFAULT_THROTTLE_RATES[self.scope]

    def get_cache_key(self, request: Request, view) -> str | None:
        if not isinstance(request.auth, ApiKey):
            return None  # unauthenticated calls are refused before, or are health checks
        return self.cache_format % {"ident": request.auth.pk}

    def throttle_failure(self) -> bool:
        metrics.RATE_LIMIT_HITS.labels(scope="api").inc()
        return False
