from django.conf import settings
from django.shortcuts import render
from django.views.decorators.cache import cache_page


# Rendered once per 15 minutes and then served from the cache Redis; with
# DEBUG on (make dev) on every request, so an edit shows at once. It reads no
# session, so it works while the sessions Redis is down.
@cache_page(0 if settings.DEBUG else 60 * 15)
def home(request):
    return render(request, "web/home.html", {"project_name": "{{ cookiecutter.project_name }}"})
