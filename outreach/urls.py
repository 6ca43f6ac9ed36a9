from django.urls import path

from outreach import views

# "waitlist:list" is the name the console's nav links to (docs/console.md).
app_name = "waitlist"
urlpatterns = [
    path("", views.waitlist_list, name="list"),
    path("agregar/", views.waitlist_add, name="add"),
    path("<int:pk>/retirar/", views.waitlist_remove, name="remove"),
]
