from django.urls import path

from integrations import views

app_name = "integrations"
urlpatterns = [
    path("", views.home, name="home"),
    path("claves/", views.key_create, name="key-create"),
    path("claves/<int:key_id>/revocar/", views.key_revoke, name="key-revoke"),
    path("webhooks/", views.endpoint_create, name="endpoint-create"),
    path("webhooks/<int:endpoint_id>/activar/", views.endpoint_toggle, name="endpoint-toggle"),
    path("webhooks/<int:endpoint_id>/borrar/", views.endpoint_delete, name="endpoint-delete"),
    path("webhooks/entregas/", views.deliveries, name="deliveries"),
    path(
        "webhooks/entregas/<int:delivery_id>/reenviar/",
        views.delivery_send_again,
        name="delivery-send-again",
    ),
    path("pacientes/", views.patient_data, name="patient-data"),
    path("pacientes/<int:patient_id>/exportar/", views.patient_export, name="patient-export"),
    path("pacientes/<int:patient_id>/borrar/", views.patient_erase, name="patient-erase"),
]
