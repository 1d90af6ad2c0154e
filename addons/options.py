"""Every setting, declared once: its name, type, default, help, and who takes it.

One name end to end: ``inject_host`` is the flag ``--inject-host``, the variable
``GCP_AUTH_PROXY_INJECT_HOST``, the ``Settings`` field, the mitmproxy option and the README row.
proxy/ derives its argparse parsers, the environment lookup, ``Settings`` and the README table
from this list; each addon declares its own options from it in ``load()`` with ``declare()``, so
``mitmdump -s addons/X.py --set inject_host=...`` takes the same names. Nothing here imports
mitmproxy or proxy/: it is plain data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["str", "list", "bool", "count", "seconds"]
PROXY = frozenset({"serve", "run", "env"})  # every command that starts (or describes) a proxy

DEFAULT_INJECT_HOSTS = ("*.googleapis.com",)
DEFAULT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
CLIENT_AUTH_MODES = ("keep", "replace", "reject")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Option:
    """One setting. ``addon``: a mitmproxy option an addon declares (else only the program reads it)."""

    name: str
    kind: Kind
    default: Any
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    addon: bool = True
    group: str = "proxy"  # "proxy" or "hardening": the --help section and README table
    short: str | None = None
    commands: frozenset[str] = PROXY

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "GCP_AUTH_PROXY_" + self.name.upper()

    @property
    def mitmproxy_type(self) -> Any:
        """The type mitmproxy's OptManager understands for this kind."""
        return {"str": str, "list": Sequence[str], "bool": bool, "count": int, "seconds": float}[self.kind]


OPTIONS: tuple[Option, ...] = (
    Option("config", "str", "",
           "read settings from this TOML file: keys are the option names (inject_host = "
           "[\"*.googleapis.com\"]); flags and environment variables override it. See Config file",
           metavar="FILE", commands=PROXY | {"doctor"}),
    Option("listen", "str", "127.0.0.1:8080",
           "where to listen. A non-loopback address is refused without --proxy-auth: an open "
           "proxy that hands out Google credentials is a break-in",
           metavar="HOST:PORT", addon=False),
    Option("proxy_auth", "str", "",
           "require proxy authentication (Basic): USER:PASS, or @FILE for an htpasswd file "
           "(bcrypt or {SHA} entries)", metavar="USER:PASS|@FILE", commands=PROXY | {"doctor"}),
    Option("confdir", "str", "",
           "holds the proxy CA and the trust bundles",
           metavar="DIR", addon=False, commands=PROXY | {"ca", "doctor"}),
    Option("inject_host", "list", list(DEFAULT_INJECT_HOSTS),
           "hosts that get a token (repeatable). Exact names or *.suffix; matching is on whole DNS "
           "labels, case-insensitive, ignoring a trailing dot: storage.googleapis.com matches, "
           "storage.googleapis.com.evil.test and evilgoogleapis.com do not",
           metavar="PATTERN", commands=PROXY | {"doctor"}),
    Option("impersonate_service_account", "str", "",
           "speak as this service account: SA, or SA1,SA2,...,TARGET with gcloud's meaning (the last "
           "is the target, the ones before it the delegation chain). Tokens come from the IAM "
           "Credentials API, called with the ADC token; applies to --inject-host and --id-token-host",
           metavar="SA[,SA...]", commands=PROXY | {"doctor"}),
    Option("id_token_host", "list", [],
           "hosts that get an ID token instead of an access token (repeatable): Cloud Run "
           "(*.run.app), Cloud Functions, IAP. AUDIENCE defaults to https://HOST (for "
           "*.cloudfunctions.net the function URL, https://HOST/FUNCTION); for IAP give the OAuth "
           "client id. A client's own Authorization is kept and the ID token goes in "
           "X-Serverless-Authorization", metavar="PATTERN[=AUDIENCE]", commands=PROXY | {"doctor"}),
    Option("default_deny", "bool", False,
           "refuse every call no [[rule]] allows (the config file's default = \"deny\"), and every "
           "CONNECT to a host no route injects for unless a rule allows that host: an egress allowlist",
           group="hardening"),
    Option("scopes", "list", list(DEFAULT_SCOPES),
           "OAuth scopes for the token (repeatable or comma-separated)", metavar="SCOPE",
           commands=PROXY | {"doctor"}),
    Option("resolve", "list", [],
           "connect upstream for hosts matching PATTERN to ADDR[:PORT] instead of resolving them, "
           "keeping SNI, certificate checks and Host on the name (repeatable; the most specific "
           "pattern wins; without :PORT the requested port is kept). Applies to every upstream "
           "connection and to the proxy's own token fetches. For Private Google Access "
           "(*.googleapis.com=199.36.153.4:443) and Private Service Connect endpoints",
           metavar="PATTERN=ADDR[:PORT]", commands=PROXY | {"doctor"}),
    Option("upstream_ca", "str", "",
           "trust this CA bundle in addition to the public roots for upstream TLS, for proxied "
           "traffic and token fetches alike",
           metavar="FILE", addon=False, commands=PROXY | {"doctor"}),
    Option("upstream_proxy", "str", "",
           "send every upstream connection, and the proxy's own token fetches, through this HTTP "
           "proxy, always as a CONNECT tunnel (plain http:// too): http://[USER:PASS@]HOST:PORT. "
           "--resolve still picks the address asked for; errors name the upstream proxy",
           metavar="URL"),
    Option("upstream_proxy_auth", "str", "",
           "the upstream proxy's credentials from a file holding USER:PASS (out of the process "
           "list), sent as Basic Proxy-Authorization on each CONNECT", metavar="@FILE"),
    Option("upstream_proxy_bypass", "list", [],
           "connect directly, not through --upstream-proxy, to hosts matching this (repeatable): "
           "an exact name or address, or *.suffix; matched on the name the client asked for. "
           "Loopback and the GCE metadata server are always direct", metavar="PATTERN"),
    Option("audit_log", "str", "",
           "append one JSON line per request to an injected host to this file ('-': stdout); "
           "see the Audit log section", metavar="PATH"),
    Option("admin_listen", "str", "",
           "serve /healthz, /readyz and /metrics here (off by default; loopback unless --proxy-auth)",
           metavar="HOST:PORT"),
    Option("client_auth", "str", "keep",
           "a request that brings its own Authorization: pass it on unchanged (least surprising), "
           "replace it with the proxy's token (a credential broker for untrusted code), or refuse "
           "it with 403", choices=CLIENT_AUTH_MODES),
    Option("allow_metadata", "bool", False,
           "let clients reach the GCE metadata server through the proxy (plain http:// only; "
           "their metadata headers are stripped)"),
    Option("log_file", "str", "", "write operational logs here instead of stderr",
           metavar="PATH", addon=False),
    Option("log_format", "str", "text", "operational log format", choices=LOG_FORMATS, addon=False),
    Option("verbose", "bool", False, "debug logging", short="-v", addon=False),
    Option("allow_host", "list", [],
           "only these hosts may be reached at all, exact or *.suffix (repeatable); others get 403",
           metavar="PATTERN", group="hardening"),
    Option("max_connections", "count", 256,
           "client connections open at once; more are closed at once (0: no cap)",
           metavar="N", group="hardening"),
    Option("max_header_size", "count", 64 * 1024,
           "largest HTTP/1 request head, e.g. 64k; larger gets 431 (0: no cap)",
           metavar="BYTES", group="hardening"),
    Option("header_timeout", "seconds", 30.0,
           "seconds a request head may take to arrive; slower gets 408 (slowloris)",
           metavar="S", group="hardening"),
    Option("idle_timeout", "seconds", 600.0,
           "close connections and tunnels that move no bytes for this long",
           metavar="S", addon=False, group="hardening"),
    Option("connect_timeout", "seconds", 10.0,
           "seconds to open an upstream connection (JSON 504)", metavar="S", group="hardening"),
    Option("read_timeout", "seconds", 300.0,
           "seconds from a complete request to the upstream's response head (JSON 504)",
           metavar="S", group="hardening"),
    Option("shutdown_grace", "seconds", 10.0,
           "on SIGTERM, seconds to let requests in flight finish", metavar="S", addon=False,
           group="hardening"),
    Option("allow_uid", "list", [],
           "on a loopback address, serve other users' connections too: this uid (repeatable), or "
           "'any' for every local user. By default only the proxy's own uid may connect (Linux; "
           "root only when named); non-loopback listens rely on --proxy-auth instead",
           metavar="UID|any", group="hardening"),
    Option("placeholder_tokens", "list", [],
           "placeholder bearer tokens to remove from requests (set by `run`, never a flag)",
           commands=frozenset()),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def declare(loader: Any, *names: str) -> None:
    """Declare these options on a mitmproxy loader, as the table says (an unknown name is a bug)."""
    for name in names:
        option = BY_NAME[name]
        default = list(option.default) if option.kind == "list" else option.default
        if option.choices:
            loader.add_option(name, option.mitmproxy_type, default, option.help, choices=list(option.choices))
        else:
            loader.add_option(name, option.mitmproxy_type, default, option.help)
