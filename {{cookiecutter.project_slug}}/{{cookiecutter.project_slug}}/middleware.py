"""Turn "the sessions Redis is unreachable" into a short 503 page.

The sessions alias has no IGNORE_EXCEPTIONS (a session store must see its
errors), so while that Redis is down a request that needs the session raises
redis ConnectionError or TimeoutError. That is an outage, not a bug: answer
503 with Retry-After, fast, instead of a 500, and keep the session cookie so
the user is still logged in when Redis is back. Pages that do not touch the
session are not affected. The same goes for the database: PostgreSQL
stopped or restarting gives the same 503 page.

RedisUnavailableMiddleware catches what views raise; server_error (the 500
handler, see urls.py) catches what other middleware raises, such as
SessionMiddleware saving a session after the view.
"""

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from django.views import defaults

from .sessions import REDIS_ERRORS

# The database unreachable (PostgreSQL stopped or restarting) is an outage too.
UNAVAILABLE = (*REDIS_ERRORS, OperationalError, InterfaceError)

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30
PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Back in a moment</title></head>
<body>
  <h1>Back in a moment</h1>
  <p>Part of the site is briefly unavailable. You are still logged in: please try again in a minute.</p>
</body>
</html>
"""


def service_unavailable(request, exc):
    what = "Redis" if isinstance(exc, REDIS_ERRORS) else "database"
    logger.error("503 for %s %s: %s unavailable: %s: %s", request.method, request.path, what, type(exc).__name__, exc)
    response = HttpResponse(PAGE, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    # Django logs every response >= 500 once more; this one is expected.
    response._has_been_logged = True
    return response


class RedisUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, UNAVAILABLE):
            return service_unavailable(request, exception)
        return None


def server_error(request):
    """handler500: an outage raised outside a view is a 503 too."""
    exc = sys.exc_info()[1]
    if isinstance(exc, UNAVAILABLE):
        return service_unavailable(request, exc)
    return defaults.server_error(request)
