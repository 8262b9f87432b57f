"""collectstatic's storage ({{ cookiecutter.project_slug }}/storage.py): a .gz and a .br beside each hashed text file."""

import gzip
import json
import os

import brotli
from django.core.management import call_command

CSS = b"body { color: #333; margin: 0 auto; }\n" * 200


def collect(tmp_path, settings):
    source = tmp_path / "source"
    if not source.exists():
        source.mkdir()
        (source / "site.css").write_bytes(CSS)
        (source / "tiny.txt").write_bytes(b"x")  # compressed, it would only grow
        (source / "photo.png").write_bytes(os.urandom(4096))  # an image: compressed already
    # conftest.py gives the other tests the plain storage; this one needs ours.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "{{ cookiecutter.project_slug }}.storage.CompressedManifestStaticFilesStorage"},
    }
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STATICFILES_DIRS = [source]
    # Only our files: the admin's would make this test take seconds.
    settings.STATICFILES_FINDERS = ["django.contrib.staticfiles.finders.FileSystemFinder"]
    call_command("collectstatic", "--noinput", verbosity=0)
    return settings.STATIC_ROOT


def hashed_name(root, name):
    return json.loads((root / "staticfiles.json").read_text())["paths"][name]


def test_hashed_text_files_get_gz_and_br(tmp_path, settings):
    root = collect(tmp_path, settings)
    hashed = root / hashed_name(root, "site.css")
    assert hashed.name != "site.css"
    assert gzip.decompress((root / f"{hashed.name}.gz").read_bytes()) == CSS
    assert brotli.decompress((root / f"{hashed.name}.br").read_bytes()) == CSS
    # The unhashed copy stays as it is: pages link to the hashed name.
    assert sorted(path.name for path in root.glob("site.css*")) == ["site.css"]


def test_images_and_files_that_would_grow_are_left_alone(tmp_path, settings):
    root = collect(tmp_path, settings)
    for name in ("tiny.txt", "photo.png"):
        hashed = hashed_name(root, name)
        assert (root / hashed).exists()
        assert not (root / f"{hashed}.gz").exists() and not (root / f"{hashed}.br").exists(), name


def test_second_collectstatic_keeps_the_compressed_copies(tmp_path, settings):
    root = collect(tmp_path, settings)
    copies = sorted(root.glob("*.gz")) + sorted(root.glob("*.br"))
    before = [path.stat().st_mtime_ns for path in copies]
    collect(tmp_path, settings)
    assert [path.stat().st_mtime_ns for path in copies] == before
