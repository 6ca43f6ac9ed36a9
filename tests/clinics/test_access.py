"""clinics.access: memberships decide the current clinic; everything else is a 404."""

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.http import Http404, HttpResponse
from django.test import RequestFactory

from clinics import access
from clinics.models import Doctor, Schedule, StaffMembership
from tests.conftest import make_user


def request_for(user, clinic_id=None):
    request = RequestFactory().get("/")
    request.user = user
    request.session = SessionStore()
    if clinic_id is not None:
        request.session[access.SESSION_KEY] = clinic_id
    return request


@access.staff_required
def staff_view(request):
    return HttpResponse(f"{request.clinic.slug}:{request.membership.role}")


@access.clinic_admin_required
def admin_view(request):
    return HttpResponse(request.clinic.slug)


def test_it_lists_only_the_users_clinics(clinic, other_clinic, receptionist, other_staff):
    assert list(access.staff_clinics(receptionist)) == [clinic]
    assert list(access.staff_clinics(other_staff)) == [other_clinic]


def test_it_gives_a_superuser_every_clinic(clinic, other_clinic, django_user_model):
    boss = django_user_model.objects.create_superuser("boss", password="x")
    assert set(access.staff_clinics(boss)) == {clinic, other_clinic}
    membership = access.membership_for(request_for(boss, other_clinic.pk))
    assert membership.clinic == other_clinic
    assert membership.role == StaffMembership.Role.ADMIN


def test_it_keeps_the_chosen_clinic_only_among_memberships(clinic, other_clinic, receptionist):
    StaffMembership.objects.create(user=receptionist, clinic=other_clinic)
    request = request_for(receptionist)
    assert access.current_clinic(request) == other_clinic  # first by name: "Clínica Norte"
    assert access.choose_clinic(request_for(receptionist), clinic.pk) == clinic

    stranger = make_user("stranger", other_clinic)
    request = request_for(stranger)
    assert access.choose_clinic(request, clinic.pk) is None
    assert access.current_clinic(request) == other_clinic


def test_it_ignores_a_session_clinic_the_user_lost(clinic, other_clinic, receptionist):
    request = request_for(receptionist, other_clinic.pk)
    assert access.current_clinic(request) == clinic


def test_it_runs_staff_views_in_the_current_clinic(clinic, receptionist, clinic_admin):
    assert staff_view(request_for(receptionist)).content == b"demo:receptionist"
    assert staff_view(request_for(clinic_admin)).content == b"demo:admin"


def test_it_answers_404_to_users_without_the_role(clinic, receptionist, outsider, other_staff):
    with pytest.raises(Http404):
        staff_view(request_for(outsider))
    with pytest.raises(Http404):
        admin_view(request_for(receptionist))
    # Another clinic's staff with this clinic's id forced into their session: still their own.
    assert staff_view(request_for(other_staff, clinic.pk)).content == b"norte:receptionist"


def test_it_sends_anonymous_users_to_the_login_page(db):
    from django.contrib.auth.models import AnonymousUser

    response = staff_view(request_for(AnonymousUser()))
    assert response.status_code == 302
    assert response["Location"].startswith("/cuenta/entrar/")


def test_it_finds_objects_only_inside_the_current_clinic(
    doctor, other_clinic, receptionist, other_staff
):
    found = access.get_object_for_clinic(Doctor.objects, request_for(receptionist), pk=doctor.pk)
    assert found == doctor
    assert access.get_object_for_clinic(Doctor, request_for(receptionist), pk=doctor.pk) == doctor
    schedule = doctor.schedules.get()
    assert (
        access.get_object_for_clinic(
            Schedule.objects,
            request_for(receptionist),
            clinic_field="doctor__clinic",
            pk=schedule.pk,
        )
        == schedule
    )
    with pytest.raises(Http404):
        access.get_object_for_clinic(Doctor.objects, request_for(other_staff), pk=doctor.pk)
    with pytest.raises(Http404):
        access.get_object_for_clinic(Doctor.objects, request_for(receptionist), pk="not-a-number")
