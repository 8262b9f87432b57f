"""REDIS_*_URL, REDIS_TLS_CA_FILE and REDIS_*_SENTINELS turned into django-redis settings (env.redis_cache)."""

import pytest

from {{ cookiecutter.project_slug }} import env

OPTIONS = {"SOCKET_TIMEOUT": 1, "SOCKET_CONNECT_TIMEOUT": 1}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("REDIS_TLS_CA_FILE", "REDIS_SENTINEL_PASSWORD", "REDIS_SESSIONS_SENTINELS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REDIS_SESSIONS_SENTINEL_SERVICE", raising=False)


def test_a_unix_socket_url_is_used_as_is():
    url = "unix:///srv/run/redis.sock?db=1"
    assert env.redis_cache("REDIS_SESSIONS", url, OPTIONS) == {"LOCATION": url, "OPTIONS": OPTIONS}


def test_rediss_is_verified_against_the_ca_file(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here")
    monkeypatch.setenv("REDIS_TLS_CA_FILE", str(ca))
    cache = env.redis_cache("REDIS_SESSIONS", "rediss://app:pw@10.0.0.5:6380/0", OPTIONS)
    kwargs = cache["OPTIONS"]["CONNECTION_POOL_KWARGS"]
    assert kwargs == {"ssl_cert_reqs": "required", "ssl_ca_certs": str(ca)}


def test_rediss_without_a_ca_file_uses_the_system_cas_and_still_verifies():
    cache = env.redis_cache("REDIS_SESSIONS", "rediss://app:pw@10.0.0.5:6380/0", OPTIONS)
    assert cache["OPTIONS"]["CONNECTION_POOL_KWARGS"] == {"ssl_cert_reqs": "required"}


def test_a_missing_ca_file_is_refused(monkeypatch):
    monkeypatch.setenv("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="^REDIS_TLS_CA_FILE: /nonexistent/ca.pem is not a file"):
        env.redis_cache("REDIS_SESSIONS", "rediss://app:pw@10.0.0.5:6380/0", OPTIONS)


def test_sentinels_give_a_sentinel_client_per_alias(monkeypatch):
    monkeypatch.setenv("REDIS_SESSIONS_SENTINELS", "10.0.0.5:26379, 10.0.0.6:26379,10.0.0.7:26380")
    monkeypatch.setenv("REDIS_SESSIONS_SENTINEL_SERVICE", "sessions")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "sentinel-pw")
    cache = env.redis_cache("REDIS_SESSIONS", "redis://app:pw@ignored:1/2", OPTIONS)
    assert cache["LOCATION"] == ["redis://app:pw@sessions/2"]
    options = cache["OPTIONS"]
    assert options["CLIENT_CLASS"] == "django_redis.client.SentinelClient"
    assert options["CONNECTION_FACTORY"] == "django_redis.pool.SentinelConnectionFactory"
    assert options["SENTINELS"] == [("10.0.0.5", 26379), ("10.0.0.6", 26379), ("10.0.0.7", 26380)]
    assert options["SENTINEL_KWARGS"]["password"] == "sentinel-pw"


@pytest.mark.parametrize("value", ["10.0.0.5", "10.0.0.5:", "10.0.0.5:26379,10.0.0.6"])
def test_a_sentinel_without_a_port_is_refused_in_one_line(monkeypatch, value):
    monkeypatch.setenv("REDIS_SESSIONS_SENTINELS", value)
    monkeypatch.setenv("REDIS_SESSIONS_SENTINEL_SERVICE", "sessions")
    with pytest.raises(ValueError, match=r"^REDIS_SESSIONS_SENTINELS: '10\.0\.0\.[56]:?' has no port: write host:port"):
        env.redis_cache("REDIS_SESSIONS", "redis:///0", OPTIONS)


def test_sentinels_without_a_service_are_refused(monkeypatch):
    monkeypatch.setenv("REDIS_SESSIONS_SENTINELS", "10.0.0.5:26379")
    with pytest.raises(ValueError, match="^REDIS_SESSIONS_SENTINELS and REDIS_SESSIONS_SENTINEL_SERVICE go together"):
        env.redis_cache("REDIS_SESSIONS", "redis:///0", OPTIONS)


def test_an_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="^REDIS_CACHE_URL: unsupported URL http://"):
        env.redis_cache("REDIS_CACHE", "http://10.0.0.5:6379/0", OPTIONS)
