"""Reads a ``--config`` TOML file into option values; every error names the file, the line and the key."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from addons.options import BY_NAME, Option
from addons.policy_file import POLICY_KEYS, PolicyError, parse_sections, read_toml
from proxy.errors import ProxyError

# Command arguments that are not settings: they stay on the command line of the one command.
_COMMAND_ARGUMENTS = {"no_placeholder": "run", "placeholder": "run", "isolate": "run", "format": "env",
                      "json": "doctor", "keep": "demo"}


def settable() -> dict[str, Option]:
    """The options a file may set: every user option but ``config`` itself."""
    return {name: o for name, o in BY_NAME.items() if o.commands and name != "config"}


def load_config(path: Path | str) -> dict[str, Any]:
    """Option values from a TOML file, in the shapes the flags give (lists, bools, strings).

    Keys are the option names (``inject_host = ["*.googleapis.com"]``); ``[[route]]``, ``[[rule]]``
    and ``default`` are checked here and read by the Routing addon (addons/policy_file.py). A list option also takes a
    single string; a count or seconds option a number or a string (``"64k"``). Values are checked
    for type only: ``proxy.settings.validate`` checks them like any flag.

    Raises:
        ProxyError: unreadable file, invalid TOML, an unknown or refused key, or a value of the wrong type.
    """
    try:
        data, text = read_toml(path)
        # routes and rules: checked here so a bad one stops the start with its line
        parse_sections(data, text, str(path))
    except PolicyError as e:
        raise ProxyError(str(e)) from None
    options = settable()
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in POLICY_KEYS:
            continue
        option = options.get(key)
        if option is None:
            raise ProxyError(f"{locate(path, key, text)}: {_unknown(key, options)}")
        try:
            values[key] = _coerce(option, value)
        except ValueError as e:
            raise ProxyError(f"{locate(path, key, text)}: key {key}: {e}") from None
    return values


def locate(path: Path | str, key: str, text: str | None = None) -> str:
    """``FILE:LINE`` of the first line that sets ``key`` (``FILE`` if it cannot be found)."""
    if text is None:
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            return str(path)
    quoted = re.escape(key)
    line = re.compile(rf"""^\s*(\[+\s*)?(["']?){quoted}\2\s*[=.\]]""")
    for number, content in enumerate(text.splitlines(), 1):
        if line.match(content):
            return f"{path}:{number}"
    return str(path)


def _unknown(key: str, options: dict[str, Option]) -> str:
    if key == "config":
        return "key config: a config file cannot name another one"
    if key in _COMMAND_ARGUMENTS:
        return f"key {key}: an argument of `{_COMMAND_ARGUMENTS[key]}`, not a setting; give it on the command line"
    if key in BY_NAME:  # in the table, but nobody sets it (placeholder_tokens: `run` sets it)
        return f"key {key}: not a setting a user can give"
    close = difflib.get_close_matches(key.replace("-", "_"), list(options), n=1)
    hint = f"did you mean {close[0]}?" if close else "the keys are the option names in the README's table"
    return f"unknown key {key}: {hint}"


def _coerce(option: Option, value: Any) -> Any:
    """The value in the shape a flag would give; ValueError says what was expected."""
    if option.kind == "list":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        if isinstance(value, list):
            odd = next(v for v in value if not isinstance(v, str))
            raise ValueError(f"expected an array of strings, got an array holding {_describe(odd)}")
        raise ValueError(f"expected an array of strings, got {_describe(value)}")
    if option.kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {_describe(value)}")
    if option.kind in ("count", "seconds"):
        # bool is an int in Python: `max_connections = true` must not mean 1
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return value if isinstance(value, str) else str(value)
        raise ValueError(f"expected a number or a string such as \"64k\", got {_describe(value)}")
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {_describe(value)}")


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), "a date or time")
    if isinstance(value, (dict, list)):
        return kind
    shown = str(value).lower() if isinstance(value, bool) else repr(value)  # as TOML spells it
    return f"{kind} ({shown})"
