from django.contrib import admin
from django.urls import path

from web import views

from . import health

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]

# A Redis outage raised outside a view (a session saved by SessionMiddleware)
# is a 503 page too; anything else is Django's plain 500.
handler500 = "{{ cookiecutter.project_slug }}.middleware.server_error"
