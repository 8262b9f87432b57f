"""collectstatic's storage: hashed names, plus a .gz and a .br beside each text file.

nginx sends those as they are (gzip_static, brotli_static in
deploy/nginx/locations.conf), so a stylesheet is compressed once, at its
strongest levels, when it is collected, instead of on every request.

Our own code rather than a package: a few dozen lines on top of Django's
ManifestStaticFilesStorage (whitenoise's CompressedManifestStaticFilesStorage
does the same, but brings a WSGI static server that nginx makes useless,
and django-compression-middleware compresses per request). Python's gzip
does the .gz; the .br needs Google's `brotli` wheel (pyproject.toml), as the
standard library has no brotli.
"""

import gzip
import os
from pathlib import Path

import brotli
from django.contrib.staticfiles.storage import ManifestStaticFilesStorage

# Text that compresses. Images (png, jpg, webp, ...) and woff/woff2 fonts are
# compressed formats already: another pass only costs the server time.
COMPRESSIBLE = frozenset(
    (".css", ".js", ".mjs", ".map", ".json", ".svg", ".txt", ".html", ".htm", ".xml", ".ico", ".ttf", ".otf")
)
ENCODINGS = {
    # mtime=0: the same file gives the same bytes on every collectstatic.
    ".gz": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    # Quality 10: the admin's 1.42 MB of hashed text (125 files, one busy
    # 2-core machine) gives 349 kB at 9 (1.2 s), 321 kB at 10 (3.2 s), 314 kB
    # at 11 (5.2 s); gzip -9: 387 kB in 0.2 s. Only once per file (below).
    ".br": lambda data: brotli.compress(data, quality=10),
}


def compress_file(path):
    """Write path.gz and path.br where missing; leave out those that would not be smaller.

    For hashed names only: the name changes with the content, so a copy that
    exists is of these bytes. (Django writes some hashed files again on each
    collectstatic, so their times say nothing.)
    """
    path = Path(path)
    data = None
    for suffix, compress in ENCODINGS.items():
        target = path.with_name(path.name + suffix)
        if target.exists():
            continue
        data = path.read_bytes() if data is None else data
        packed = compress(data)
        if len(packed) >= len(data):
            continue  # nginx sends the file itself
        # Through a temporary name: nginx never finds a half-written copy.
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(packed)
        os.replace(partial, target)


class CompressedManifestStaticFilesStorage(ManifestStaticFilesStorage):
    """ManifestStaticFilesStorage that also writes a .gz and a .br beside each text file it holds."""

    def post_process(self, paths, dry_run=False, **options):
        # Django's part first: the hashed copies and staticfiles.json exist after it.
        yield from super().post_process(paths, dry_run=dry_run, **options)
        if dry_run:
            return
        # The hashed names only: templates link to them ("static" tag). The unhashed
        # copies stay as they are (compressing them too doubled the time).
        for name in sorted(set(self.hashed_files.values())):
            if Path(name).suffix.lower() in COMPRESSIBLE:
                compress_file(self.path(name))
