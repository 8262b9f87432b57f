from django.contrib import admin
from django.urls import path

from web import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]

# A Redis outage raised outside a view (a session saved by SessionMiddleware)
# is a 503 page too; anything else is Django's plain 500.
handler500 = "web.middleware.server_error"
