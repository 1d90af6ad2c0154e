"""Settings: flags, then GCP_AUTH_PROXY_* environment variables, then defaults; validated once.

This is the only module that reads the environment or option files for the proxy's own
configuration. Everything downstream (embed.py, the addons) receives a validated Settings.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from addons import hosts
from addons.google_auth import CLIENT_AUTH_MODES, DEFAULT_HOSTS, DEFAULT_SCOPES
from addons.proxy_auth import parse_proxy_auth
from addons.resolve import parse_resolve_rule
from proxy.errors import ProxyError

ENV_PREFIX = "GCP_AUTH_PROXY_"
DEFAULT_LISTEN = "127.0.0.1:8080"
LOG_FORMATS = ("text", "json")


def default_confdir() -> Path:
    return Path(platformdirs.user_config_dir("gcp-auth-proxy"))


@dataclass(frozen=True)
class Settings:
    """Everything the proxy needs to run, already validated."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    proxy_auth: str | None = None  # USER:PASS or @htpasswd-file; required off loopback
    confdir: Path = field(default_factory=default_confdir)
    inject_hosts: tuple[str, ...] = DEFAULT_HOSTS
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    resolve: tuple[str, ...] = ()  # PATTERN=ADDR[:PORT], applies to every upstream connection
    upstream_ca: Path | None = None  # trusted in addition to the public roots
    audit_log: str | None = None  # path or "-"
    admin_listen: str | None = None  # HOST:PORT for /healthz, /readyz, /metrics; off when None
    client_auth: str = "keep"
    allow_metadata: bool = False
    log_file: str | None = None
    log_format: str = "text"
    verbose: bool = False
    # Hardening (docs/security.md): reachable hosts, connection limits and timeouts (seconds).
    allow_hosts: tuple[str, ...] = ()  # if set, only these hosts may be reached at all
    max_connections: int = 256
    max_header_size: int = 64 * 1024
    header_timeout: float = 30.0
    idle_timeout: float = 600.0
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    shutdown_grace: float = 10.0

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


# name -> (kind, default). "list" values come from repeated flags or comma-separated env values.
_FIELDS: dict[str, str] = {
    "listen": "str",
    "proxy_auth": "str",
    "confdir": "str",
    "inject_host": "list",
    "scopes": "list",
    "resolve": "list",
    "upstream_ca": "str",
    "audit_log": "str",
    "admin_listen": "str",
    "client_auth": "str",
    "allow_metadata": "bool",
    "log_file": "str",
    "log_format": "str",
    "verbose": "bool",
    "allow_host": "list",
    "max_connections": "str",
    "max_header_size": "str",
    "header_timeout": "str",
    "idle_timeout": "str",
    "connect_timeout": "str",
    "read_timeout": "str",
    "shutdown_grace": "str",
}


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _from_env(name: str, kind: str, environ: Mapping[str, str]) -> Any:
    raw = environ.get(env_name(name))
    if raw is None or raw == "":
        return None
    if kind == "list":
        return [part.strip() for part in raw.split(",") if part.strip()]
    if kind == "bool":
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ProxyError(f"{env_name(name)}={raw!r} is not a boolean (use true or false)")
    return raw


def from_sources(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags (None = not given) over environment over defaults, then validate."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    for name, kind in _FIELDS.items():
        value = flags.get(name)
        if value is None or (kind == "list" and not value):
            value = _from_env(name, kind, environ)
        if value is not None:
            merged[name] = value
    return validate(merged)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (loopback). Port 0 picks a free port."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ProxyError(f"--listen {text!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate(values: Mapping[str, Any]) -> Settings:
    """Build Settings from raw values; every error names the flag and says what to do."""
    host, port = parse_listen(values.get("listen", DEFAULT_LISTEN))
    proxy_auth = values.get("proxy_auth") or None
    if proxy_auth:
        try:
            parse_proxy_auth(proxy_auth)
        except ValueError as e:
            raise ProxyError(f"--proxy-auth: {e}") from None
    elif not is_loopback(host):
        raise ProxyError(
            f"refusing to listen on {host}:{port} without --proxy-auth: an open proxy would hand "
            "Google credentials to anyone who can reach it"
        )

    inject = tuple(values.get("inject_host") or DEFAULT_HOSTS)
    for pattern in inject:
        try:
            hosts.parse_host_pattern(pattern)
        except ValueError as e:
            raise ProxyError(f"--inject-host: {e}") from None
    scopes = tuple(s for scope in values.get("scopes") or DEFAULT_SCOPES for s in _split_scopes(scope))
    resolve = tuple(values.get("resolve") or ())
    for rule in resolve:
        try:
            parse_resolve_rule(rule)
        except ValueError as e:
            raise ProxyError(f"--resolve: {e}") from None

    upstream_ca = values.get("upstream_ca")
    upstream_ca_path = Path(upstream_ca).expanduser() if upstream_ca else None
    if upstream_ca_path is not None and not upstream_ca_path.is_file():
        raise ProxyError(f"--upstream-ca {upstream_ca_path} is not a readable file")

    client_auth = values.get("client_auth", "keep")
    if client_auth not in CLIENT_AUTH_MODES:
        raise ProxyError(f"--client-auth must be one of {', '.join(CLIENT_AUTH_MODES)}, not {client_auth!r}")
    log_format = values.get("log_format", "text")
    if log_format not in LOG_FORMATS:
        raise ProxyError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")

    confdir = values.get("confdir")
    return Settings(
        listen_host=host,
        listen_port=port,
        proxy_auth=proxy_auth,
        confdir=Path(confdir).expanduser() if confdir else default_confdir(),
        inject_hosts=inject,
        scopes=scopes,
        resolve=resolve,
        upstream_ca=upstream_ca_path,
        audit_log=values.get("audit_log") or None,
        admin_listen=_admin_listen(values.get("admin_listen"), proxy_auth),
        client_auth=client_auth,
        allow_metadata=bool(values.get("allow_metadata", False)),
        log_file=values.get("log_file") or None,
        log_format=log_format,
        verbose=bool(values.get("verbose", False)),
        **_hardening(values),
    )


def _admin_listen(text: str | None, proxy_auth: str | None) -> str | None:
    """--admin-listen HOST:PORT; loopback unless proxy auth is set (the endpoints have no auth)."""
    if not text:
        return None
    from addons.admin import parse_admin_listen

    try:
        host, _port = parse_admin_listen(text)
    except ValueError as e:
        raise ProxyError(f"--admin-listen: {e}") from None
    if not proxy_auth and not is_loopback(host):
        raise ProxyError(
            f"refusing to serve the admin endpoints on {host} without --proxy-auth: "
            "use a loopback address such as 127.0.0.1:9090"
        )
    return text


def _split_scopes(text: str) -> Sequence[str]:
    return [s for s in text.replace(",", " ").split() if s]


def _hardening(values: Mapping[str, Any]) -> dict[str, Any]:
    """--allow-host, the connection limits and timeouts: numbers checked, errors name the flag."""
    allow = tuple(values.get("allow_host") or ())
    for pattern in allow:
        try:
            hosts.parse_host_pattern(pattern)
        except ValueError as e:
            raise ProxyError(f"--allow-host: {e}") from None
    out: dict[str, Any] = {"allow_hosts": allow}
    defaults = Settings()
    for name in ("max_connections", "max_header_size"):
        raw = values.get(name)
        out[name] = getattr(defaults, name) if raw is None else _size(name, raw)
    for name in ("header_timeout", "idle_timeout", "connect_timeout", "read_timeout", "shutdown_grace"):
        raw = values.get(name)
        out[name] = getattr(defaults, name) if raw is None else _seconds(name, raw)
    if out["idle_timeout"] < 1:
        raise ProxyError("--idle-timeout must be at least 1 second")
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _size(name: str, raw: Any) -> int:
    """A count or byte size: ``256``, ``64k``, ``1m``; 0 means no limit."""
    text = str(raw).strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or len(digits) > 12:
        raise ProxyError(f"{_flag(name)} {raw!r} is not a whole number (e.g. 256, 64k)")
    return int(digits) * scale


def _seconds(name: str, raw: Any) -> float:
    """Seconds, a non-negative finite number; 0 turns the timeout off (not allowed for every flag)."""
    try:
        value = float(str(raw).strip().removesuffix("s"))
    except ValueError:
        raise ProxyError(f"{_flag(name)} {raw!r} is not a number of seconds") from None
    if not 0 <= value <= 86400 * 7:
        raise ProxyError(f"{_flag(name)} {raw!r} must be between 0 and 604800 seconds")
    return value
