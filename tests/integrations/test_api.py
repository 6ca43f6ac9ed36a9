"""/api/v1/: API keys, clinic scoping, rate limit, idempotency and every error shape."""

import datetime as dt

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from clinics import services
from clinics.models import Appointment, AppointmentSource, AppointmentStatus, Patient, Slot
from integrations.keys import api_key_create, api_key_revoke
from integrations.models import ApiKey, IdempotentResponse
from sophia_web import metrics
from tests.conftest import make_slots

pytestmark = pytest.mark.django_db

API = "/api/v1"


@pytest.fixture(autouse=True)
def _fresh_throttle():
    cache.clear()
    yield


@pytest.fixture
def write_key(clinic):
    return api_key_create(clinic=clinic, name="HIS", scope=ApiKey.Scope.WRITE)


@pytest.fixture
def read_key(clinic):
    return api_key_create(clinic=clinic, name="BI", scope=ApiKey.Scope.READ)


@pytest.fixture
def other_key(other_clinic):
    return api_key_create(clinic=other_clinic, name="Norte HIS", scope=ApiKey.Scope.WRITE)


def client_for(raw: str | None) -> Client:
    headers = {"Authorization": f"Bearer {raw}"} if raw else {}
    return Client(headers=headers)


@pytest.fixture
def api(write_key):
    return client_for(write_key[1])


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert response["Content-Type"].startswith("application/json")
    return body["error"]


def book(clinic, patient, slot) -> Appointment:
    return services.appointment_book(
        clinic=clinic,
        patient=patient,
        slot_id=slot.pk,
        actor=services.Actor.system("test"),
        source=AppointmentSource.STAFF,
    )


# --- keys ------------------------------------------------------------------------------------


def test_it_stores_only_a_hash_of_the_key_and_shows_it_once(clinic):
    key, raw = api_key_create(clinic=clinic, name="HIS")
    assert raw.startswith(f"sk_{key.prefix}_")
    secret = raw.split("_", 2)[2]
    key.refresh_from_db()
    assert secret not in key.key_hash and len(key.key_hash) == 64
    assert all(secret not in str(v) for v in ApiKey.objects.values().get(pk=key.pk).values())


def test_it_answers_401_without_a_key_or_with_a_bad_or_revoked_one(clinic, write_key, slots):
    url = f"{API}/citas/disponibles/"
    response = client_for(None).get(url)
    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")

    for raw in ("sk_nothing", "sk_abc_def", "garbage", write_key[1] + "x"):
        response = client_for(raw).get(url)
        assert response.status_code == 401, raw
        assert error_of(response)["code"] == "invalid_api_key"

    api_key_revoke(clinic=clinic, key_id=write_key[0].pk)
    response = client_for(write_key[1]).get(url)
    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_revoked"


def test_it_accepts_the_key_in_x_api_key_too(write_key, slots):
    response = Client(headers={"X-Api-Key": write_key[1]}).get(f"{API}/citas/disponibles/")
    assert response.status_code == 200


def test_a_read_key_cannot_write(read_key, slots, patient):
    response = client_for(read_key[1]).post(
        f"{API}/citas/",
        {"slot_id": slots[0].pk, "patient_id": patient.pk},
        content_type="application/json",
    )
    assert response.status_code == 403
    assert error_of(response)["code"] == "insufficient_scope"
    assert client_for(read_key[1]).get(f"{API}/citas/disponibles/").status_code == 200


def test_the_management_command_creates_lists_and_revokes_keys(clinic, capsys):
    call_command("api_keys", "create", clinic.slug, "--name", "HIS", "--scope", "write")
    out = capsys.readouterr().out
    raw = next(word for word in out.split() if word.startswith("sk_"))
    key = ApiKey.objects.get(clinic=clinic)
    assert key.can_write and raw.startswith(f"sk_{key.prefix}_")
    assert client_for(raw).get(f"{API}/citas/proximas/").status_code == 200
    call_command("api_keys", "list", clinic.slug)
    assert key.prefix in capsys.readouterr().out
    call_command("api_keys", "revoke", clinic.slug, key.prefix)
    assert client_for(raw).get(f"{API}/citas/proximas/").status_code == 401


# --- scoping ---------------------------------------------------------------------------------


def test_it_never_shows_or_touches_another_clinics_data(
    clinic, other_clinic, other_key, patient, slots
):
    appointment = book(clinic, patient, slots[0])
    other = client_for(other_key[1])
    assert other.get(f"{API}/citas/disponibles/").json()["results"] == []
    assert other.get(f"{API}/citas/proximas/").json()["results"] == []
    for response in (
        other.get(f"{API}/citas/{appointment.pk}/"),
        other.post(f"{API}/citas/{appointment.pk}/cancelar/", {}, content_type="application/json"),
        other.post(
            f"{API}/citas/{appointment.pk}/reprogramar/",
            {"slot_id": slots[1].pk},
            content_type="application/json",
        ),
        other.get(f"{API}/pacientes/", {"documento": patient.document}),
    ):
        assert response.status_code == 404, response.content
        assert error_of(response)["code"].endswith("_not_found")
    response = other.post(f"{API}/slots/{slots[2].pk}/hold/", {}, content_type="application/json")
    assert response.status_code == 404
    assert error_of(response)["code"] == "slot_not_found"
    response = other.post(
        f"{API}/citas/", {"slot_id": slots[2].pk, "patient_id": patient.pk},
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 404
    assert error_of(response)["code"] == "patient_not_found"
    appointment.refresh_from_db()
    assert appointment.status == AppointmentStatus.BOOKED
    assert Slot.objects.get(pk=slots[2].pk).status == "free"
    stats = other.get(f"{API}/estadisticas/tiempo-real/").json()
    assert stats["citas_hoy"]["booked"] == 0 and stats["slots_libres_hoy"] == 0


# --- the endpoints ---------------------------------------------------------------------------


def test_it_pages_available_slots_by_keyset_cursor(api, doctor, specialty, slots):
    seen, cursor = [], None
    while True:
        params = {"page_size": 7, "specialty": specialty.slug, "doctor": doctor.pk}
        if cursor:
            params["cursor"] = cursor
        body = api.get(f"{API}/citas/disponibles/", params).json()
        seen += [row["id"] for row in body["results"]]
        cursor = body["next_cursor"]
        assert body["has_more"] == bool(cursor)
        if not cursor:
            break
    assert seen == [s.pk for s in slots]
    first = api.get(f"{API}/citas/disponibles/", {"page_size": 1}).json()["results"][0]
    assert first["doctor"] == {"id": doctor.pk, "name": doctor.full_name}
    assert first["start_at"].endswith("-05:00")  # the clinic's time zone


def test_it_filters_available_slots_by_dates(api, clinic, doctor, slots):
    tomorrow = timezone.localdate() + dt.timedelta(days=1)
    later = make_slots(doctor, slots[-1].end_at + dt.timedelta(days=3), 2)
    body = api.get(f"{API}/citas/disponibles/", {"date_to": tomorrow.isoformat(), "page_size": 50})
    assert {r["id"] for r in body.json()["results"]} == {s.pk for s in slots}
    day = timezone.localdate(later[0].start_at, clinic.tz).isoformat()
    body = api.get(f"{API}/citas/disponibles/", {"date_from": day, "date_to": day}).json()
    assert [r["id"] for r in body["results"]] == [s.pk for s in later]


def test_it_holds_books_confirms_reschedules_and_cancels(api, clinic, patient, slots):
    response = api.post(
        f"{API}/slots/{slots[0].pk}/hold/", {"holder": "caja-1"}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["holder"] == "caja-1"
    response = api.post(
        f"{API}/citas/",
        {
            "slot_id": slots[0].pk,
            "patient_document": patient.document,
            "holder": "caja-1",
            "notes": "control",
            "specialty": "medicina-general",
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["status"] == "booked" and created["source"] == "api"
    assert created["specialty"]["slug"] == "medicina-general"
    audit = clinic.audit_events.filter(action="appointment.book").latest("at")
    assert audit.actor_type == "api"

    response = api.post(f"{API}/citas/{created['id']}/confirmar/")
    assert response.status_code == 200 and response.json()["status"] == "confirmed"

    response = api.post(
        f"{API}/citas/{created['id']}/reprogramar/",
        {"slot_id": slots[5].pk},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    moved = response.json()
    assert moved["slot_id"] == slots[5].pk and moved["rescheduled_from_id"] == created["id"]

    upcoming = api.get(f"{API}/citas/proximas/", {"dias": 7}).json()
    assert [a["id"] for a in upcoming["results"]] == [moved["id"]]

    response = api.post(
        f"{API}/citas/{moved['id']}/cancelar/", {"reason": "viaje"}, content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert api.get(f"{API}/citas/proximas/").json()["results"] == []


def test_it_releases_its_own_hold_only(api, clinic, slots, other_key):
    api.post(f"{API}/slots/{slots[0].pk}/hold/", {}, content_type="application/json")
    assert Slot.objects.get(pk=slots[0].pk).status == "held"
    response = api.delete(f"{API}/slots/{slots[0].pk}/hold/?holder=otro")
    assert response.status_code == 404 and error_of(response)["code"] == "hold_not_found"
    assert api.delete(f"{API}/slots/{slots[0].pk}/hold/").status_code == 204
    assert Slot.objects.get(pk=slots[0].pk).status == "free"


def test_it_answers_409_when_the_slot_is_taken(api, clinic, patient, slots):
    book(clinic, patient, slots[0])
    other = Patient.objects.create(clinic=clinic, document="99887766", full_name="Luis Pérez")
    response = api.post(
        f"{API}/citas/", {"slot_id": slots[0].pk, "patient_id": other.pk},
        content_type="application/json",
    )  # fmt: skip
    assert response.status_code == 409
    assert error_of(response)["code"] == "slot_taken"


def test_it_looks_patients_up_by_document_and_registers_them(api, clinic, patient, slots):
    book(clinic, patient, slots[0])
    body = api.get(f"{API}/pacientes/", {"documento": patient.document}).json()
    assert body["id"] == patient.pk and body["whatsapp"] == "…4567"
    assert [a["slot_id"] for a in body["upcoming"]] == [slots[0].pk]
    response = api.get(f"{API}/pacientes/", {"documento": "12345678"})
    assert response.status_code == 404 and error_of(response)["code"] == "patient_not_found"
    response = api.post(
        f"{API}/pacientes/",
        {"document": "55566677", "full_name": "Rosa Díaz", "birth_date": "1990-02-03"},
        content_type="application/json",
    )
    assert response.status_code == 201
    response = api.post(
        f"{API}/pacientes/",
        {"document": "55566677", "full_name": "Rosa Díaz", "birth_date": "1990-02-03"},
        content_type="application/json",
    )
    assert response.status_code == 409 and error_of(response)["code"] == "patient_exists"


def test_it_reports_realtime_stats(api, clinic, patient, doctor):
    soon = timezone.now() + dt.timedelta(hours=2)
    today_end = timezone.localtime(timezone.now(), clinic.tz).replace(hour=23, minute=0)
    if soon >= today_end:
        pytest.skip("too late in the clinic's day for a slot today")
    [slot, _free] = make_slots(doctor, soon.replace(second=0, microsecond=0), 2)
    book(clinic, patient, slot)
    body = api.get(f"{API}/estadisticas/tiempo-real/").json()
    assert body["citas_hoy"]["booked"] == 1
    assert body["slots_libres_hoy"] == 1
    assert body["citas_agendadas_ultima_hora"] == 1


def test_health_needs_no_key_and_reports_the_backlog(db):
    body = Client().get(f"{API}/health/").json()
    assert body["status"] == "healthy"
    assert body["services"]["database"]["status"] == "up"
    assert body["services"]["redis"]["status"] == "up"
    detailed = Client().get(f"{API}/health/detailed/").json()
    assert detailed["outbox"] == {"backlog": 0, "oldest_age_seconds": 0}
    assert detailed["worker"]["status"] == "down"  # no worker in this test
    assert detailed["outgoing_webhooks"] == {"pending": 0}
    assert "uptime_seconds" in detailed["metrics"]


def test_the_schema_and_docs_are_served_without_a_cdn(db):
    schema = Client().get(f"{API}/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/citas/disponibles/" in paths and "/api/v1/slots/{slot_id}/hold/" in paths
    for page in ("docs", "redoc"):
        html = Client().get(f"{API}/{page}/").content.decode()
        assert "/static/drf_spectacular_sidecar/" in html
        assert "cdn" not in html.lower() and "unpkg" not in html.lower()


# --- error shapes ----------------------------------------------------------------------------


def test_every_error_has_the_same_shape_and_a_stable_code(api, slots):
    json = "application/json"
    backwards = {"date_from": "2030-01-02", "date_to": "2030-01-01"}
    cases = [
        (api.get(f"{API}/no-such-thing/"), 404, "not_found"),
        (api.post(f"{API}/slots/-1/hold/"), 404, "not_found"),
        (api.get(f"{API}/citas/disponibles/", {"page_size": 51}), 400, "validation_error"),
        (api.get(f"{API}/citas/disponibles/", {"cursor": "nonsense"}), 400, "invalid_cursor"),
        (api.get(f"{API}/citas/disponibles/", {"specialty": "x"}), 404, "specialty_not_found"),
        (api.get(f"{API}/citas/disponibles/", {"doctor": 999999}), 404, "doctor_not_found"),
        (
            api.get(f"{API}/citas/disponibles/", backwards),
            400,
            "validation_error",
        ),
        (api.get(f"{API}/citas/proximas/", {"dias": "many"}), 400, "validation_error"),
        (api.get(f"{API}/pacientes/", {"documento": "12ab"}), 400, "validation_error"),
        (api.get(f"{API}/citas/123456/"), 404, "appointment_not_found"),
        (api.delete(f"{API}/citas/"), 405, "method_not_allowed"),
        (
            api.post(f"{API}/citas/", "{not json", content_type="application/json"),
            400,
            "malformed_json",
        ),
        (
            api.post(f"{API}/citas/", "a=b", content_type="text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            api.post(f"{API}/citas/", {"slot_id": slots[0].pk}, content_type="application/json"),
            400,
            "validation_error",
        ),
        (
            api.post(f"{API}/slots/{slots[0].pk}/hold/", {"minutes": 0}, content_type=json),
            400,
            "validation_error",
        ),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (code, response.content)
        assert error_of(response)["code"] == code
    details = error_of(cases[2][0])["details"]
    assert "page_size" in details


def test_it_rate_limits_per_key_with_retry_after(settings, write_key, read_key):
    # DRF reloads its settings on pytest-django's settings change (and back after the test).
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "3/min"},
    }
    hits = metrics.RATE_LIMIT_HITS.labels(scope="api")._value.get()
    api = client_for(write_key[1])
    statuses = [api.get(f"{API}/citas/proximas/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = api.get(f"{API}/citas/proximas/")
    assert response.status_code == 429
    assert 0 < int(response["Retry-After"]) <= 60
    error = error_of(response)
    assert error["code"] == "rate_limited" and error["details"]["retry_after"] > 0
    assert metrics.RATE_LIMIT_HITS.labels(scope="api")._value.get() == hits + 2
    # Per key: another key of the same clinic is not held back.
    assert client_for(read_key[1]).get(f"{API}/citas/proximas/").status_code == 200
    # Health checks are not rate limited.
    assert all(Client().get(f"{API}/health/").status_code == 200 for _ in range(5))


# --- idempotency -----------------------------------------------------------------------------


def test_a_retried_write_with_the_same_idempotency_key_books_once(api, clinic, patient, slots):
    body = {"slot_id": slots[0].pk, "patient_id": patient.pk}
    headers = {"Idempotency-Key": "order-1"}
    first = api.post(f"{API}/citas/", body, content_type="application/json", headers=headers)
    again = api.post(f"{API}/citas/", body, content_type="application/json", headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Appointment.objects.filter(slot=slots[0]).count() == 1

    other = api.post(
        f"{API}/citas/",
        {"slot_id": slots[1].pk, "patient_id": patient.pk},
        content_type="application/json",
        headers=headers,
    )
    assert other.status_code == 422
    assert error_of(other)["code"] == "idempotency_key_reused"


def test_an_error_answer_is_replayed_too_and_a_key_in_progress_is_409(
    api, clinic, patient, slots, write_key
):
    book(clinic, patient, slots[0])
    body = {"slot_id": slots[0].pk, "patient_id": patient.pk}
    headers = {"Idempotency-Key": "k2"}
    first = api.post(f"{API}/citas/", body, content_type="application/json", headers=headers)
    again = api.post(f"{API}/citas/", body, content_type="application/json", headers=headers)
    assert first.status_code == again.status_code == 409
    assert error_of(again)["code"] == "patient_overlap" or error_of(again)["code"] == "slot_taken"

    # A request still running with the same key and body: 409; abandoned for a minute: retried.
    free = {"slot_id": slots[4].pk, "patient_id": patient.pk}
    first = api.post(
        f"{API}/citas/", free, content_type="application/json", headers={"Idempotency-Key": "k3"}
    )
    IdempotentResponse.objects.filter(key="k3").update(status_code=0, body=None)
    Appointment.objects.filter(slot=slots[4]).delete()
    Slot.objects.filter(pk=slots[4].pk).update(status="free")
    response = api.post(
        f"{API}/citas/", free, content_type="application/json", headers={"Idempotency-Key": "k3"}
    )
    assert response.status_code == 409
    assert error_of(response)["code"] == "idempotency_in_progress"
    IdempotentResponse.objects.filter(key="k3").update(
        created_at=timezone.now() - dt.timedelta(minutes=2)
    )
    response = api.post(
        f"{API}/citas/", free, content_type="application/json", headers={"Idempotency-Key": "k3"}
    )
    assert first.status_code == response.status_code == 201
    assert IdempotentResponse.objects.get(key="k3").status_code == 201
