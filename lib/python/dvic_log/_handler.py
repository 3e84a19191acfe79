"""Bridge to the standard logging module: DvicLogHandler and get_logger()."""

import logging
import sys
from typing import Any, Optional, Tuple, Union

from ._config import ConfigError, check_name
from ._forksafe import ForkSafeLock
from ._writer import LogFile

_MAX_LOGGER_CHARS = 200
_DEFAULT_FORMATTER = logging.Formatter()
_get_logger_lock = ForkSafeLock()


class DvicLogHandler(logging.Handler):
    """A logging handler that writes every record to its own dvic_log file.

    `name` is the demo name shown to operators (it is not the handler's logging name, which
    dictConfig may set). Without a formatter, "msg" is the plain message and the traceback goes
    to "exc"; with a formatter, "msg" is the formatter's rendering of the message line.
    """

    def __init__(
        self,
        name: str,
        level: int = logging.NOTSET,
        *,
        directory: Optional[str] = None,
        max_bytes: Optional[int] = None,
    ) -> None:
        super().__init__(level)
        self.log_file = LogFile(name, directory=directory, max_bytes=max_bytes)

    @property
    def demo_name(self) -> str:
        return self.log_file.name

    @property
    def path(self) -> str:
        return self.log_file.path

    def handle(self, record: logging.LogRecord) -> Any:
        """Filter, then emit without the handler-wide lock.

        LogFile already serialises the write itself; taking logging's per-handler lock as well
        would make every thread queue twice. (A filter may return a replacement record, as
        Python 3.12 allows.)
        """
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.log_file.closed:  # closed by logging.shutdown() while the program still logs
                self.log_file.reopen()
            msg, exc = self.render(record)
            self.log_file.write(
                record.levelno, msg, logger=record.name[:_MAX_LOGGER_CHARS], exc=exc, ts=record.created
            )
        except RecursionError:
            raise
        except Exception as err:
            self._failed(err)
        else:
            self._failing = False

    def heartbeat(self) -> None:
        """Write a heartbeat record (at most one per second); a failure is reported like a record's."""
        try:
            if self.log_file.closed:
                self.log_file.reopen()
            self.log_file.heartbeat()
        except Exception as err:
            self._failed(err)
        else:
            self._failing = False

    _failing = False  # a write failed and was reported; quiet until one succeeds again

    def _failed(self, err: Exception) -> None:
        """Report a failed write on stderr once per failure episode, never to the caller.

        logging's handleError prints a traceback per record: a full disk would then print one per
        log call. The demo must go on, and its stderr must stay readable (docs/log-format.md,
        "When logging fails").
        """
        if self._failing or not logging.raiseExceptions:
            return
        self._failing = True
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        if why.startswith("dvic_log: "):
            why = why[len("dvic_log: "):]
        report("demo %r: cannot write to %s: %s; records are dropped until writing works again"
               % (self.demo_name, self.log_file.path, why))

    def render(self, record: logging.LogRecord) -> Tuple[str, Optional[str]]:
        """Return (msg, exc) for a record; never raises for a badly formatted message."""
        try:
            record.message = record.getMessage()
        except Exception as err:
            # logging would drop such a record; keep what the caller passed instead.
            record.message = "%r %% %r (dvic_log: message formatting failed: %s: %s)" % (
                record.msg,
                record.args,
                type(err).__name__,
                err,
            )
        formatter = self.formatter
        if formatter is None:
            msg = record.message
        else:
            if formatter.usesTime():
                record.asctime = formatter.formatTime(record, formatter.datefmt)
            msg = formatter.formatMessage(record)
        fmt = formatter or _DEFAULT_FORMATTER
        parts = []
        if record.exc_info and record.exc_info[0] is not None:
            if not record.exc_text:
                record.exc_text = fmt.formatException(record.exc_info)
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(fmt.formatStack(record.stack_info))
        return msg, "\n".join(parts) or None

    def close(self) -> None:
        self.acquire()
        try:
            self.log_file.close()
            super().close()
        finally:
            self.release()


def report(message: str) -> None:
    """One line on stderr, the way every dvic_log library reports a logging failure."""
    try:
        sys.stderr.write("dvic_log: %s\n" % message)
        sys.stderr.flush()
    except Exception:  # no usable stderr: nothing more can be done, and the demo must go on
        pass


class UnavailableHandler(logging.NullHandler):
    """Stands in for DvicLogHandler when the log cannot be opened: records are dropped quietly.

    A logger without any handler would pass warnings to logging's last-resort handler (stderr);
    the problem was reported once already, so this one stays silent.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__()
        self.demo_name = name
        self.reason = reason

    def heartbeat(self) -> None:
        pass


def get_logger(
    name: str,
    level: int = logging.DEBUG,
    *,
    directory: Optional[str] = None,
    max_bytes: Optional[int] = None,
) -> logging.Logger:
    """Return the logger named `name`, writing to a dvic_log file for the demo `name`.

    Calling it again with the same name returns the same logger without a second file. The
    logger's level is set to `level` only if it had none, so an application's own setting wins.

    A bad name or argument raises ConfigError (a programming error). A log that cannot be opened
    because of the environment (DVIC_LOG_DIR missing or unwritable, a bad DVIC_LOG_MAX_BYTES, no
    free name) does not stop the demo: one line on stderr says why and its records are dropped.
    """
    name = check_name(name)
    with _get_logger_lock:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if isinstance(handler, (DvicLogHandler, UnavailableHandler)) and handler.demo_name == name:
                return logger
        try:
            handler = DvicLogHandler(name, directory=directory, max_bytes=max_bytes)
        except (ConfigError, OSError) as err:
            if isinstance(err, ConfigError) and (directory is not None or max_bytes is not None):
                raise  # the program's own argument: its bug, shown to it
            reason = str(err) if isinstance(err, ConfigError) else "cannot create a log file: %s" % err
            if reason.startswith("dvic_log: "):
                reason = reason[len("dvic_log: "):]
            report("demo %r: %s; its records are dropped" % (name, reason))
            handler = UnavailableHandler(name, reason)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)
        return logger


def heartbeat(log: Union[logging.Logger, LogFile, str]) -> None:
    """Tell the node that the demo is alive: `dvic_log.heartbeat(log)`, at most one record a second.

    `log` is what get_logger() returned (or its demo name), or a LogFile. Call it from the demo's
    main loop; calls between two records are free. Never raises for a logging failure (a LogFile
    raises like its write()).
    """
    if isinstance(log, LogFile):
        log.heartbeat()
        return
    logger = logging.getLogger(log) if isinstance(log, str) else log
    for handler in logger.handlers:
        if isinstance(handler, (DvicLogHandler, UnavailableHandler)):
            handler.heartbeat()
