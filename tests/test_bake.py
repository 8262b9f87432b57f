"""Bake every value of every choice and check what comes out.

Each combination of the matrix (conftest.CHOICES: every list option, every
boolean both ways) is baked once per session without a .venv and must: leave
no Jinja behind, pass ruff, pass `manage.py check` and `check --deploy` with
the Django version it asks for, and give configs that nginx, gunicorn and
supervisord accept. The Django-side checks of all combinations run two at a
time in one fixture; the tests then read their results.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    TEMPLATE,
    TOOLS,
    all_combinations,
    bake,
    combo_id,
    django_python,
    project_module,
    require,
    require_brotli_module,
    run,
    run_parallel,
)

COMBINATIONS = all_combinations()
LEFTOVER = re.compile(r"\{\{\s*cookiecutter|\{%-?\s*(if|endif|raw|endraw)\b|cookiecutter\.")
PRODUCTION = {"SITE_HTTPS": "true", "DJANGO_SECRET_KEY": "k" * 10 + "abcdefghij" * 5, "DJANGO_DEBUG": "false"}
# `check`, then the settings the tests look at, in one process.
CHECK_AND_SETTINGS = (
    "import django, json; django.setup(); from django.conf import settings as s;"
    "from django.core.management import call_command; call_command('check', fail_level='WARNING');"
    "print(json.dumps({'engine': s.SESSION_ENGINE, 'alias': s.SESSION_CACHE_ALIAS, 'django': django.__version__,"
    "'default': s.CACHES['default'], 'sessions': s.CACHES['sessions'], 'database': s.DATABASES['default']},"
    "default=str))"
)
# What Django and gunicorn read (and .env, see python_side).
PYTHON_SIDE = {".py", ".toml", ".html", ".css", ".js", ".json", ".txt"}


@pytest.fixture(params=COMBINATIONS, ids=combo_id)
def baked(request, matrix):
    return matrix[combo_id(request.param)]


def python_side(project):
    """A digest of every file Django and gunicorn read: combinations that differ only
    in nginx files (nginx_page_cache) have the same one. .env counts with its
    random secret and the bake's own directory blanked out."""
    import hashlib

    digest = hashlib.sha256()
    env = re.sub(r"(?m)^DJANGO_SECRET_KEY=.*$", "DJANGO_SECRET_KEY=", (project / ".env").read_text())
    digest.update(env.replace(str(project), "<project>").encode() + b"\0")
    for path in sorted(project.rglob("*")):
        parts = path.relative_to(project).parts
        if path.is_file() and path.suffix in PYTHON_SIDE and parts[0] not in ("run", "var", "logs", "static", "media"):
            digest.update(f"{'/'.join(parts)}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()


@pytest.fixture(scope="module")
def django_results(matrix):
    """check (with the settings), check --deploy and gunicorn --check-config for
    every combination, each run by an interpreter with the combination's Django,
    two at a time. Combinations whose Python side is byte-identical share one run."""
    jobs, digests = {}, {}
    for key, (project, combo) in matrix.items():
        digest = digests[key] = python_side(project)
        if (digest, "check") in jobs:
            continue
        python = django_python(project, combo)
        settings = {"DJANGO_SETTINGS_MODULE": f"{project.name}.settings"}
        jobs[digest, "check"] = ([python, "-c", CHECK_AND_SETTINGS], project, settings)
        deploy = [python, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
        jobs[digest, "deploy"] = (deploy, project, PRODUCTION)
        gunicorn = [python, "-m", "gunicorn", "--check-config", "-c", "deploy/gunicorn.conf.py"]
        jobs[digest, "gunicorn"] = (gunicorn, project, None)
    results = run_parallel(jobs)
    print(f"Django checks: {len(jobs)} runs for {len(matrix)} combinations")
    return {
        (key, name): results[digest, name]
        for key, digest in digests.items()
        for name in ("check", "deploy", "gunicorn")
    }


def result_of(django_results, baked, name):
    project, combo = baked
    result = django_results[combo_id(combo), name]
    assert result.returncode == 0, f"{name} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def text_files(project):
    for path in project.rglob("*"):
        if path.is_file() and ".venv" not in path.parts:
            try:
                yield path, path.read_text()
            except UnicodeDecodeError:
                continue


def test_no_template_syntax_left(baked):
    project, _ = baked
    leftovers = [str(path) for path, text in text_files(project) if LEFTOVER.search(text)]
    assert leftovers == []


def test_ruff_clean(baked):
    project, _ = baked
    run([TOOLS / "ruff", "check", "--no-cache", "."], cwd=project)
    run([TOOLS / "ruff", "format", "--check", "--no-cache", "."], cwd=project)


def test_manage_py_check(baked, django_results):
    assert "no issues" in result_of(django_results, baked, "check").stdout.splitlines()[0]


def test_manage_py_check_deploy(baked, django_results):
    assert "no issues" in result_of(django_results, baked, "deploy").stdout


def test_env_file_is_private_and_has_secret(baked):
    project, combo = baked
    env_file = project / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    values = project_module(project, f"{project.name}/env.py").read_env_file(env_file)
    assert len(values["DJANGO_SECRET_KEY"]) >= 50
    assert not values["DJANGO_SECRET_KEY"].startswith("django-insecure")
    # No paths: the sockets follow the project folder (settings.py's RUN_DIR),
    # or Debian's socket for redis=system (settings.py's default).
    assert not [value for value in values.values() if "/" in value]
    assert str(project) not in env_file.read_text()


def test_settings_follow_the_choices(baked, django_results):
    project, combo = baked
    slug = project.name
    settings = json.loads(result_of(django_results, baked, "check").stdout.splitlines()[-1])
    # A 6.1 bake is checked with Django 6.1, not the tooling's 5.2.
    assert settings["django"].startswith(combo["django_version"] + ".")
    # The project's own stores: Django's, made safe against Redis faults (<slug>/sessions/).
    assert settings["engine"] == f"{slug}.sessions.{combo['session_engine']}"
    assert settings["alias"] == "sessions"
    assert settings["default"]["OPTIONS"]["IGNORE_EXCEPTIONS"] is True
    assert "IGNORE_EXCEPTIONS" not in settings["sessions"]["OPTIONS"]
    assert settings["default"]["KEY_PREFIX"] == slug
    # One socket per store with dedicated Redis; one socket, two dbs with system.
    if combo["redis"] == "dedicated":
        assert settings["default"]["LOCATION"].endswith("run/redis-cache.sock?db=0")
        assert settings["sessions"]["LOCATION"].endswith("run/redis-sessions.sock?db=0")
    else:
        assert settings["default"]["LOCATION"] == "unix:///run/redis/redis-server.sock?db=0"
        assert settings["sessions"]["LOCATION"] == "unix:///run/redis/redis-server.sock?db=1"
    # SQLite in the project, or the local stack's PostgreSQL on its socket in run/postgres/
    # (paths of the bake checked for this one: bakes that differ in nginx files share a run).
    database = settings["database"]
    if combo["database"] == "postgresql":
        assert database["ENGINE"] == "django.db.backends.postgresql"
        assert database["HOST"].endswith(f"/{slug}/run/postgres") and database["NAME"] == database["USER"] == slug
        assert (database["CONN_MAX_AGE"], database["CONN_HEALTH_CHECKS"], database["PASSWORD"]) == (600, True, "")
    else:
        assert database["ENGINE"] == "django.db.backends.sqlite3" and database["NAME"].endswith(f"/{slug}/db.sqlite3")


def test_pruned_files_follow_the_choices(baked):
    project, combo = baked
    assert (project / "deploy" / "redis").exists() == (combo["redis"] == "dedicated")
    stores = sorted(path.name for path in (project / project.name / "sessions").glob("*.py"))
    assert stores == ["__init__.py", f"{combo['session_engine']}.py"]
    assert (project / "docs" / "postgresql.md").exists() == (combo["database"] == "postgresql")


def test_gunicorn_check_config(baked, django_results):
    result_of(django_results, baked, "gunicorn")


def test_nginx_accepts_local_config(baked):
    project, _ = baked
    nginx = require("nginx")
    run([sys.executable, "deploy/local_stack.py", "render"], project)
    result = run([nginx, "-t", "-p", project / "run" / "nginx", "-c", "nginx.conf", "-e", "stderr"], project)
    assert "syntax is ok" in result.stderr and "[warn]" not in result.stderr, result.stderr


def test_local_nginx_serves_brotli_where_the_module_is(baked):
    project, _ = baked
    require_brotli_module()
    run([sys.executable, "deploy/local_stack.py", "render"], project)
    assert (
        "\nload_module /usr/lib/nginx/modules/ngx_http_brotli_static_module.so;"
        in (project / "run" / "nginx" / "nginx.conf").read_text()
    )
    assert "    brotli_static on;" in (project / "run" / "nginx" / "locations.conf").read_text()


def test_without_the_brotli_module_nginx_sends_gzip_only(baked, tmp_path):
    """deploy/render.py leaves out load_module and brotli_static: an nginx
    without the module accepts the local config (the server's: test_matrix)."""
    project, _ = baked
    nginx = require("nginx")
    render = project_module(project, "deploy/render.py")
    local_stack = project_module(project, "deploy/local_stack.py")
    values = local_stack.local_values(8000)
    for template in local_stack.local_nginx_templates():
        text = render.fill_in(template.read_text(), values, brotli=False)
        assert "brotli_static " not in re.sub(r"#.*", "", text), template.name
        (tmp_path / ("nginx.conf" if template.name == "local.conf" else template.name)).write_text(text)
    assert "gzip_static on;" in (tmp_path / "locations.conf").read_text()
    result = run([nginx, "-t", "-p", tmp_path, "-c", tmp_path / "nginx.conf", "-e", "stderr"], project)
    assert "syntax is ok" in result.stderr and "[warn]" not in result.stderr, result.stderr


def test_supervisord_parses_config(baked):
    project, combo = baked
    code = (
        "import sys; from supervisor.options import ServerOptions; o = ServerOptions();"
        "o.realize(['-c', sys.argv[1]]);"
        "print(' '.join(p.name for g in o.process_group_configs for p in g.process_configs))"
    )
    for name in ("logs", "run"):  # `make up` makes them; supervisord checks that they exist
        (project / name).mkdir(exist_ok=True)
    names = run([sys.executable, "-c", code, "deploy/supervisor/local.conf"], project).stdout.split()
    slug = project.name
    expected = {f"{slug}-gunicorn", f"{slug}-nginx"}
    if combo["redis"] == "dedicated":
        expected |= {f"{slug}-redis-cache", f"{slug}-redis-sessions"}
    if combo["database"] == "postgresql":
        expected.add(f"{slug}-postgres")  # the local stack's own cluster (local.conf only)
    assert set(names) == expected


def test_redis_configs_policies(baked):
    project, combo = baked
    if combo["redis"] == "system":
        assert not (project / "deploy" / "redis").exists()
        return
    conf = {
        name: dict(
            line.split(None, 1)
            for line in (project / "deploy" / "redis" / f"{name}.conf").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
        for name in ("cache", "sessions")
    }
    assert conf["cache"]["port"] == conf["sessions"]["port"] == "0"
    assert conf["cache"]["unixsocketperm"] == conf["sessions"]["unixsocketperm"] == "770"
    assert conf["cache"]["maxmemory-policy"] == "allkeys-lru" and "maxmemory" in conf["cache"]
    assert conf["cache"]["appendonly"] == "no"
    assert conf["sessions"]["maxmemory-policy"] == "noeviction"
    assert conf["sessions"]["appendonly"] == "yes"


def test_secret_not_in_replay(cookies):
    """The replay file stores every answer: the secret must not be one of them."""
    project = bake(cookies)
    secret = next(
        line.split("=", 1)[1] for line in (project / ".env").read_text().splitlines() if line.startswith("DJANGO_")
    )
    replay_dir = Path(cookies._config_file).parent / "cookiecutter_replay"
    replay_files = list(replay_dir.glob("*.json"))
    assert replay_files, f"no replay file in {replay_dir}"
    assert all(secret not in path.read_text() for path in replay_files)
    # -F -e: a urlsafe secret may start with "-".
    grep = subprocess.run(["grep", "-rlF", "-e", secret, str(project)], capture_output=True, text=True)
    tracked = grep.stdout.split()
    assert tracked == [str(project / ".env")]


def test_page_cache_snippets(cookies):
    """nginx_page_cache=no bakes no page-cache files and a config without them; yes includes both."""
    nginx = require("nginx")
    for enabled in (True, False):
        project = bake(cookies, project_name="pco", nginx_page_cache=enabled)
        snippets = sorted(path.name for path in (project / "deploy" / "nginx").glob("page-cache*"))
        assert snippets == (["page-cache-zone.conf", "page-cache.conf"] if enabled else [])
        run([sys.executable, "deploy/local_stack.py", "render"], project)
        conf = (project / "run" / "nginx" / "nginx.conf").read_text()
        assert ("include page-cache-zone.conf;" in conf) == enabled
        assert ("include page-cache.conf;" in conf) == enabled
        result = run([nginx, "-t", "-p", project / "run" / "nginx", "-c", "nginx.conf", "-e", "stderr"], project)
        assert "syntax is ok" in result.stderr
        leftovers = [str(path) for path, text in text_files(project) if LEFTOVER.search(text)]
        assert leftovers == []


# One renderer, scripts copied as they are ---------------------------------------------

TEMPLATE_DEPLOY = TEMPLATE / "{{cookiecutter.project_slug}}" / "deploy"


def test_template_shell_scripts_pass_shellcheck_unrendered():
    """install.sh and uninstall.sh are copied without rendering (_copy_without_render):
    shellcheck reads the template's own files, style notes included."""
    scripts = sorted(TEMPLATE_DEPLOY.glob("*.sh"))
    assert {path.name for path in scripts} >= {"install.sh", "uninstall.sh", "common.sh"}
    result = run([TOOLS / "shellcheck", "--external-sources", *scripts], TEMPLATE_DEPLOY, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_are_baked_byte_for_byte(cookies):
    """What shellcheck read is what the server runs; the facts come from deploy/project.env."""
    project = bake(cookies, project_name="verbatim", django_version="6.1", redis="system")
    for path in TEMPLATE_DEPLOY.glob("*.sh"):
        assert (project / "deploy" / path.name).read_bytes() == path.read_bytes(), path.name
    assert os.access(project / "deploy" / "install.sh", os.X_OK)
    facts = run(["bash", "-c", '. deploy/common.sh && echo "$SLUG $DEFAULT_DOMAIN $REDIS_MODE $MIN_PYTHON"'], project)
    assert facts.stdout.split() == ["verbatim", "example.com", "system", "3.12"]


@pytest.mark.parametrize("django_version, minimum", [("5.2", "3.10"), ("6.1", "3.12")])
def test_minimum_python_comes_from_one_place(cookies, django_version, minimum):
    """cookiecutter.json's __min_python reaches requires-python, install.sh's facts,
    CI and the default interpreter; nothing else states the rule."""
    project = bake(cookies, project_name=f"py{minimum.replace('.', '')}", django_version=django_version)
    assert f'requires-python = ">={minimum}"' in (project / "pyproject.toml").read_text()
    assert f"MIN_PYTHON={minimum}\n" in (project / "deploy" / "project.env").read_text()
    ci_python = "3.11" if minimum == "3.10" else minimum  # Debian 12's python3 when it is new enough
    assert f'python-version: "{ci_python}"' in (project / ".github" / "workflows" / "ci.yml").read_text()


def test_renderer_fills_every_placeholder_or_names_the_missing_one(cookies):
    project = bake(cookies, project_name="renderer")
    deploy = project / "deploy"
    site = run([sys.executable, deploy / "render.py", deploy / "nginx" / "site.conf", "APP_ROOT=/srv/x",
                "DOMAIN=x.example", "LOCATIONS=/l.conf", "SNIPPETS=/s", "SSL_CERTIFICATE=/c", "SSL_CERTIFICATE_KEY=/k"],
               project).stdout  # fmt: skip
    assert "server_name x.example;" in site and "@" not in re.sub(r"\$\w+|#.*", "", site)
    missing = run([sys.executable, deploy / "render.py", deploy / "nginx" / "site.conf", "APP_ROOT=/srv/x"], project,
                  check=False)  # fmt: skip
    assert missing.returncode == 1 and missing.stderr.startswith("render.py: "), missing.stderr
    assert "@DOMAIN@ has no value: give DOMAIN=..." in missing.stderr
    programs = run([sys.executable, deploy / "render.py", "supervisor", "/srv/x", "renderer", "renderer-web"],
                   project).stdout  # fmt: skip
    assert not [line for line in programs.splitlines() if "%(here)s" in line and not line.startswith(";")]
    assert "programs=renderer-redis-cache,renderer-redis-sessions,renderer-gunicorn" in programs
    assert programs.count("user=renderer\n") == 3
    assert programs.count("--unixsocketperm 700") == 2


def test_renderer_spells_http2_for_the_nginx_it_serves(cookies):
    # Debian 12's nginx 1.22 knows only `listen ... ssl http2`; Debian 13's 1.26
    # warns on it and wants `http2 on;`. The files say `http2 on;`.
    project = bake(cookies, project_name="listen forms")
    render = project_module(project, "deploy/render.py")
    for name in ("site.conf", "default.conf"):
        text = (project / "deploy" / "nginx" / name).read_text()
        values = dict.fromkeys(render.PLACEHOLDER.findall(text), "x")
        new, old = (
            re.sub(r"#.*", "", render.fill_in(text, values, ipv6=True, nginx=version))
            for version in ((1, 26, 3), (1, 22, 1))
        )
        assert new.count("http2 on;") == 1 and " http2" not in new.replace("http2 on;", ""), name
        assert "http2 on;" not in old and old.count("ssl http2") == 2, name
        assert re.findall(r"listen \S+ ssl http2( default_server)?;", old), name
