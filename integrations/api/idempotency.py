"""Idempotency-Key on API writes: the first answer is stored and replayed for retries.

The key is claimed before the write runs (a row with status 0 = in progress), so two retries
racing each other cannot both book: the second gets 409 until the first has answered. A retry
with the same key but another body is refused (422), as it is surely a client bug. Server
errors are not stored: retrying them runs the write again. Rows are purged after
SOPHIA_IDEMPOTENCY_KEEP_HOURS (retention job).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Callable

from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response

from clinics.errors import BookingError
from integrations.api.errors import ApiError
from integrations.models import IdempotentResponse

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
IN_PROGRESS = 0
ABANDONED_AFTER = dt.timedelta(seconds=60)


def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.path}\n".encode())
    digest.update(request.body if request.body else b"")
    return digest.hexdigest()


def idempotent(view_method: Callable) -> Callable:
    """Wrap a DRF view method that writes (POST)."""

    @functools.wraps(view_method)
    def wrapper(self, request: Request, *args, **kwargs) -> Response:
        key = request.headers.get(HEADER, "")
        if not key:
            return view_method(self, request, *args, **kwargs)
        if len(key) > 255 or not key.isprintable():
            raise ApiError(
                status.HTTP_400_BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be printable and at most 255 characters",
            )
        fingerprint = _fingerprint(request)
        try:
            with transaction.atomic():
                record = IdempotentResponse.objects.create(
                    api_key=request.auth,
                    key=key,
                    fingerprint=fingerprint,
                    status_code=IN_PROGRESS,
                    body=None,
                )
        except IntegrityError:
            stored = IdempotentResponse.objects.get(api_key=request.auth, key=key)
            if stored.fingerprint != fingerprint:
                raise ApiError(
                    status.HTTP_422_UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for another request",
                ) from None
            if stored.status_code != IN_PROGRESS:
                response = Response(stored.body, status=stored.status_code)
                response[REPLAYED_HEADER] = "true"
                return response
            # In progress: another request is on it — or its process died: after a while the
            # retry takes the key over (the write itself is atomic, so it happened or not).
            now = timezone.now()
            taken_over = IdempotentResponse.objects.filter(
                pk=stored.pk, status_code=IN_PROGRESS, created_at__lt=now - ABANDONED_AFTER
            ).update(created_at=now)
            if not taken_over:
                raise ApiError(
                    status.HTTP_409_CONFLICT,
                    "idempotency_in_progress",
                    "a request with this Idempotency-Key is still being processed",
                ) from None
            record = stored
        try:
            response = self.handle_exception_safely(view_method, request, *args, **kwargs)
        except BaseException:
            record.delete()
            raise
        if response.status_code >= 500:
            record.delete()
        else:
            record.status_code = response.status_code
            record.body = response.data
            record.save(update_fields=["status_code", "body"])
        return response

    return wrapper


class IdempotentMixin:
    """Turns the view method's exceptions into responses, so error answers are stored too."""

    def handle_exception_safely(self, view_method, request, *args, **kwargs) -> Response:
        try:
            return view_method(self, request, *args, **kwargs)
        except Exception as exc:
            if isinstance(exc, APIException | BookingError):
                return self.handle_exception(exc)
            raise
