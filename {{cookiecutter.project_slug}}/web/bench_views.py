"""Endpoints for `make bench` (deploy/bench.py), never routed in production.

urls.py adds them only when settings.BENCH_VIEWS is true, and only the
settings module that deploy/bench.py writes for its own temporary gunicorn
sets it. Without that, /bench/... is a 404 like any unknown URL: an anonymous
session write on demand would let anyone fill the sessions Redis.
"""

from django.http import HttpResponse


def plain(request):
    # An anonymous page that Django renders every time: no session, no cache.
    return HttpResponse("plain\n", content_type="text/plain")


def session_write(request):
    # Load the session named by the cookie, change it, save it.
    request.session["hits"] = request.session.get("hits", 0) + 1
    return HttpResponse("written\n", content_type="text/plain")


def session_read(request):
    # Load the session named by the cookie; nothing is saved.
    return HttpResponse(f"hits={request.session.get('hits', 0)}\n", content_type="text/plain")
