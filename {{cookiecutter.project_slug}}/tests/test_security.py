from django.core import mail
from django.test import override_settings


@override_settings(ADMINS=[("Admin", "admin@example.com")], ALLOWED_HOSTS=["testserver"])
def test_disallowed_host_is_refused_and_not_mailed(client):
    """Anyone can send a foreign Host: a 400, and no email to the admins."""
    response = client.get("/healthz", HTTP_HOST="evil.test", secure=True)
    assert response.status_code == 400
    assert mail.outbox == []
