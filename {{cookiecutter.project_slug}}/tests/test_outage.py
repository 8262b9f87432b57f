"""A sessions Redis outage is a 503 (cache engine) or invisible (cached_db), never a logout."""

import pytest
from django.contrib.auth import get_user_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_then_outage(client, settings, tmp_path):
    user = get_user_model().objects.create_superuser("root", password="a-long-test-password")
    client.force_login(user)
    session_key = client.cookies["sessionid"].value
    # Point the sessions alias at a socket that does not exist: Redis is "down".
    settings.CACHES = {
        **settings.CACHES,
        "sessions": {**settings.CACHES["sessions"], "LOCATION": f"unix://{tmp_path}/down.sock?db=0"},
    }
    return client, session_key


def test_sessions_outage_keeps_the_cookie(admin_client_then_outage, settings):
    client, session_key = admin_client_then_outage
    response = client.get("/admin/")
    if settings.SESSION_ENGINE.endswith("cached_db"):
        # The database has the session: the user does not notice.
        assert response.status_code == 200
    else:
        assert response.status_code == 503
        assert response["Retry-After"]
    # Either way the session cookie is neither deleted nor replaced.
    assert "sessionid" not in response.cookies or response.cookies["sessionid"].value == session_key


def test_pages_without_sessions_still_answer(admin_client_then_outage):
    client, _ = admin_client_then_outage
    client.cookies.clear()
    assert client.get("/").status_code == 200


def test_django_internals_the_outage_code_relies_on(rf, caplog):
    """{{ cookiecutter.project_slug }}/ leans on two Django internals; a Django upgrade that changes them fails here.

    - sessions/cached_db.py calls the database store past Django's cached_db
      store (super(cached_db.SessionStore, self)): that must be db.SessionStore.
    - middleware.py marks its 503 with response._has_been_logged, which
      django.utils.log.log_response reads so the expected 503 is not logged twice.
    """
    from django.contrib.sessions.backends import cached_db, db
    from django.utils.log import log_response

    from {{ cookiecutter.project_slug }}.middleware import service_unavailable
    from {{ cookiecutter.project_slug }}.sessions import REDIS_ERRORS

    assert cached_db.SessionStore.__mro__[1] is db.SessionStore
    request = rf.get("/admin/")
    response = service_unavailable(request, REDIS_ERRORS[0]("down"))
    caplog.clear()
    log_response("Service Unavailable: %s", request.path, response=response, request=request)
    assert [record for record in caplog.records if record.name == "django.request"] == []
