"""/healthz: what `make up`, deploy/install.sh and your monitoring ask."""

import logging

from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django_redis import get_redis_connection

logger = logging.getLogger(__name__)


def _check_database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis(alias):
    # The raw client: django-redis's IGNORE_EXCEPTIONS would hide an outage.
    get_redis_connection(alias).ping()


@never_cache
def healthz(request):
    """200 when the database and both Redis stores answer, else 503 naming what failed."""
    # Imported here, not at the top: runserver imports the URLconf in one
    # thread while another runs the checks, and two threads importing redis-py
    # at once can meet its circular imports half done (ImportError).
    from redis.sentinel import MasterNotFoundError

    checks = {
        "database": _check_database,
        "cache": lambda: _check_redis("default"),
        "sessions": lambda: _check_redis("sessions"),
    }
    report, reasons = {}, {}
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:  # noqa: BLE001 -- any failure is reported, not raised
            # The class name only: /healthz is public, socket paths and hosts
            # are not. A missing Sentinel service is named: that is the fix.
            report[name] = f"error: {exc.__class__.__name__}"
            if isinstance(exc, MasterNotFoundError):
                report[name] += f" ({exc})"
            reasons[name] = " ".join(f"{exc.__class__.__name__}: {exc}".split())
        else:
            report[name] = "ok"
    failed = [name for name, state in report.items() if state != "ok"]
    body = {"status": "fail" if failed else "ok", "failed": failed, "checks": report}
    response = JsonResponse(body, status=503 if failed else 200)
    if failed:
        # A monitor polls this during an outage: one log line per probe, not
        # an error mail to ADMINS per probe (Django mails every 5xx it logs).
        # The log is private: it says why, in one line.
        logger.warning("/healthz 503: %s", "; ".join(f"{name} {reasons[name]}" for name in failed))
        response._has_been_logged = True
    return response
