from django.urls import path

from console import views

app_name = "console"
urlpatterns = [
    path("", views.home, name="home"),
    path("clinica/", views.switch_clinic, name="switch-clinic"),
    path("bandeja/filas/", views.inbox_rows, name="inbox-rows"),
    path("estadisticas/", views.stats, name="stats"),
    path("conversaciones/<int:conversation_id>/", views.inbox, name="conversation"),
    path("conversaciones/<int:conversation_id>/tomar/", views.take_over, name="take-over"),
    path("conversaciones/<int:conversation_id>/devolver/", views.hand_back, name="hand-back"),
    path("conversaciones/<int:conversation_id>/responder/", views.reply, name="reply"),
    path("conversaciones/<int:conversation_id>/plantilla/", views.send_template, name="template"),
    path("conversaciones/<int:conversation_id>/nota/", views.note, name="note"),
    path("conversaciones/<int:conversation_id>/cerrar/", views.close, name="close"),
    path("conversaciones/<int:conversation_id>/horarios/", views.slots, name="slots"),
    path("conversaciones/<int:conversation_id>/agendar/", views.book, name="book"),
    path("conversaciones/<int:conversation_id>/cancelar/", views.cancel, name="cancel"),
]
