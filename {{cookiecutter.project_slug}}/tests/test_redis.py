"""The cache and the sessions live in two different Redis instances."""

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache, caches

pytestmark = pytest.mark.django_db


def session_keys(client):
    return [key.decode() for key in client.keys("*") if b"django.contrib.sessions" in key]


def test_cache_round_trips_through_redis(cache_redis):
    cache.set("greeting", {"hello": "world"}, 60)
    assert cache.get("greeting") == {"hello": "world"}
    assert any(key.endswith(b":greeting") for key in cache_redis.keys("*"))


def test_session_lands_in_sessions_redis_only(client, cache_redis, sessions_redis):
    user = get_user_model().objects.create_user("alice", password="a-long-test-password")
    client.force_login(user)
    session_key = client.cookies["sessionid"].value
    assert any(session_key in key for key in session_keys(sessions_redis))
    assert not any(session_key in key.decode() for key in cache_redis.keys("*"))


def test_cache_clear_keeps_sessions(client):
    user = get_user_model().objects.create_superuser("bob", password="a-long-test-password")
    client.force_login(user)
    cache.set("something", 1)
    cache.clear()
    assert cache.get("something") is None
    # Still logged in: the admin index answers instead of redirecting to login.
    assert client.get("/admin/").status_code == 200


def test_home_page_is_cached_in_cache_redis(client, cache_redis):
    response = client.get("/")
    assert response.status_code == 200
    assert any(b"views.decorators.cache.cache_page" in key for key in cache_redis.keys("*"))
    assert caches["sessions"] is not caches["default"]
