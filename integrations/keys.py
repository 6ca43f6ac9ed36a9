"""API keys: created (the secret shown once), looked up by prefix and hash, revoked."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from clinics.models import Clinic
from integrations.models import ApiKey

logger = logging.getLogger(__name__)

KEY_PREFIX = "sk_"


class ApiKeyError(Exception):
    code = "invalid_api_key"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_key_create(
    *,
    clinic: Clinic,
    name: str,
    scope: str = ApiKey.Scope.READ,
    created_by: AbstractBaseUser | None = None,
) -> tuple[ApiKey, str]:
    """A new key for the clinic; returns the row and the full key (never stored, shown once)."""
    name = " ".join(str(name or "").split())
    if not 1 <= len(name) <= 100:
        raise ApiKeyError("the name must have 1 to 100 characters")
    if scope not in ApiKey.Scope.values:
        raise ApiKeyError(f"scope must be one of {ApiKey.Scope.values}")
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        clinic=clinic,
        name=name,
        prefix=prefix,
        key_hash=_hash(secret),
        scope=scope,
        created_by=created_by,
    )
    logger.info("api key %s created for clinic %s scope=%s", prefix, clinic.pk, scope)
    return key, f"{KEY_PREFIX}{prefix}_{secret}"


def api_key_revoke(*, clinic: Clinic, key_id: int) -> ApiKey:
    """Revoke one of the clinic's keys (ApiKey.DoesNotExist for another clinic's)."""
    key = ApiKey.objects.get(pk=key_id, clinic=clinic)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        logger.info("api key %s revoked for clinic %s", key.prefix, clinic.pk)
    return key


def api_key_authenticate(raw: str) -> ApiKey:
    """The active key `raw` stands for, or ApiKeyError (unknown, malformed or revoked)."""
    if not isinstance(raw, str) or not raw.startswith(KEY_PREFIX):
        raise ApiKeyError("malformed API key")
    prefix, _, secret = raw[len(KEY_PREFIX) :].partition("_")
    if not prefix or not secret:
        raise ApiKeyError("malformed API key")
    key = ApiKey.objects.select_related("clinic").filter(prefix=prefix).first()
    # Compare a hash even for an unknown prefix, so timing says nothing about which exist.
    expected = key.key_hash if key is not None else _hash("")
    if not hmac.compare_digest(expected, _hash(secret)) or key is None:
        raise ApiKeyError("unknown API key")
    if key.revoked_at is not None:
        error = ApiKeyError("this API key was revoked")
        error.code = "api_key_revoked"
        raise error
    now = timezone.now()
    # Last-used is informative: at most one write a minute per key.
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key
