"""Every API error as `{"error": {"code", "message", "details"}}` with a stable code."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from clinics.errors import (
    AppointmentNotFound,
    BookingError,
    NotHolder,
    PatientExists,
    PatientOverlap,
    SlotTaken,
    WrongClinic,
)

logger = logging.getLogger(__name__)

# Booking refusals: conflicts are 409, missing things 404, the rest bad input (400).
BOOKING_STATUS = {
    SlotTaken: status.HTTP_409_CONFLICT,
    PatientOverlap: status.HTTP_409_CONFLICT,
    PatientExists: status.HTTP_409_CONFLICT,
    NotHolder: status.HTTP_409_CONFLICT,
    AppointmentNotFound: status.HTTP_404_NOT_FOUND,
}
NOT_FOUND_CODES = {"slot_not_found", "patient_not_found"}
CONFLICT_CODES = {"slot_in_past", "slot_blocked", "not_cancellable"}

# DRF's own exception classes → our codes (DRF's `default_code`s are mostly fine as they are).
DRF_CODES = {
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.ValidationError: "validation_error",
    exceptions.ParseError: "malformed_json",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
    exceptions.NotFound: "not_found",
}


class ApiError(exceptions.APIException):
    """An error with our own code and status (idempotency, bad query parameters…)."""

    def __init__(self, status_code: int, code: str, message: str, details: dict | None = None):
        self.status_code = status_code
        self.code = code
        self.details = details or {}
        super().__init__(message, code)


def error_body(code: str, message: str, details: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def booking_error_response(exc: BookingError) -> Response:
    if isinstance(exc, WrongClinic):
        # The API resolves everything else inside the key's clinic, so this is a slot id of
        # another clinic: answered exactly like one that doesn't exist (no leak).
        return Response(error_body("slot_not_found", "no such slot"), status=404)
    code = exc.code
    http_status = BOOKING_STATUS.get(type(exc))
    if http_status is None:
        if code in NOT_FOUND_CODES:
            http_status = status.HTTP_404_NOT_FOUND
        elif code in CONFLICT_CODES:
            http_status = status.HTTP_409_CONFLICT
        else:
            http_status = status.HTTP_400_BAD_REQUEST
    return Response(error_body(code, exc.message), status=http_status)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, BookingError):
        return booking_error_response(exc)
    if isinstance(exc, ApiError):
        return Response(error_body(exc.code, str(exc.detail), exc.details), status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        # Unexpected: logged with its traceback, answered 500 in our shape (never HTML).
        logger.exception("API error in %s", context.get("view").__class__.__name__)
        return Response(
            error_body("server_error", "internal error; it was logged"),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    code = DRF_CODES.get(type(exc))
    if code is None:
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
        code = codes if isinstance(codes, str) else "error"
    if isinstance(exc, exceptions.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = error_body(code, "the request has invalid fields", details)
    else:
        message = str(exc.detail) if hasattr(exc, "detail") else str(exc)
        details = {"retry_after": exc.wait} if isinstance(exc, exceptions.Throttled) else None
        response.data = error_body(code, message, details)
    return response


@csrf_exempt  # an API path: no session, no CSRF; any method gets the JSON 404
def not_found(request: HttpRequest, *args, **kwargs) -> JsonResponse:
    """Unknown /api/v1/ paths: JSON like every other API error, not Django's HTML page."""
    return JsonResponse(error_body("not_found", "no such API endpoint"), status=404)
