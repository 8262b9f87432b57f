"""Jinja filters for cookiecutter.json, loaded through its `_extensions` key
(cookiecutter and cruft put the template's directory on sys.path for it).

The `python` prompt's default follows what is installed: `python3` when it is
new enough for the Django choice (Debian 13's 3.13 runs 6.1, Debian 12's 3.11
runs 5.2), else the newest `python3.N` on PATH that is (pyenv, `uv python
install`). The rule lives in hooks/pre_gen_project.py, which checks the answer.
"""

import importlib.util
from pathlib import Path

from cookiecutter.utils import simple_filter


def load_pre_gen_hook():
    """The hook as it is in the template: plain Python, Jinja only inside string literals."""
    path = Path(__file__).resolve().parent / "hooks" / "pre_gen_project.py"
    spec = importlib.util.spec_from_file_location("socketstack_pre_gen_project", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@simple_filter
def default_python(min_python):
    """`python3` when nothing fits either: the pre-gen hook then says what to install."""
    return load_pre_gen_hook().usable_python(min_python) or "python3"
