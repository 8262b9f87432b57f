"""Measure how long a new project and a teammate's clone take to get going.

    .venv/bin/python tools/measure_setup.py [--runs 5] [--skip-clone]

1. Bake: `cookiecutter --no-input` with the default choices, the post-gen hook
   making .venv from the lock (warm caches: one untimed bake first). Median of
   --runs bakes with uv on PATH, and with PATH holding no uv (venv + pip).
2. Clone: bake, commit, `git clone`, then `make venv && make env && make up`
   until the first 200 from /healthz (which `make up` waits for), with and
   without uv; `make down` afterwards.

A measurement, printed as a table: no test asserts these figures.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import free_port  # tools/ is this script's directory

TEMPLATE = Path(__file__).resolve().parent.parent
TOOLS = Path(sys.executable).parent
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PATHS = {"uv": f"{TOOLS}:{SYSTEM_PATH}", "no uv": SYSTEM_PATH}


def bake(out, path, port):
    env = {**os.environ, "PATH": path}
    env.pop("SOCKETSTACK_SKIP_VENV", None)
    started = time.monotonic()
    subprocess.run(
        [TOOLS / "cookiecutter", "--no-input", "-o", out, str(TEMPLATE), f"local_port={port}"],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.monotonic() - started, Path(out) / "my_site"


def measure_bake(label, runs):
    times = []
    for attempt in range(runs + 1):  # the first one only warms the caches
        with tempfile.TemporaryDirectory(prefix="sst-m-", dir="/tmp") as tmp:
            seconds, project = bake(tmp, PATHS[label], free_port())
            assert (project / ".venv" / "bin" / "python").exists(), "no .venv"
        if attempt:
            times.append(seconds)
    return times


def git(*args, cwd):
    command = ["git", "-c", "user.name=m", "-c", "user.email=m@example.com", *args]
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def measure_clone(label):
    with tempfile.TemporaryDirectory(prefix="sst-m-", dir="/tmp") as tmp:
        env = {**os.environ, "PATH": PATHS[label], "SOCKETSTACK_SKIP_VENV": "1"}
        subprocess.run(
            [TOOLS / "cookiecutter", "--no-input", "-o", tmp, str(TEMPLATE), f"local_port={free_port()}"],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        project = Path(tmp) / "my_site"
        git("init", "-q", cwd=project)
        git("add", "-A", cwd=project)
        git("commit", "-q", "-m", "Baked", cwd=project)
        git("clone", "-q", str(project), "clone", cwd=tmp)
        clone = Path(tmp) / "clone"
        python = shutil.which("python3", path=SYSTEM_PATH)
        steps = {}
        try:
            for target in (["venv", f"PYTHON={python}"], ["env"], ["up"]):
                started = time.monotonic()
                subprocess.run(["make", *target], cwd=clone, env={**os.environ, "PATH": PATHS[label]}, check=True,
                               stdout=subprocess.DEVNULL)  # fmt: skip
                steps[target[0]] = time.monotonic() - started
        finally:
            subprocess.run(["make", "down"], cwd=clone, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-clone", action="store_true")
    args = parser.parse_args()
    print(f"Bake with .venv from the lock, default choices, warm caches: {args.runs} runs each")
    for label in PATHS:
        times = measure_bake(label, args.runs)
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"  {label:6} median {statistics.median(times):.2f} s  (runs: {runs})")
    if args.skip_clone:
        return
    print("Clone -> make venv && make env && make up -> first 200")
    for label in PATHS:
        steps = measure_clone(label)
        detail = ", ".join(f"make {name} {seconds:.2f} s" for name, seconds in steps.items())
        print(f"  {label:6} total {sum(steps.values()):.2f} s  ({detail})")


if __name__ == "__main__":
    main()
