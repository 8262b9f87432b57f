"""Session stores that never lose a session to a Redis fault.

Django's own cache-backed stores treat a Redis error as "no such session":
the user looks logged out and the session cookie is deleted, so the session
is lost even though Redis still holds it. SESSION_ENGINE points at one of:

- sessions.cache: sessions live only in the sessions Redis. A Redis
  error is raised, and middleware.py turns it into a 503 page; the cookie
  is kept, and the user is logged in again as soon as Redis is back.
- sessions.cached_db: the database is the truth and Redis only a
  read-through cache. Every Redis error is logged and the database serves.
"""

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# What "Redis is unreachable" looks like through django-redis.
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError)
