import pytest

pytestmark = pytest.mark.django_db


def test_healthz_ok_when_everything_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "cache": "ok", "sessions": "ok"}


@pytest.mark.parametrize("alias, name", [("default", "cache"), ("sessions", "sessions")])
def test_healthz_503_names_the_missing_socket(client, settings, tmp_path, mailoutbox, alias, name):
    settings.CACHES = {
        **settings.CACHES,
        alias: {**settings.CACHES[alias], "LOCATION": f"unix://{tmp_path}/gone.sock?db=0"},
    }
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["failed"] == [name]
    # An outage is one log line per probe, never an error mail per probe.
    assert mailoutbox == []
