"""Settings of the library: the log directory and the size cap, from arguments or the environment."""

import os
from typing import Callable, Mapping, Optional, Tuple

DEFAULT_DIR = "/tmp"
DEFAULT_MAX_BYTES = 8 * 1024 * 1024

#: Smallest cap accepted: a header plus a useful record must always fit in one file.
MIN_MAX_BYTES = 4096

ENV_DIR = "DVIC_LOG_DIR"
ENV_MAX_BYTES = "DVIC_LOG_MAX_BYTES"
ENV_KEEP_DAYS = "DVIC_LOG_KEEP_DAYS"

#: Files of exited writers are removed after this many days without a write (0: never).
DEFAULT_KEEP_DAYS = 7.0

_MAX_NAME_CHARS = 200


class ConfigError(ValueError):
    """A setting (argument or environment variable) that the library cannot use."""


def resolve_dir(directory: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> str:
    """Return the directory to write in: the argument, else $DVIC_LOG_DIR, else /tmp.

    The directory must already exist: creating it here could create it with the wrong owner or
    in the wrong place, and the node daemon only watches a known directory.
    """
    env = os.environ if environ is None else environ
    source = "directory argument"
    if directory is None:
        directory = env.get(ENV_DIR) or DEFAULT_DIR
        source = ENV_DIR if env.get(ENV_DIR) else "default directory"
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ConfigError("dvic_log: %s %r is not an existing directory" % (source, directory))
    return directory


def _argument_or_env(
    value: object, name: str, environ: Optional[Mapping[str, str]], env_name: str,
    parse: Callable[[str], object], expected: str,
) -> Optional[Tuple[object, str]]:
    """The argument and its name, else the environment variable's value and its name; None if neither is set."""
    if value is not None:
        return value, name
    env = os.environ if environ is None else environ
    raw = env.get(env_name, "").strip()
    if not raw:
        return None
    try:
        return parse(raw), env_name
    except ValueError:
        raise ConfigError("dvic_log: %s=%r is not %s" % (env_name, raw, expected)) from None


def resolve_max_bytes(max_bytes: Optional[int] = None, environ: Optional[Mapping[str, str]] = None) -> int:
    """Return the per-file cap: the argument, else $DVIC_LOG_MAX_BYTES, else 8 MiB."""
    found = _argument_or_env(max_bytes, "max_bytes", environ, ENV_MAX_BYTES, int, "a whole number of bytes")
    if found is None:
        return DEFAULT_MAX_BYTES
    value, source = found
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError("dvic_log: %s must be an int, not %s" % (source, type(value).__name__))
    if value < MIN_MAX_BYTES:
        raise ConfigError("dvic_log: %s=%d is below the minimum of %d bytes" % (source, value, MIN_MAX_BYTES))
    return value


def resolve_keep_seconds(
    keep_days: Optional[float] = None, environ: Optional[Mapping[str, str]] = None
) -> float:
    """Return the retention period in seconds: the argument, else $DVIC_LOG_KEEP_DAYS, else 7 days."""
    found = _argument_or_env(keep_days, "keep_days", environ, ENV_KEEP_DAYS, float, "a number of days")
    if found is None:
        return DEFAULT_KEEP_DAYS * 86400
    value, source = found
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("dvic_log: %s must be a number of days, not %s" % (source, type(value).__name__))
    if not value >= 0 or value == float("inf"):  # also refuses NaN
        raise ConfigError("dvic_log: %s=%r must be a finite number of days >= 0" % (source, value))
    return float(value) * 86400


def check_name(name: object) -> str:
    """Validate a demo name: the label operators see, so it must be short, printable text."""
    if not isinstance(name, str):
        raise ConfigError("dvic_log: the demo name must be a str, not %s" % type(name).__name__)
    stripped = name.strip()
    if not stripped:
        raise ConfigError("dvic_log: the demo name must not be empty")
    if len(stripped) > _MAX_NAME_CHARS:
        raise ConfigError("dvic_log: the demo name is longer than %d characters" % _MAX_NAME_CHARS)
    if any(ch in stripped for ch in "\r\n\x00"):
        raise ConfigError("dvic_log: the demo name must be one line without NUL characters")
    return stripped
