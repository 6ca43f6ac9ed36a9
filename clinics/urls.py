"""The staff console's agenda, appointment, patient and clinic-admin pages (Spanish paths)."""

from django.urls import path

from clinics import views, views_admin

app_name = "clinics"
urlpatterns = [
    path("agenda/", views.agenda, name="agenda"),
    path("agenda/semana/<int:doctor_id>/", views.agenda_week, name="agenda-week"),
    path("agenda/turno/<int:slot_id>/", views.slot_panel, name="slot"),
    path("agenda/turno/<int:slot_id>/reservar/", views.slot_book, name="slot-book"),
    path("agenda/turno/<int:slot_id>/bloquear/", views.slot_block, name="slot-block"),
    path("agenda/turno/<int:slot_id>/desbloquear/", views.slot_unblock, name="slot-unblock"),
    path("agenda/bloquear/", views.block_range, name="block-range"),
    path("agenda/pacientes/", views.patient_picker, name="patient-picker"),
    path("citas/", views.appointments, name="appointments"),
    path("citas/exportar.csv", views.appointments_csv, name="appointments-csv"),
    path("citas/hoy/", views.appointments_today, name="today"),
    path("citas/<int:appointment_id>/estado/", views.appointment_status, name="appointment-status"),
    path(
        "citas/<int:appointment_id>/cancelar/", views.appointment_cancel, name="appointment-cancel"
    ),
    path(
        "citas/<int:appointment_id>/opciones/",
        views.reschedule_options,
        name="appointment-reschedule-options",
    ),
    path(
        "citas/<int:appointment_id>/reprogramar/",
        views.appointment_reschedule,
        name="appointment-reschedule",
    ),
    path("pacientes/", views.patients, name="patients"),
    path("pacientes/<int:patient_id>/", views.patient_card, name="patient"),
    path("ajustes/", views_admin.clinic_settings, name="settings"),
    path("ajustes/especialidades/", views_admin.specialties, name="specialties"),
    path(
        "ajustes/especialidades/<int:specialty_id>/", views_admin.specialty_edit, name="specialty"
    ),
    path("ajustes/medicos/", views_admin.doctors, name="doctors"),
    path("ajustes/medicos/<int:doctor_id>/", views_admin.doctor_edit, name="doctor"),
    path(
        "ajustes/medicos/<int:doctor_id>/horario/",
        views_admin.doctor_schedule,
        name="doctor-schedule",
    ),
    path("ajustes/excepciones/", views_admin.exceptions, name="exceptions"),
    path("ajustes/excepciones/nueva/<str:kind>/", views_admin.period_add, name="period-add"),
    path(
        "ajustes/excepciones/<int:period_id>/quitar/",
        views_admin.period_remove,
        name="period-remove",
    ),
    path("ajustes/horas-extra/", views_admin.extra_add, name="extra-add"),
    path(
        "ajustes/horas-extra/<int:extra_id>/quitar/",
        views_admin.extra_remove,
        name="extra-remove",
    ),
    path("ajustes/festivos/cargar/", views_admin.holidays_load, name="holidays-load"),
    path("ajustes/generar/", views_admin.generate_now, name="generate-now"),
]
