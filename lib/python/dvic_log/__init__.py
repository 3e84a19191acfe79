"""dvic_log: the logging library DVIC demos use; each process writes $DVIC_LOG_DIR/dvic_log_<token>.

Typical use::

    import dvic_log
    log = dvic_log.get_logger("robot-arm")
    log.info("calibrated")
    dvic_log.heartbeat(log)  # in the main loop: "still running", at most one record a second

The node daemon discovers these files and ships every line. The file format is described in
docs/log-format.md; this package needs nothing but the standard library (Python >= 3.8).
"""

from typing import Optional

from ._config import (
    DEFAULT_DIR,
    DEFAULT_KEEP_DAYS,
    DEFAULT_MAX_BYTES,
    ENV_DIR,
    ENV_KEEP_DAYS,
    ENV_MAX_BYTES,
    MIN_MAX_BYTES,
    ConfigError,
)
from ._format import FORMAT_VERSION, LEVELS
from ._handler import DvicLogHandler, get_logger, heartbeat
from ._identity import ProcessIdentity
from ._writer import FILE_PREFIX, ROTATED_SUFFIX, LogFile

__version__ = "0.1.0"


def open_log(name: str, *, directory: Optional[str] = None, max_bytes: Optional[int] = None) -> LogFile:
    """Open a dvic_log file without the logging module: ``open_log("demo").info("hi")``."""
    return LogFile(name, directory=directory, max_bytes=max_bytes)


__all__ = [
    "DEFAULT_DIR",
    "DEFAULT_KEEP_DAYS",
    "DEFAULT_MAX_BYTES",
    "ENV_DIR",
    "ENV_KEEP_DAYS",
    "ENV_MAX_BYTES",
    "FILE_PREFIX",
    "FORMAT_VERSION",
    "LEVELS",
    "MIN_MAX_BYTES",
    "ROTATED_SUFFIX",
    "ConfigError",
    "DvicLogHandler",
    "LogFile",
    "ProcessIdentity",
    "get_logger",
    "heartbeat",
    "open_log",
    "__version__",
]
