"""After `cruft update`: fail when the template's changes did not merge cleanly.

    python deploy/update.py conflicts

cruft applies the template's diff with `git apply -3` (or `--reject` outside a
git repository) and exits 0 even when a hunk conflicted. `make update` runs this
right after it: it lists the files with conflict markers (git's unmerged paths)
and the *.rej files the update left, and exits 1 when there is any, so that an
update never passes as clean while a file of yours holds a conflict.
Standard library only. See docs/updating.md.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_lines(root, *args):
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return result.stdout.splitlines() if result.returncode == 0 else None


def conflicts(root=ROOT):
    """Sorted relative paths that need a hand: unmerged files and *.rej files (not under .venv)."""
    unmerged = git_lines(root, "diff", "--name-only", "--diff-filter=U") or []
    rejects = [
        str(path.relative_to(root))
        for path in Path(root).rglob("*.rej")
        if path.relative_to(root).parts[0] not in {".venv", ".git", "var", "run"}
    ]
    return sorted(set(unmerged) | set(rejects))


def main(argv):
    command = argv[1] if len(argv) > 1 else ""
    if command != "conflicts":
        sys.exit(f"usage: {argv[0]} conflicts")
    found = conflicts()
    if found:
        print(
            f"make update: {len(found)} file(s) need a hand: {' '.join(found)}: merge them "
            "(conflict markers, or the hunks in each .rej), delete the .rej files, then "
            "make check (docs/updating.md)",
            file=sys.stderr,
        )
        sys.exit(1)
    print("make update: the template's changes merged without conflict")


if __name__ == "__main__":
    main(sys.argv)
