"""Django mails 500 errors to ADMINS; EMAIL_HOST in .env chooses SMTP over the console."""

import os
import subprocess
import sys

import pytest
from django.urls import path

from . import test_email


def broken(request):
    raise RuntimeError("something broke")


urlpatterns = [path("broken", broken)]


@pytest.mark.django_db
def test_server_error_is_mailed_to_admins(client, settings, mailoutbox):
    settings.ROOT_URLCONF = test_email.__name__
    client.raise_request_exception = False
    assert client.get("/broken").status_code == 500
    assert [mail.to for mail in mailoutbox] == [[address for _, address in settings.ADMINS]]
    assert "something broke" in mailoutbox[0].body


@pytest.mark.parametrize("email_host, backend", [("", "console"), ("smtp.example.com", "smtp")])
def test_email_backend_follows_email_host(email_host, backend):
    code = "from django.conf import settings; print(settings.EMAIL_BACKEND)"
    env = {**os.environ, "EMAIL_HOST": email_host, "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"]}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"django.core.mail.backends.{backend}.EmailBackend"
