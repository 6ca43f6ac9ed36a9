"""Headers for the static files servestatic serves from daphne (see MIDDLEWARE in settings)."""

from __future__ import annotations

from wsgiref.headers import Headers

from django.conf import settings


def security_headers(headers: Headers, path: str, url: str) -> None:
    """What Django's SecurityMiddleware adds to every other response, for a static file.

    servestatic's middleware comes first in the chain, so its responses never pass through
    SecurityMiddleware; this hook (SERVESTATIC_ADD_HEADERS_FUNCTION) runs once per file when
    servestatic indexes it. HSTS, which Django sends only over HTTPS, is left to the proxy that
    terminates TLS (nginx serves /static/ itself there).
    """
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers["X-Content-Type-Options"] = "nosniff"
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        if not isinstance(policy, str):
            policy = ",".join(policy)
        headers["Referrer-Policy"] = policy
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers["Cross-Origin-Opener-Policy"] = settings.SECURE_CROSS_ORIGIN_OPENER_POLICY
