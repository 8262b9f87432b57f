"""Validate the answers before anything is written.

A bad answer prints one line -- the field, the value, the rule and the fix --
and exits 1; cookiecutter then writes no project directory. The functions are
plain Python so the template's tests can import them.
"""

import json
import keyword
import re
import shlex
import shutil
import subprocess
import sys
import zoneinfo

# Names a project package must not take: it would shadow what the project
# imports, or the project's own app.
RESERVED_SLUGS = {
    "django",
    "django_redis",
    "redis",
    "hiredis",
    "gunicorn",
    "supervisor",
    "pytest",
    "pytest_django",
    "test",
    "tests",
    "web",
    "deploy",
    "static",
    "media",
}
HOSTNAME_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
EMAIL = re.compile(r"^[^@\s\"'\\]+@[^@\s\"'\\]+\.[^@\s\"'\\]+$")
# Characters that would break the Python and TOML strings they are written into.
UNSAFE_TEXT = re.compile(r"[\"\\\n\r]")


class InvalidAnswer(ValueError):
    """Raised with a message: field, value, rule and fix, on one line.

    `placeholder` stands in for the value in the command that retries the
    bake (retry_command), e.g. <1024-65535>.
    """

    def __init__(self, field, value, rule, placeholder="<fix this>"):
        super().__init__(f"{field}: {value!r} is not valid: {rule}")
        self.field = field
        self.placeholder = placeholder


def check_slug(slug):
    if not re.fullmatch(r"[a-z][a-z0-9_]*", slug) or keyword.iskeyword(slug):
        raise InvalidAnswer(
            "project_slug", slug, "use a lowercase Python identifier (letters, digits, _), e.g. my_site", "<my_site>"
        )
    if slug in RESERVED_SLUGS or slug in sys.stdlib_module_names:
        raise InvalidAnswer(
            "project_slug", slug, "it would shadow a module the project imports; pick another name", "<another_name>"
        )
    return slug


def check_text(field, value):
    if not value.strip() or UNSAFE_TEXT.search(value):
        raise InvalidAnswer(
            field, value, 'use plain text without double quotes ("), backslashes or newlines', "<plain text>"
        )
    return value


def check_domain(domain):
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(HOSTNAME_LABEL.match(label) for label in labels):
        raise InvalidAnswer(
            "domain_name", domain, "use a lowercase hostname such as example.com (no scheme, no port)", "<example.com>"
        )
    return domain


def check_email(email):
    if not EMAIL.match(email):
        raise InvalidAnswer("email", email, "use an address such as you@example.com", "<you@example.com>")
    return email


def check_port(port):
    if not str(port).isdigit() or not 1024 <= int(port) <= 65535:
        raise InvalidAnswer("local_port", port, "use a number from 1024 to 65535 (no root needed)", "<1024-65535>")
    return int(port)


def check_timezone(timezone):
    try:
        zoneinfo.ZoneInfo(timezone)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise InvalidAnswer("timezone", timezone, "use an IANA name such as UTC or Europe/Berlin", "<UTC>") from None
    return timezone


def python_version(python):
    """Return (major, minor) of the interpreter, or None when it does not run."""
    path = shutil.which(python)
    if not path:
        return None
    try:
        out = subprocess.run(
            [path, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def version_tuple(text):
    return tuple(int(part) for part in text.split("."))


def python_candidates(min_python):
    """python3 first (the system's: Debian 13's 3.13 runs every Django choice),
    then python3.N from the newest down to min_python (pyenv, `uv python install`)."""
    major, minor = version_tuple(min_python)
    return ["python3", *(f"python{major}.{newer}" for newer in range(20, minor - 1, -1))]


def usable_python(min_python, candidates=None):
    """The first interpreter on PATH that runs and is >= min_python, or None.
    The `python` prompt's default (local_extensions.py) and check_python's fix use it."""
    need = version_tuple(min_python)
    for name in candidates or python_candidates(min_python):
        version = python_version(name)
        if version and version >= need:
            return name
    return None


def os_release(path="/etc/os-release"):
    """'Debian 12', 'Debian 13', 'Ubuntu 24.04', or '' when the file says nothing."""
    try:
        fields = dict(line.split("=", 1) for line in open(path, encoding="utf-8").read().splitlines() if "=" in line)
    except OSError:
        return ""
    name, version = (fields.get(key, "").strip('"') for key in ("ID", "VERSION_ID"))
    return f"{name.capitalize()} {version}".strip()


def check_python(python, django_version, min_python):
    """min_python ("3.10") is cookiecutter.json's __min_python, the one place
    that ties a Django version to the oldest Python it runs on."""
    need = version_tuple(min_python)
    version = python_version(python)
    if version is None:
        raise InvalidAnswer(
            "python", python, "it does not run here; give the path of an installed interpreter", "</path/to/python3>"
        )
    if version < need:
        where = os_release()
        other = usable_python(min_python)
        if other:
            fix = f"answer python={other} (installed here)"
        else:
            fix = "install one (`uv python install 3.13`, or pyenv) and answer python=$(uv python find 3.13)"
        raise InvalidAnswer(
            "python",
            python,
            f"it is Python {version[0]}.{version[1]}{f' here ({where})' if where else ''}, and Django {django_version} "
            f"needs >= {min_python}: {fix}, or choose django_version=5.2",
            "</path/to/python3.13>",
        )
    return python


DATABASES = ("sqlite", "postgresql")


def check_database(database, slug="site"):
    # cookiecutter refuses a value outside the choices given on its command
    # line; this catches the ones that reach the hook another way (a replay
    # file, cruft, an edited context).
    if database not in DATABASES:
        raise InvalidAnswer("database", database, "use sqlite or postgresql", "<sqlite|postgresql>")
    # The PostgreSQL role is named after the slug, and initdb and CREATE ROLE
    # refuse names that begin with pg_ (reserved for the system's roles).
    if database == "postgresql" and slug.startswith("pg_"):
        raise InvalidAnswer(
            "project_slug", slug, "PostgreSQL reserves role names that begin with pg_; pick another name", "<my_site>"
        )
    return database


def validate(context):
    """Check every answer that can be wrong; raise InvalidAnswer on the first bad one."""
    for field in ("project_name", "author_name", "description"):
        check_text(field, context[field])
    check_slug(context["project_slug"])
    check_domain(context["domain_name"])
    check_email(context["email"])
    check_timezone(context["timezone"])
    check_port(context["local_port"])
    check_database(context["database"], context["project_slug"])
    check_python(context["python"], context["django_version"], context["__min_python"])


# Answers never repeated in the retry command, should a future option carry a secret.
SECRET_WORDS = ("secret", "password", "token", "key", "dsn")


def retry_command(context, error):
    """The command that bakes again with every other answer kept and the refused one
    marked, so an interactive user need not type them all again. Secrets never
    appear: answers whose name suggests one are left out (their defaults apply)."""
    words = ["cookiecutter", shlex.quote(context.get("_template") or "<template>")]
    if context.get("_checkout"):
        words += ["--checkout", shlex.quote(str(context["_checkout"]))]
    words.append("--no-input")
    for key, value in context.items():
        if key.startswith("_") or any(word in key.lower() for word in SECRET_WORDS):
            continue
        if key == error.field:
            value = error.placeholder
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        words.append(shlex.quote(f"{key}={value}"))
    return " ".join(words)


def main():
    context = json.loads(r"""{{ cookiecutter | jsonify }}""")
    try:
        validate(context)
    except InvalidAnswer as exc:
        # First and clearest thing the user sees; cookiecutter's own
        # "Hook script failed" message and traceback follow it.
        print(f"ERROR: {exc}", file=sys.stderr)
        print(
            f"Your other answers are kept in this command: replace {exc.field}={exc.placeholder} and run it.",
            file=sys.stderr,
        )
        print(f"  {retry_command(context, exc)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
