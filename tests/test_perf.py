"""`make bench` and nginx's page cache, on a real local stack.

The bench runs once in a very short mode: it proves the command works and
reports every row; nothing here asserts a speed.
"""

import json

import pytest
import requests

pytestmark = pytest.mark.stack

BENCH_ROWS = {"static", "healthz", "home", "home-django", "plain", "session-write", "session-read"}


def test_bench_views_are_not_routed_by_the_stack(stack):
    for path in ("/bench/plain", "/bench/session-write", "/bench/session-read"):
        assert requests.get(f"{stack.base_url}{path}", timeout=10).status_code == 404


def test_make_bench_short(stack):
    before = set(stack.processes())
    result = stack.make("bench", "BENCH_SECONDS=1", "BENCH_ROUNDS=1", "BENCH_COMPARE=redis", timeout=300)
    report = json.loads((stack.project / "var" / "bench" / "latest.json").read_text())
    assert set(report["variants"]) == {"default", "redis-socket", "redis-tcp"}
    assert set(report["variants"]["default"]["rows"]) == BENCH_ROWS
    for name, variant in report["variants"].items():
        for row, data in variant["rows"].items():
            assert data["rps"] > 0 and data["p99_ms"] > 0 and data["ratio_to_static"] > 0, (name, row, data)
            assert data["errors"] == 0, (name, row, data)
            assert row in result.stdout
    assert report["summary"]["session-write / plain"] > 0
    assert report["summary"]["socket / tcp (session-write)"] > 0
    # The bench stopped exactly what it started: its nginx, gunicorn, Redis.
    assert set(stack.processes()) == before
    assert not list((stack.project / "run").glob("bench-*"))
    assert requests.get(f"{stack.base_url}/healthz", timeout=10).status_code == 200
