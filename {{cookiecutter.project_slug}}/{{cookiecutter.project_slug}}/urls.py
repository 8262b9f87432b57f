from django.conf import settings
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

# Only the throwaway settings of `make bench` (deploy/bench.py) set BENCH_VIEWS.
if getattr(settings, "BENCH_VIEWS", False):
    from web import bench_views

    urlpatterns += [
        path("bench/plain", bench_views.plain),
        path("bench/session-write", bench_views.session_write),
        path("bench/session-read", bench_views.session_read),
    ]
