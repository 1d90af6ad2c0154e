"""Prometheus metrics for the proxy, in a registry of our own (served by addons/admin.py).

Counts what the audit log records (same requests), plus token cache state and client connections.
Every label value comes from a fixed, small set, never from what a client sent: a client that
picks a fresh host per request (each 407 is counted) must not grow memory or /metrics. ``host``
is the pattern of the route the host matched (``*.googleapis.com``, ``*.a.run.app``) or ``other``;
``service`` a service addons/google_api.py recognises or ``other``; ``status`` a code 100-599,
``error`` (no response) or ``other``; ``auth`` our own outcome words; ``rule`` a ``[[rule]]``
name from the config (the operator's words) or ``default``; never a path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from mitmproxy import connection, ctx, exceptions, http
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from addons import google_api, hosts
from addons.audit_log import (
    AuditLog,
    audit_record,
    count_request_stream,
    count_response_stream,
    refused_connect,
)
from addons.routing import Routing
from addons.same_user import Gate
from addons.token_source import TokenSource
from addons.token_sources import TokenSources

PREFIX = "gcp_auth_proxy"
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
OTHER = "other"
# The services google_api.describe() has a parser for; it names any other *.googleapis.com label
# too (whatever the client put before .googleapis.com), so only these become label values.
SERVICES = frozenset({"storage", *google_api._BY_SERVICE})


def host_label(host: str | None, patterns: Sequence[hosts.HostPattern]) -> str:
    """The most specific injected-host pattern ``host`` matches, as text; else ``other``."""
    return hosts.best_match(host, ((p, str(p)) for p in patterns)) or OTHER


def service_label(service: str | None) -> str:
    return service if service in SERVICES else OTHER


def status_label(status: int | None) -> str:
    """``error`` when there was no response; upstream may send any number, so only 100-599 pass."""
    if status is None:
        return "error"
    return str(status) if 100 <= status <= 599 else OTHER


class _TokenCollector(Collector):
    """Token cache state per credential, read at scrape time from the token sources (no copy to go
    stale). ``credential``: ``adc``, or the description of a credential a route names; the sources
    of one credential (an ID token per host) are summed, and usable only when all of them are."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        labels = ["credential"]
        fetches = CounterMetricFamily(f"{PREFIX}_token_refreshes", "Tokens fetched successfully.", labels=labels)
        failures = CounterMetricFamily(f"{PREFIX}_token_refresh_failures", "Failed attempts to fetch a token.",
                                       labels=labels)
        expiry = GaugeMetricFamily(
            f"{PREFIX}_token_expiry_seconds",
            "Seconds until the cached token expires (the soonest of a credential's; absent while one has "
            "no usable token).", labels=labels,
        )
        usable = GaugeMetricFamily(f"{PREFIX}_token_usable", "1 while a cached token can be served, else 0.",
                                   labels=labels)
        now = time.time()
        for name, caches in self.metrics.token_caches():
            tokens = [c.current() if c is not None else None for c in caches]
            fetches.add_metric([name], sum(c.fetches for c in caches if c is not None))
            failures.add_metric([name], sum(c.fetch_failures for c in caches if c is not None))
            usable.add_metric([name], 1 if all(t is not None for t in tokens) else 0)
            expiries = [t.expires_at for t in tokens if t is not None and t.expires_at is not None]
            if expiries and all(t is not None for t in tokens):
                expiry.add_metric([name], max(0.0, min(expiries) - now))
        yield from (fetches, failures, expiry, usable)


class _RefusalCollector(Collector):
    """Connections the same-user check refused, read at scrape time from its gate. ``uid`` is one
    of at most 16 uids, ``other`` beyond them, or ``unknown`` (no socket owned the connection)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def collect(self) -> Iterator[Any]:
        refused = CounterMetricFamily(
            f"{PREFIX}_foreign_connections_refused",
            "Loopback connections refused because another user's socket opened them.", labels=["uid"])
        for uid, count in sorted(self.gate.refusals.items()):
            refused.add_metric([uid], count)
        yield refused


class Metrics:
    """Counts requests, bytes and connections; reads token state, audit health and same-user
    refusals from the components it is given (loaded alone with ``-s``: no token figures, the
    audit log counts as writable, no refusals)."""

    def __init__(self, tokens: TokenSource | None = None, audit: AuditLog | None = None,
                 gate: Gate | None = None, routing: Routing | None = None,
                 sources: TokenSources | None = None) -> None:
        self.tokens = tokens
        self.sources = sources  # every credential's token source (tokens is the ADC one among them)
        self.audit = audit
        self.routing = routing  # the hosts routes intercept label requests (else --inject-host's)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_requests", "Requests to injected hosts, by outcome.",
            ["host", "service", "status", "auth"], registry=self.registry,
        )
        self.decisions = Counter(
            f"{PREFIX}_rule_decisions", "Requests to intercepted hosts and refused tunnels the [[rule]] "
            "entries (or the default) decided, by rule and action; only while there are rules or the "
            "default is deny.",
            ["rule", "action"], registry=self.registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds", "Time from request start to the end of the response.",
            ["service"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self.bytes = Counter(
            f"{PREFIX}_body_bytes", "Body bytes moved for injected hosts (direction: sent = request "
            "bodies to Google, received = response bodies).", ["service", "direction"], registry=self.registry,
        )
        self.connections = Gauge(
            f"{PREFIX}_active_connections", "Client connections open now (tunnels included).",
            registry=self.registry,
        )
        self.audit_ok = Gauge(
            f"{PREFIX}_audit_log_writable", "1 while the audit log can be written (or is off), else 0.",
            registry=self.registry,
        )
        self.audit_ok.set_function(self._audit_writable)
        self.registry.register(_TokenCollector(self))
        if gate is not None:
            self.registry.register(_RefusalCollector(gate))
        self.patterns: list[hosts.HostPattern] = []

    def configure(self, updated: set[str]) -> None:
        # inject_host belongs to GoogleAuth; loaded alone (mitmdump -s) every host is "other".
        if "inject_host" in updated and "inject_host" in ctx.options:
            try:
                self.patterns = [hosts.parse_host_pattern(p) for p in ctx.options.inject_host]
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e

    def token_caches(self) -> list[tuple[str, list[Any]]]:
        """(credential label, its token caches); ADC alone without the sources, nothing loaded alone."""
        if self.sources is not None:
            return [(name, [s.cache for s in group]) for name, group in self.sources.by_credential()]
        return [("adc", [self.tokens.cache])] if self.tokens is not None else []

    def _audit_writable(self) -> float:
        return 0.0 if self.audit is not None and self.audit.broken else 1.0

    # -- hooks ---------------------------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        self.connections.inc()

    def client_disconnected(self, client: connection.Client) -> None:
        self.connections.dec()

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if refused_connect(flow):  # on the audit log too
            self._observe(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if "gauth" in flow.metadata:
            count_request_stream(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if "gauth" in flow.metadata:
            count_response_stream(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._observe(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._observe(flow)

    def _observe(self, flow: http.HTTPFlow) -> None:
        if "gauth" not in flow.metadata:
            return
        record = audit_record(flow)
        service = service_label(record.get("service"))
        status = status_label(record["status"])
        patterns = self.routing.policy.intercepted if self.routing is not None else self.patterns
        self.requests.labels(host_label(record["host"], patterns), service, status, record["auth"]).inc()
        action = flow.metadata["gauth"].get("decision")
        if action is not None:  # the rules ran on it
            self.decisions.labels(record.get("rule") or "default", action).inc()
        self.duration.labels(service).observe(record["duration_ms"] / 1000)
        for key, direction in (("request_bytes", "sent"), ("response_bytes", "received")):
            if record[key]:
                self.bytes.labels(service, direction).inc(record[key])


addons = [Metrics()]
