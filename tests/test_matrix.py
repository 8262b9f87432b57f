"""Every option on every path, through checkers nobody here wrote.

The matrix (conftest.CHOICES) varies every list option and every boolean of
cookiecutter.json; each combination is baked once per session (the `matrix`
fixture). Here each one must give:

- a server site (`deploy/install.sh --render-nginx`) that `nginx -t` accepts,
  wrapped in a minimal main config with a throwaway certificate;
- server and local nginx configs on which gixy-ng finds nothing but what
  tests/gixy-allowlist.txt justifies, one line of why per finding;
- shell scripts that shellcheck passes (warnings and errors; style notes
  are not defects);
- Python in which vulture (80% confidence) finds no dead code; the hooks too.

test_bake.py checks the same bakes with ruff, `manage.py check` and
`check --deploy` and the local `nginx -t`.
"""

import json
import math
import re
import sys
from pathlib import Path

import pytest
from conftest import (
    BROTLI_MODULE,
    CHOICES,
    FREE_TEXT,
    MATRIX_DOMAIN,
    OPTIONS,
    TEMPLATE,
    TOOLS,
    all_combinations,
    combo_id,
    matrix_choices,
    require,
    run,
    run_parallel,
    unvaried_options,
)

COMBINATIONS = all_combinations()
GIXY_ALLOWLIST = Path(__file__).parent / "gixy-allowlist.txt"


# The matrix itself -------------------------------------------------------------


def test_matrix_varies_every_option():
    """A new list or boolean option in cookiecutter.json must join the matrix;
    a new free-text answer must be named in conftest.FREE_TEXT."""
    assert unvaried_options(OPTIONS) == []
    sizes = [len(values) for values in CHOICES.values()]
    assert len(COMBINATIONS) == len({combo_id(c) for c in COMBINATIONS}) == math.prod(sizes)
    assert all(len(values) >= 2 for values in CHOICES.values()), CHOICES
    assert all(isinstance(OPTIONS[key], str) for key in FREE_TEXT)


def test_an_option_outside_the_matrix_is_caught():
    """The check above can fail: a new text (or dict) answer that nobody declared is
    reported; a new boolean or list joins the matrix by itself."""
    grown = {**OPTIONS, "use_celery": False, "database": ["sqlite", "postgres"], "sentry_dsn": "", "extra": {}}
    assert unvaried_options(grown) == ["extra", "sentry_dsn"]
    assert {"use_celery", "database"} <= set(matrix_choices(grown))
    assert unvaried_options({**OPTIONS, "timezone": ["UTC", "Europe/Berlin"]}) == []  # a choice now: varied


# Rendered nginx configs ------------------------------------------------------------


def server_main_conf(directory, site, catch_all):
    """A minimal nginx.conf around the rendered server site, with every path in `directory`."""
    temp = directory / "temp"
    temp.mkdir(exist_ok=True)
    # As Debian's nginx.conf does through /etc/nginx/modules-enabled/: the
    # site has brotli_static exactly where the module is (deploy/render.py).
    brotli = f"load_module {BROTLI_MODULE};\n" if BROTLI_MODULE.exists() else ""
    return (
        f"{brotli}pid {directory}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n"
        "    include /etc/nginx/mime.types;\n"
        f"    access_log {directory}/access.log;\n"
        + "".join(
            f"    {kind}_temp_path {temp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"    include {catch_all};\n    include {site};\n}}\n"
    )


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """One throwaway certificate for every rendered server site."""
    openssl = require("openssl")
    directory = tmp_path_factory.mktemp("cert")
    run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={MATRIX_DOMAIN}",
         "-keyout", directory / "privkey.pem", "-out", directory / "fullchain.pem"],
        directory,
    )  # fmt: skip
    return directory / "fullchain.pem", directory / "privkey.pem"


@pytest.fixture(scope="module")
def rendered(matrix, certificate, tmp_path_factory):
    """Per combination: the server files from install.sh --render-nginx, wrapped in
    a main config, and the local stack's run/nginx/nginx.conf (rendered two at a time)."""
    cert, key = certificate
    out, jobs = {}, {}
    for name, (project, _) in matrix.items():
        directory = tmp_path_factory.mktemp("site")
        conf, app_root = directory / "conf", directory / "app"
        (app_root / "var").mkdir(parents=True)  # nginx -t creates the page cache directory there
        env = {"APP_ROOT": str(app_root), "SSL_CERTIFICATE": str(cert), "SSL_CERTIFICATE_KEY": str(key)}
        jobs[name, "server"] = ([project / "deploy" / "install.sh", "--render-nginx", conf], project, env)
        jobs[name, "local"] = ([sys.executable, "deploy/local_stack.py", "render"], project, None)
        out[name] = {"dir": directory, "conf": conf, "app_root": app_root, "main": directory / "nginx.conf",
                     "local": project / "run" / "nginx" / "nginx.conf"}  # fmt: skip
    failed = {job: result.stderr for job, result in run_parallel(jobs).items() if result.returncode}
    assert failed == {}
    for name, files in out.items():
        site = files["conf"] / f"{matrix[name][0].name}.conf"
        site.write_text(site.read_text().replace("/var/log/nginx/", f"{files['dir']}/"))
        files["main"].write_text(server_main_conf(files["dir"], site, files["conf"] / "000-socketstack-default.conf"))
    return out


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
def test_nginx_accepts_server_site(matrix, rendered, combo):
    nginx = require("nginx")
    project, _ = matrix[combo_id(combo)]
    files = rendered[combo_id(combo)]
    conf, slug = files["conf"], project.name
    site, locations, catch_all = (
        conf / f"{slug}.conf",
        conf / f"{slug}-locations.conf",
        conf / "000-socketstack-default.conf",
    )
    page_cache = [conf / f"{slug}-page-cache-zone.conf", conf / f"{slug}-page-cache.conf"]
    assert sorted(path.name for path in conf.iterdir()) == sorted(
        path.name for path in (site, locations, catch_all, *(page_cache if combo["nginx_page_cache"] else []))
    )
    for path in conf.iterdir():
        assert not re.search(r"@[A-Z_]+@", path.read_text()), path
    text = site.read_text()
    # The site includes the page cache snippets exactly when the option is on.
    for path in page_cache:
        assert (f"include {path};" in text) == combo["nginx_page_cache"], path
    # http2 in the form this machine's nginx knows without a warning (deploy/render.py).
    directives = re.sub(r"#.*", "", text)
    assert ("listen 443 ssl http2;" in directives) != ("http2 on;" in directives)
    assert f"server_name {MATRIX_DOMAIN};" in text
    assert f"include {locations};" in text
    assert f"server unix:{files['app_root']}/run/gunicorn.sock" in text
    # preload is opt-in (the generated docs/security.md).
    assert 'Strict-Transport-Security "max-age=31536000; includeSubDomains" always' in text
    # The locations must not add headers: that would drop HSTS there.
    directives = [line.split("#", 1)[0] for line in locations.read_text().splitlines()]
    assert not any("add_header" in line for line in directives)
    # Precompressed static files; brotli only where nginx has the module.
    assert "    gzip_static on;" in directives
    assert ("    brotli_static on;" in directives) == BROTLI_MODULE.exists()
    assert "add_header Cache-Control $socketstack_cache_control;" in text
    assert "return 444" in catch_all.read_text() and "default_server" in catch_all.read_text()
    main = files["main"]
    result = run([nginx, "-t", "-p", main.parent, "-c", main, "-e", "stderr"], main.parent)
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr
    # nginx 1.26 (Debian 13) warns on `listen ... http2`; 1.22 does not know `http2 on;`.
    assert "[warn]" not in result.stderr, result.stderr


# gixy-ng ----------------------------------------------------------------------------


def read_allowlist():
    """{(plugin, where): why} from tests/gixy-allowlist.txt."""
    entries = {}
    for line in GIXY_ALLOWLIST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            plugin, where, why = line.split(None, 2)
            entries[plugin, where] = why
    return entries


def gixy_where(kind, path, slug):
    """Name a finding's file after the template file it came from: local:locations.conf."""
    name = Path(path).name
    name = {f"{slug}.conf": "site.conf", "nginx.conf": "nginx.conf" if kind == "local" else "main"}.get(name, name)
    return f"{kind}:{name.removeprefix(f'{slug}-')}"


@pytest.fixture(scope="module")
def gixy_findings(matrix, rendered):
    """{combo id: [(plugin, where, line, summary)]} for the server and local configs."""
    gixy = TOOLS / "gixy"
    jobs = {}
    for name, files in rendered.items():
        jobs[name, "server"] = ([gixy, "-f", "json", files["main"]], files["dir"], None)
        jobs[name, "local"] = ([gixy, "-f", "json", files["local"]], files["dir"], None)
    results = run_parallel(jobs)
    findings = {name: [] for name in rendered}
    for (name, kind), result in results.items():
        assert result.stdout.strip().startswith("["), f"gixy on {name} {kind}: {result.stdout}\n{result.stderr}"
        slug = matrix[name][0].name
        for issue in json.loads(result.stdout):
            where = gixy_where(kind, issue["file"], slug)
            findings[name].append((issue["plugin"], where, issue["line"], issue["summary"]))
    return findings


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
def test_gixy_finds_nothing_unexplained(gixy_findings, combo):
    allowed = read_allowlist()
    unexplained = [finding for finding in gixy_findings[combo_id(combo)] if finding[:2] not in allowed]
    assert unexplained == [], "fix each, or justify it in tests/gixy-allowlist.txt"


def test_gixy_allowlist_has_no_stale_entry(gixy_findings):
    """Every allowlist entry still matches a finding somewhere in the matrix, and says why."""
    seen = {finding[:2] for findings in gixy_findings.values() for finding in findings}
    allowed = read_allowlist()
    assert sorted(set(allowed) - seen) == []
    assert all(len(why.split()) >= 4 for why in allowed.values()), allowed


# shellcheck --------------------------------------------------------------------------


def shell_scripts(project):
    """Every rendered file that starts with a sh or bash shebang."""
    scripts = []
    for path in sorted(project.rglob("*")):
        if path.is_file() and ".venv" not in path.parts and "run" not in path.relative_to(project).parts:
            with path.open("rb") as handle:
                first = handle.readline()
            if re.match(rb"#!\s*/(usr/)?bin/(env\s+)?(ba)?sh\b", first):
                scripts.append(path)
    return scripts


@pytest.fixture(scope="module")
def shellcheck_results(matrix):
    """{combo id: [(script, CompletedProcess)]}: shellcheck once per distinct script
    text (most combinations render the same install.sh), two at a time."""
    import hashlib

    jobs, by_combo = {}, {}
    for name, (project, _) in matrix.items():
        by_combo[name] = []
        for script in shell_scripts(project):
            digest = hashlib.sha256(script.read_bytes()).hexdigest()
            # Warnings and errors: style notes (SC2001 and the like) are not defects.
            jobs.setdefault(digest, ([TOOLS / "shellcheck", "--severity=warning", script], project, None))
            by_combo[name].append((script, digest))
    results = run_parallel(jobs)
    return {name: [(script, results[digest]) for script, digest in scripts] for name, scripts in by_combo.items()}


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
def test_shellcheck_passes(shellcheck_results, combo):
    checked = shellcheck_results[combo_id(combo)]
    assert {script.name for script, _ in checked} >= {"install.sh", "uninstall.sh"}
    failures = [f"{script.name}:\n{result.stdout}{result.stderr}" for script, result in checked if result.returncode]
    assert failures == [], "\n".join(failures)


# vulture -----------------------------------------------------------------------------


@pytest.mark.parametrize("combo", COMBINATIONS, ids=combo_id)
def test_vulture_finds_no_dead_code(matrix, combo):
    project, _ = matrix[combo_id(combo)]
    result = run([TOOLS / "vulture", "--min-confidence", "80", "--exclude", "run,var,static,media", "."], project,
                 check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_vulture_finds_no_dead_code_in_hooks():
    result = run([TOOLS / "vulture", "--min-confidence", "80", TEMPLATE / "hooks"], TEMPLATE, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
