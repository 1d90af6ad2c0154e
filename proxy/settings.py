"""Settings: flags, then GCP_AUTH_PROXY_* environment variables, then a --config file, then defaults.

This is the only module that reads the environment or option files (through proxy.config_file)
for the proxy's own configuration; the merged values are validated once. Everything downstream
(embed.py, the addons) receives a validated Settings.
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
from addons.options import BY_NAME, CLIENT_AUTH_MODES, LOG_FORMATS, OPTIONS, Option
from addons.policy_file import PolicyError
from addons.proxy_auth import parse_proxy_auth
from addons.resolve import parse_resolve_rule
from addons.routing import policy_from_options
from addons.same_user import parse_allow_uid
from addons.upstream_proxy import parse_routing
from proxy import config_file
from proxy.errors import ProxyError

DEFAULT_LISTEN = BY_NAME["listen"].default


def default_confdir() -> Path:
    return Path(platformdirs.user_config_dir("gcp-auth-proxy"))


def _default(name: str) -> Any:
    value = BY_NAME[name].default
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Settings:
    """Everything the proxy needs to run, already validated. Fields are the option names
    (addons/options.py; a test keeps them equal); help for each is in that table."""

    config: Path | None = None  # the TOML file the values below were read from, if any
    listen: str = _default("listen")
    proxy_auth: str | None = None  # required off loopback
    confdir: Path = field(default_factory=default_confdir)
    inject_host: tuple[str, ...] = _default("inject_host")
    impersonate_service_account: str | None = None  # SA or DELEGATE,...,TARGET (gcloud's order)
    id_token_host: tuple[str, ...] = ()  # PATTERN[=AUDIENCE]
    scopes: tuple[str, ...] = _default("scopes")
    resolve: tuple[str, ...] = ()
    upstream_ca: Path | None = None
    upstream_proxy: str | None = None  # http://[USER:PASS@]HOST:PORT (may hold a password: never log it)
    upstream_proxy_auth: str | None = None  # @FILE
    upstream_proxy_bypass: tuple[str, ...] = ()
    audit_log: str | None = None
    admin_listen: str | None = None
    client_auth: str = _default("client_auth")
    allow_metadata: bool = False
    log_file: str | None = None
    log_format: str = _default("log_format")
    verbose: bool = False
    allow_host: tuple[str, ...] = ()
    max_connections: int = _default("max_connections")
    max_header_size: int = _default("max_header_size")
    header_timeout: float = _default("header_timeout")
    idle_timeout: float = _default("idle_timeout")
    connect_timeout: float = _default("connect_timeout")
    read_timeout: float = _default("read_timeout")
    shutdown_grace: float = _default("shutdown_grace")
    allow_uid: tuple[str, ...] = ()  # loopback: uids besides our own, or ("any",)
    default_deny: bool = False

    @property
    def listen_host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return parse_listen(self.listen)[1]


# The options a user sets (flags, environment); placeholder_tokens is set by `run` itself.
USER_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.commands)


def env_name(name: str) -> str:
    return BY_NAME[name].env


def _from_env(option: Option, environ: Mapping[str, str]) -> Any:
    raw = environ.get(option.env)
    if raw is None or raw == "":
        return None
    if option.kind == "list":
        return [part.strip() for part in raw.split(",") if part.strip()]
    if option.kind == "bool":
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ProxyError(f"{option.env}={raw!r} is not a boolean (use true or false)")
    return raw


def from_sources(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags (None = not given) over environment over the config file over defaults, then validate.

    The file is named by ``--config`` or ``GCP_AUTH_PROXY_CONFIG``. A bad value from it is reported
    as ``FILE:LINE: key NAME: ...``; a bad flag or variable as before.

    Raises:
        ProxyError: for an unknown option name (a programming error: names come from the table)
            or an invalid value.
    """
    environ = os.environ if environ is None else environ
    unknown = sorted(set(flags) - set(BY_NAME) - _NOT_OPTIONS)
    if unknown:
        raise ProxyError(f"unknown option(s): {', '.join(unknown)}")
    known = {o.env for o in USER_OPTIONS} | _OTHER_VARIABLES
    stray = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    if stray:  # GCP_AUTH_PROXY_INJECT_HOSTS=... must not be silently ignored
        raise ProxyError(f"unknown variable {stray[0]}: the options are "
                         f"{', '.join(o.env for o in USER_OPTIONS)}")
    config = flags.get("config") or _from_env(BY_NAME["config"], environ)
    from_file = config_file.load_config(config) if config else {}
    merged: dict[str, Any] = {}
    for option in USER_OPTIONS:
        value = flags.get(option.name)
        if value is None or (option.kind == "list" and not value):
            value = _from_env(option, environ)
        if value is None and option.name in from_file:
            value = from_file[option.name]
        else:
            from_file.pop(option.name, None)  # overridden: a bad value there is not what failed
        if value is not None:
            merged[option.name] = value
    try:
        return validate(merged)
    except OptionError as e:
        if e.option not in from_file:
            raise
        flag = _flag(e.option)
        message = str(e)
        detail = message[len(flag):].lstrip(": ") if message.startswith(flag) else message
        raise ProxyError(f"{config_file.locate(config, e.option)}: key {e.option}: {detail}") from None


class OptionError(ProxyError):
    """A bad value of one option (``option``); from_sources re-words it when the value came from the file."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


ENV_PREFIX = "GCP_AUTH_PROXY_"
# Variables with our prefix that are not options: the marker `run` gives its child.
_OTHER_VARIABLES = frozenset({"GCP_AUTH_PROXY_RUN"})

# argparse attributes that are not settings: the subcommand and per-command arguments.
_NOT_OPTIONS = frozenset({"command", "argv", "placeholder", "isolate", "format", "keep", "audit_command", "path",
                          "json", "top"})


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
    listen = values.get("listen", DEFAULT_LISTEN)
    try:
        host, port = parse_listen(listen)
    except ProxyError as e:
        raise OptionError("listen", str(e)) from None
    proxy_auth = values.get("proxy_auth") or None
    if proxy_auth:
        try:
            parse_proxy_auth(proxy_auth)
        except ValueError as e:
            raise OptionError("proxy_auth", f"--proxy-auth: {e}") from None
    elif not is_loopback(host):
        raise OptionError(
            "listen", f"refusing to listen on {host}:{port} without --proxy-auth: an open proxy would hand "
            "Google credentials to anyone who can reach it"
        )

    inject = tuple(values.get("inject_host") or _default("inject_host"))
    for pattern in inject:
        try:
            hosts.parse_host_pattern(pattern)
        except ValueError as e:
            raise OptionError("inject_host", f"--inject-host: {e}") from None
    scopes = tuple(s for scope in values.get("scopes") or _default("scopes") for s in _split_scopes(scope))
    resolve = tuple(values.get("resolve") or ())
    for rule in resolve:
        try:
            parse_resolve_rule(rule)
        except ValueError as e:
            raise OptionError("resolve", f"--resolve: {e}") from None

    upstream_ca = values.get("upstream_ca")
    upstream_ca_path = Path(upstream_ca).expanduser() if upstream_ca else None
    if upstream_ca_path is not None and not upstream_ca_path.is_file():
        raise OptionError("upstream_ca", f"--upstream-ca {upstream_ca_path} is not a readable file")
    upstream_proxy = values.get("upstream_proxy") or None
    upstream_proxy_auth = values.get("upstream_proxy_auth") or None
    upstream_proxy_bypass = tuple(values.get("upstream_proxy_bypass") or ())
    try:
        parse_routing(upstream_proxy or "", upstream_proxy_auth or "", upstream_proxy_bypass)
    except ValueError as e:  # the message starts with the flag
        names = ("upstream_proxy_bypass", "upstream_proxy_auth", "upstream_proxy")  # longest flag first
        raise OptionError(next((n for n in names if str(e).startswith(_flag(n))), "upstream_proxy"), str(e)) from None

    client_auth = values.get("client_auth", "keep")
    if client_auth not in CLIENT_AUTH_MODES:
        raise OptionError("client_auth", f"--client-auth must be one of {', '.join(CLIENT_AUTH_MODES)}, not {client_auth!r}")
    log_format = values.get("log_format", "text")
    if log_format not in LOG_FORMATS:
        raise OptionError("log_format", f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")

    confdir = values.get("confdir")
    config = values.get("config")
    settings = Settings(
        config=Path(config).expanduser() if config else None,
        listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        proxy_auth=proxy_auth,
        confdir=Path(confdir).expanduser() if confdir else default_confdir(),
        inject_host=inject,
        scopes=scopes,
        resolve=resolve,
        upstream_ca=upstream_ca_path,
        upstream_proxy=upstream_proxy,
        upstream_proxy_auth=upstream_proxy_auth,
        upstream_proxy_bypass=upstream_proxy_bypass,
        audit_log=values.get("audit_log") or None,
        admin_listen=_admin_listen(values.get("admin_listen"), proxy_auth),
        client_auth=client_auth,
        allow_metadata=bool(values.get("allow_metadata", False)),
        log_file=values.get("log_file") or None,
        log_format=log_format,
        verbose=bool(values.get("verbose", False)),
        impersonate_service_account=values.get("impersonate_service_account") or None,
        id_token_host=tuple(values.get("id_token_host") or ()),
        default_deny=bool(values.get("default_deny", False)),
        **_hardening(values),
    )
    try:  # routes, rules and their shorthand flags: an error names the file line or the flag
        policy_from_options(settings)
    except PolicyError as e:
        raise ProxyError(str(e)) from None
    return settings


def _admin_listen(text: str | None, proxy_auth: str | None) -> str | None:
    """--admin-listen HOST:PORT; loopback unless proxy auth is set (the endpoints have no auth)."""
    if not text:
        return None
    from addons.admin import parse_admin_listen

    try:
        host, _port = parse_admin_listen(text)
    except ValueError as e:
        raise OptionError("admin_listen", f"--admin-listen: {e}") from None
    if not proxy_auth and not is_loopback(host):
        raise OptionError(
            "admin_listen", f"refusing to serve the admin endpoints on {host} without --proxy-auth: "
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
            raise OptionError("allow_host", f"--allow-host: {e}") from None
    out: dict[str, Any] = {"allow_host": allow}
    try:
        uids = parse_allow_uid(values.get("allow_uid") or ())
    except ValueError as e:
        raise OptionError("allow_uid", f"--allow-uid: {e}") from None
    out["allow_uid"] = ("any",) if uids.any_uid else tuple(str(u) for u in sorted(uids.uids))
    defaults = Settings()
    for name in ("max_connections", "max_header_size"):
        raw = values.get(name)
        out[name] = getattr(defaults, name) if raw is None else _size(name, raw)
    for name in ("header_timeout", "idle_timeout", "connect_timeout", "read_timeout", "shutdown_grace"):
        raw = values.get(name)
        out[name] = getattr(defaults, name) if raw is None else _seconds(name, raw)
    if out["idle_timeout"] < 1:
        raise OptionError("idle_timeout", "--idle-timeout must be at least 1 second")
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _size(name: str, raw: Any) -> int:
    """A count or byte size: ``256``, ``64k``, ``1m``; 0 means no limit."""
    text = str(raw).strip().lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or len(digits) > 12:
        raise OptionError(name, f"{_flag(name)} {raw!r} is not a whole number (e.g. 256, 64k)")
    return int(digits) * scale


def _seconds(name: str, raw: Any) -> float:
    """Seconds, a non-negative finite number; 0 turns the timeout off (not allowed for every flag)."""
    try:
        value = float(str(raw).strip().removesuffix("s"))
    except ValueError:
        raise OptionError(name, f"{_flag(name)} {raw!r} is not a number of seconds") from None
    if not 0 <= value <= 86400 * 7:
        raise OptionError(name, f"{_flag(name)} {raw!r} must be between 0 and 604800 seconds")
    return value
