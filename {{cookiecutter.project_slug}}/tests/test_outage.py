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
