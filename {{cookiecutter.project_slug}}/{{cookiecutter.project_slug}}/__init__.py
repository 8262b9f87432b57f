"""The project package: settings.py and urls.py are yours to edit.

The rest is machinery that settings.py and urls.py use and you need not edit:
sessions/ (session stores a Redis fault cannot log anyone out of),
middleware.py (a sessions Redis outage is a 503, not a 500), health.py
(/healthz), env.py (the .env reader) and wsgi.py (gunicorn's entry point).
"""
