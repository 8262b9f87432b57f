"""Sessions in the database, with the sessions Redis as a read-through cache.

Django 5.2's cached_db store survives a Redis error on save() and on the first
read, but not when it refills the cache after a read from the database, when
it checks whether a new key exists (every login) or when it deletes a session
(every login and logout): those raise, and nobody can log in while Redis is
down. Here every Redis error is logged and the database answers.

A write or delete that Redis missed can leave a stale copy there once it is
back: docs/runbook.md says to flush the sessions Redis after an outage
(it only holds copies; the database has every session).
"""

import logging

from django.contrib.sessions.backends import cached_db

from . import REDIS_ERRORS

logger = logging.getLogger("django.contrib.sessions")


def _cache_failed(action, exc):
    logger.error("Session cache unavailable on %s, using the database only: %s: %s", action, type(exc).__name__, exc)


class SessionStore(cached_db.SessionStore):
    def load(self):
        try:
            data = self._cache.get(self.cache_key)
        except REDIS_ERRORS as exc:
            _cache_failed("read", exc)
            data = None
        except Exception:  # noqa: BLE001 -- Django's own behaviour, see #17810
            data = None
        if data is not None:
            return data
        s = self._get_session_from_db()
        if not s:
            return {}
        data = self.decode(s.session_data)
        try:
            self._cache.set(self.cache_key, data, self.get_expiry_age(expiry=s.expire_date))
        except REDIS_ERRORS as exc:
            _cache_failed("refill", exc)
        return data

    def exists(self, session_key):
        if not session_key:
            return False
        try:
            if (self.cache_key_prefix + session_key) in self._cache:
                return True
        except REDIS_ERRORS as exc:
            _cache_failed("exists", exc)
        return super(cached_db.SessionStore, self).exists(session_key)

    def delete(self, session_key=None):
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        super(cached_db.SessionStore, self).delete(session_key)
        try:
            self._cache.delete(self.cache_key_prefix + session_key)
        except REDIS_ERRORS as exc:
            _cache_failed("delete", exc)
