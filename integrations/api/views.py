"""/api/v1/: views parse input, call clinics.selectors / clinics.services, shape the output.

Every query is scoped to the key's clinic (`request.auth.clinic`): another clinic's ids answer
404 exactly like ids that don't exist.
"""

from __future__ import annotations

import datetime as dt
import time

from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bot import state
from bot.models import (
    Conversation,
    ConversationMode,
    Direction,
    Message,
    MessageStatus,
    PeriodicJob,
)
from clinics import selectors, services
from clinics.models import (
    UPCOMING_STATUSES,
    Appointment,
    AppointmentSource,
    AppointmentStatus,
    Clinic,
    Doctor,
    Patient,
    Slot,
    SlotStatus,
    Specialty,
)
from integrations.api import serializers as s
from integrations.api.errors import ApiError
from integrations.api.idempotency import IdempotentMixin, idempotent
from integrations.models import ApiKey, WebhookDelivery

STARTED_AT = time.monotonic()
ERRORS = {
    400: s.ErrorSerializer,
    401: s.ErrorSerializer,
    403: s.ErrorSerializer,
    404: s.ErrorSerializer,
    409: s.ErrorSerializer,
    422: s.ErrorSerializer,
    429: s.ErrorSerializer,
}
IDEMPOTENCY_PARAMETER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description="Retry-safe writes: the first answer is stored and replayed for 24 h.",
)


def _not_found(what: str) -> ApiError:
    return ApiError(status.HTTP_404_NOT_FOUND, f"{what}_not_found", f"no such {what}")


def _clinic(request: Request) -> Clinic:
    key: ApiKey = request.auth
    return key.clinic


def _actor(request: Request) -> services.Actor:
    key: ApiKey = request.auth
    return services.Actor.api(key.pk, f"api key {key.name}")


def _holder(request: Request, holder: str | None) -> str | None:
    """Holds made through the API belong to the key: one key can't use another's hold."""
    return f"api:{request.auth.pk}:{holder}" if holder else None


def _valid(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _specialty(clinic: Clinic, value: str | None) -> Specialty | None:
    if not value:
        return None
    lookup = (
        Q(slug=value) | Q(pk=int(value)) if value.isdigit() and len(value) < 18 else Q(slug=value)
    )
    specialty = Specialty.objects.filter(lookup, clinic=clinic).first()
    if specialty is None:
        raise _not_found("specialty")
    return specialty


def _appointment(clinic: Clinic, appointment_id: int) -> Appointment:
    appointment = (
        Appointment.objects.filter(clinic=clinic, pk=appointment_id)
        .select_related("doctor", "specialty")
        .first()
    )
    if appointment is None:
        raise _not_found("appointment")
    return appointment


# --- health --------------------------------------------------------------------------------------


def _database_status() -> dict:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return {"status": "down"}
    return {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def _health(detailed: bool) -> tuple[dict, int]:
    now = timezone.now()
    services_status = {"database": _database_status(), "redis": state.ping()}
    healthy = services_status["database"]["status"] == "up"
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": now,
        "services": services_status,
    }
    if detailed and healthy:
        outbox = Message.objects.filter(
            direction=Direction.OUT, status__in=[MessageStatus.QUEUED, MessageStatus.SENDING]
        )
        oldest = outbox.order_by("created_at").values_list("created_at", flat=True).first()
        webhooks = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING)
        last_run = (
            PeriodicJob.objects.order_by("-last_run_at")
            .values_list("last_run_at", flat=True)
            .first()
        )
        heartbeat_age = (now - last_run).total_seconds() if last_run else None
        local_today = timezone.localdate(now)
        body |= {
            "outbox": {
                "backlog": outbox.count(),
                "oldest_age_seconds": round((now - oldest).total_seconds(), 1) if oldest else 0,
            },
            "outgoing_webhooks": {"pending": webhooks.count()},
            "worker": {
                "last_heartbeat": last_run,
                "heartbeat_age_seconds": round(heartbeat_age, 1) if heartbeat_age else None,
                "status": "up" if heartbeat_age is not None and heartbeat_age < 60 else "down",
            },
            "metrics": {
                "total_conversaciones_activas": Conversation.objects.filter(closed_at=None).count(),
                "total_citas_hoy": Appointment.objects.filter(start_at__date=local_today).count(),
                "uptime_seconds": round(time.monotonic() - STARTED_AT),
            },
        }
    return body, status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE


class HealthView(APIView):
    """Liveness for load balancers: database and Redis status and latency. No key needed."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = []

    @extend_schema(responses={200: s.HealthSerializer, 503: s.HealthSerializer}, tags=["health"])
    def get(self, request: Request) -> Response:
        body, code = _health(detailed=False)
        return Response(body, status=code)


class DetailedHealthView(APIView):
    """Health plus the outbox backlog, outgoing webhooks and the worker heartbeat. No key."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = []

    @extend_schema(
        responses={200: s.DetailedHealthSerializer, 503: s.HealthSerializer}, tags=["health"]
    )
    def get(self, request: Request) -> Response:
        body, code = _health(detailed=True)
        return Response(body, status=code)


# --- slots ---------------------------------------------------------------------------------------


class AvailableSlotsView(APIView):
    @extend_schema(
        parameters=[s.AvailableQuerySerializer],
        responses={200: s.SlotPageSerializer, **ERRORS},
        tags=["citas"],
    )
    def get(self, request: Request) -> Response:
        clinic = _clinic(request)
        query = _valid(s.AvailableQuerySerializer, request.query_params)
        doctor = None
        if "doctor" in query:
            doctor = Doctor.objects.filter(clinic=clinic, pk=query["doctor"]).first()
            if doctor is None:
                raise _not_found("doctor")
        page = selectors.available_slots(
            clinic=clinic,
            specialty=_specialty(clinic, query.get("specialty")),
            doctor=doctor,
            date_from=query.get("date_from"),
            date_to=query.get("date_to"),
            cursor=query.get("cursor"),
            page_size=query["page_size"],
        )
        return Response(
            {
                "results": [s.SlotSerializer.of(slot, clinic) for slot in page.slots],
                "next_cursor": page.next_cursor,
                "has_more": page.has_more,
            }
        )


class SlotHoldView(IdempotentMixin, APIView):
    @extend_schema(
        request=s.HoldRequestSerializer,
        responses={201: s.HoldSerializer, **ERRORS},
        parameters=[IDEMPOTENCY_PARAMETER],
        tags=["citas"],
    )
    @idempotent
    def post(self, request: Request, slot_id: int) -> Response:
        data = _valid(s.HoldRequestSerializer, request.data)
        hold = services.slot_hold(
            clinic=_clinic(request),
            slot_id=slot_id,
            holder=_holder(request, data["holder"]),
            minutes=data.get("minutes"),
        )
        return Response(
            {"slot_id": hold.slot_id, "holder": data["holder"], "held_until": hold.expires_at},
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(
        parameters=[OpenApiParameter("holder", str, required=False)],
        responses={204: None, **ERRORS},
        tags=["citas"],
    )
    def delete(self, request: Request, slot_id: int) -> Response:
        holder = request.query_params.get("holder") or "default"
        if len(holder) > 60:
            raise ApiError(status.HTTP_400_BAD_REQUEST, "invalid_input", "holder is too long")
        released = services.slot_release(
            clinic=_clinic(request), slot_id=slot_id, holder=_holder(request, holder)
        )
        if not released:
            raise ApiError(status.HTTP_404_NOT_FOUND, "hold_not_found", "no live hold of yours")
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- appointments --------------------------------------------------------------------------------


class AppointmentsView(IdempotentMixin, APIView):
    @extend_schema(
        request=s.AppointmentCreateSerializer,
        responses={201: s.AppointmentSerializer, **ERRORS},
        parameters=[IDEMPOTENCY_PARAMETER],
        tags=["citas"],
    )
    @idempotent
    def post(self, request: Request) -> Response:
        clinic = _clinic(request)
        data = _valid(s.AppointmentCreateSerializer, request.data)
        if "patient_id" in data:
            patient = Patient.objects.filter(clinic=clinic, pk=data["patient_id"]).first()
        else:
            patient = selectors.patient_by_document(
                clinic=clinic, document=data["patient_document"]
            )
        if patient is None:
            raise _not_found("patient")
        appointment = services.appointment_book(
            clinic=clinic,
            patient=patient,
            slot_id=data["slot_id"],
            actor=_actor(request),
            source=AppointmentSource.API,
            specialty=_specialty(clinic, data.get("specialty")),
            notes=data["notes"],
            holder=_holder(request, data.get("holder")),
        )
        appointment = _appointment(clinic, appointment.pk)
        return Response(
            s.AppointmentSerializer.of(appointment, clinic), status=status.HTTP_201_CREATED
        )


class AppointmentDetailView(APIView):
    @extend_schema(responses={200: s.AppointmentSerializer, **ERRORS}, tags=["citas"])
    def get(self, request: Request, appointment_id: int) -> Response:
        clinic = _clinic(request)
        return Response(s.AppointmentSerializer.of(_appointment(clinic, appointment_id), clinic))


class AppointmentCancelView(IdempotentMixin, APIView):
    @extend_schema(
        request=s.CancelSerializer,
        responses={200: s.AppointmentSerializer, **ERRORS},
        parameters=[IDEMPOTENCY_PARAMETER],
        tags=["citas"],
    )
    @idempotent
    def post(self, request: Request, appointment_id: int) -> Response:
        clinic = _clinic(request)
        data = _valid(s.CancelSerializer, request.data)
        _appointment(clinic, appointment_id)
        services.appointment_cancel(
            clinic=clinic,
            appointment_id=appointment_id,
            actor=_actor(request),
            reason=data["reason"],
        )
        return Response(s.AppointmentSerializer.of(_appointment(clinic, appointment_id), clinic))


class AppointmentConfirmView(IdempotentMixin, APIView):
    @extend_schema(
        request=None,
        responses={200: s.AppointmentSerializer, **ERRORS},
        parameters=[IDEMPOTENCY_PARAMETER],
        tags=["citas"],
    )
    @idempotent
    def post(self, request: Request, appointment_id: int) -> Response:
        clinic = _clinic(request)
        _appointment(clinic, appointment_id)
        services.appointment_set_status(
            clinic=clinic,
            appointment_id=appointment_id,
            status=AppointmentStatus.CONFIRMED,
            actor=_actor(request),
        )
        return Response(s.AppointmentSerializer.of(_appointment(clinic, appointment_id), clinic))


class AppointmentRescheduleView(IdempotentMixin, APIView):
    @extend_schema(
        request=s.RescheduleSerializer,
        responses={200: s.AppointmentSerializer, **ERRORS},
        parameters=[IDEMPOTENCY_PARAMETER],
        tags=["citas"],
    )
    @idempotent
    def post(self, request: Request, appointment_id: int) -> Response:
        clinic = _clinic(request)
        data = _valid(s.RescheduleSerializer, request.data)
        _appointment(clinic, appointment_id)
        new = services.appointment_reschedule(
            clinic=clinic,
            appointment_id=appointment_id,
            new_slot_id=data["slot_id"],
            actor=_actor(request),
            holder=_holder(request, data.get("holder")),
        )
        return Response(s.AppointmentSerializer.of(_appointment(clinic, new.pk), clinic))


class UpcomingAppointmentsView(APIView):
    @extend_schema(
        parameters=[s.UpcomingQuerySerializer],
        responses={200: s.AppointmentPageSerializer, **ERRORS},
        tags=["citas"],
    )
    def get(self, request: Request) -> Response:
        clinic = _clinic(request)
        query = _valid(s.UpcomingQuerySerializer, request.query_params)
        now = timezone.now()
        appointments = Appointment.objects.filter(
            clinic=clinic,
            status__in=UPCOMING_STATUSES,
            start_at__gt=now,
            start_at__lt=now + dt.timedelta(days=query["dias"]),
        )
        if query.get("cursor"):
            after_start, after_id = selectors.decode_cursor(query["cursor"])
            appointments = appointments.filter(
                Q(start_at__gt=after_start) | Q(start_at=after_start, pk__gt=after_id)
            )
        size = query["page_size"]
        page = list(
            appointments.select_related("doctor", "specialty").order_by("start_at", "pk")[
                : size + 1
            ]
        )
        has_more = len(page) > size
        page = page[:size]
        return Response(
            {
                "results": [s.AppointmentSerializer.of(a, clinic) for a in page],
                "next_cursor": selectors.encode_cursor(page[-1]) if has_more else None,
                "has_more": has_more,
            }
        )


# --- patients ------------------------------------------------------------------------------------


class PatientsView(IdempotentMixin, APIView):
    @extend_schema(
        parameters=[s.PatientQuerySerializer],
        responses={200: s.PatientSerializer, **ERRORS},
        tags=["pacientes"],
    )
    def get(self, request: Request) -> Response:
        clinic = _clinic(request)
        query = _valid(s.PatientQuerySerializer, request.query_params)
        patient = selectors.patient_by_document(clinic=clinic, document=query["documento"])
        if patient is None:
            raise _not_found("patient")
        upcoming = selectors.patient_upcoming_appointments(clinic=clinic, patient=patient)
        return Response(s.PatientSerializer.of(patient, upcoming, clinic))

    @extend_schema(
        request=s.PatientCreateSerializer,
        responses={201: s.PatientSerializer, **ERRORS},
        parameters=[IDEMPOTENCY_PARAMETER],
        tags=["pacientes"],
    )
    @idempotent
    def post(self, request: Request) -> Response:
        clinic = _clinic(request)
        data = _valid(s.PatientCreateSerializer, request.data)
        patient = services.patient_register(
            clinic=clinic,
            document=data["document"],
            full_name=data["full_name"],
            birth_date=data["birth_date"],
            whatsapp_id=data["whatsapp_id"],
            actor=_actor(request),
        )
        return Response(s.PatientSerializer.of(patient, [], clinic), status=status.HTTP_201_CREATED)


# --- statistics ----------------------------------------------------------------------------------


class RealtimeStatsView(APIView):
    @extend_schema(responses={200: s.RealtimeStatsSerializer, **ERRORS}, tags=["estadisticas"])
    def get(self, request: Request) -> Response:
        clinic = _clinic(request)
        now = timezone.now()
        today = timezone.localdate(now, clinic.tz)
        start = dt.datetime.combine(today, dt.time.min, tzinfo=clinic.tz)
        end = start + dt.timedelta(days=1)
        idle = now - dt.timedelta(minutes=30)
        conversations = Conversation.objects.filter(
            clinic=clinic, closed_at=None, last_activity_at__gte=idle
        ).aggregate(
            active=Count("pk"),
            human=Count("pk", filter=Q(mode=ConversationMode.HUMAN)),
            needs_staff=Count("pk", filter=Q(needs_staff=True)),
        )
        by_status = dict(
            Appointment.objects.filter(clinic=clinic, start_at__gte=start, start_at__lt=end)
            .values_list("status")
            .annotate(n=Count("pk"))
            .values_list("status", "n")
        )
        free_today = Slot.objects.filter(
            clinic=clinic,
            start_at__gte=max(start, now),
            start_at__lt=end,
            status__in=[SlotStatus.FREE, SlotStatus.HELD],
        ).filter(Q(status=SlotStatus.FREE) | Q(held_until__lte=now))
        return Response(
            {
                "timestamp": now,
                "conversaciones_activas": conversations["active"],
                "conversaciones_con_personal": conversations["human"],
                "piden_asesor": conversations["needs_staff"],
                "citas_hoy": {st: by_status.get(st, 0) for st in AppointmentStatus.values},
                "slots_libres_hoy": free_today.count(),
                "citas_agendadas_ultima_hora": Appointment.objects.filter(
                    clinic=clinic, created_at__gte=now - dt.timedelta(hours=1)
                ).count(),
            }
        )
