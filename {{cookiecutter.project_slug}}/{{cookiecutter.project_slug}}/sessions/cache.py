"""Sessions in the sessions Redis only; a Redis outage is an error, never a logout."""

from django.contrib.sessions.backends import cache

from . import REDIS_ERRORS


class SessionStore(cache.SessionStore):
    def load(self):
        # Django's load() turns any error into an empty session and forgets the
        # key, and SessionMiddleware then deletes the cookie. Let an outage
        # through instead (middleware.py answers 503); other errors (an
        # invalid key) still mean "no session".
        try:
            session_data = self._cache.get(self.cache_key)
        except REDIS_ERRORS:
            raise
        except Exception:  # noqa: BLE001 -- Django's own behaviour, see #17810
            session_data = None
        if session_data is not None:
            return session_data
        self._session_key = None
        return {}
