"""A short soak in CI (benchmarks/soak.py for 28 s): load while tokens rotate, fail and get revoked."""

from __future__ import annotations

import io

from benchmarks import soak


def test_short_soak_loses_no_request_and_sends_none_without_token():
    log = io.StringIO()
    report = soak.run(duration=28, concurrency=4, lifetime=30, log=log)
    events = [e["event"] for e in report["events"]]
    assert any("failing (500)" in e for e in events), log.getvalue()
    assert any("revoked" in e for e in events), log.getvalue()
    assert report["requests_sent"] > 100
    assert report["requests_failed"] == 0, report["failures"]
    assert report["answers_without_token"] == 0
    assert report["fake"]["token_fetches"] >= 3  # start, rotation/recovery, after the revocation
    assert report["proxy_alive_at_end"]
