"""The logging bridge: get_logger() and DvicLogHandler inside ordinary logging setups."""

import logging
import logging.config
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dvic_log
import pytest
from dvic_log_testkit import LIB_DIR, live_files, read_file


@pytest.fixture
def fresh_logger_name(request: pytest.FixtureRequest):
    """A logger name unique to the test; its handlers are closed and removed afterwards."""
    name = "demo-" + request.node.name.replace("[", "-").replace("]", "")
    yield name
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def records_of(logger: logging.Logger) -> list[dict]:
    (handler,) = [h for h in logger.handlers if isinstance(h, dvic_log.DvicLogHandler)]
    return read_file(Path(handler.path))[1]


def test_get_logger_returns_a_ready_logger_once(log_dir: Path, fresh_logger_name: str):
    log = dvic_log.get_logger(fresh_logger_name)
    assert dvic_log.get_logger(fresh_logger_name) is log
    assert len(live_files(log_dir)) == 1  # no second file for the second call
    log.debug("debug is on by default")
    log.info("hello %s", "world")
    header = read_file(live_files(log_dir)[0])[0]
    assert header["name"] == fresh_logger_name
    assert [(r["level"], r["msg"], r["logger"]) for r in records_of(log)] == [
        ("DEBUG", "debug is on by default", fresh_logger_name),
        ("INFO", "hello world", fresh_logger_name),
    ]


def test_an_application_level_is_kept(log_dir: Path, fresh_logger_name: str):
    logging.getLogger(fresh_logger_name).setLevel(logging.WARNING)
    log = dvic_log.get_logger(fresh_logger_name)
    log.info("filtered")
    log.warning("kept")
    assert [r["msg"] for r in records_of(log)] == ["kept"]


def test_child_loggers_propagate_with_their_own_name(log_dir: Path, fresh_logger_name: str):
    log = dvic_log.get_logger(fresh_logger_name)
    logging.getLogger(fresh_logger_name + ".camera").error("no frame")
    assert records_of(log)[-1]["logger"] == fresh_logger_name + ".camera"


def test_tracebacks_and_stacks_go_to_exc(log_dir: Path, fresh_logger_name: str):
    log = dvic_log.get_logger(fresh_logger_name)
    try:
        {}["missing"]
    except KeyError:
        log.exception("lookup failed\nsecond line")
    log.info("where am I", stack_info=True)
    failed, stack = records_of(log)
    assert failed["level"] == "ERROR"
    assert failed["msg"] == "lookup failed\nsecond line"
    assert failed["exc"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing'" in failed["exc"]
    assert stack["exc"].startswith("Stack (most recent call last):")
    assert "msg" in stack and "\n" not in stack["msg"]


def test_a_badly_formatted_message_is_kept_not_lost(log_dir: Path, fresh_logger_name: str):
    log = dvic_log.get_logger(fresh_logger_name)
    log.propagate = False  # pytest's own capture handler would raise on this record
    log.info("%d apples", "three")
    (rec,) = records_of(log)
    assert rec["msg"].startswith("'%d apples' % ('three',) (dvic_log: message formatting failed: TypeError")


def test_custom_levels_map_to_standard_names(log_dir: Path, fresh_logger_name: str):
    log = dvic_log.get_logger(fresh_logger_name, level=1)
    log.log(25, "notice")
    log.log(5, "trace")
    log.log(60, "panic")
    assert [r["level"] for r in records_of(log)] == ["INFO", "DEBUG", "CRITICAL"]


def test_a_formatter_shapes_msg_but_not_exc(log_dir: Path, fresh_logger_name: str):
    handler = dvic_log.DvicLogHandler(fresh_logger_name)
    handler.setFormatter(logging.Formatter("[%(threadName)s] %(message)s"))
    logger = logging.getLogger(fresh_logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        logger.exception("math")
    (rec,) = read_file(Path(handler.path))[1]
    assert rec["msg"] == "[MainThread] math"
    assert rec["exc"].endswith("ZeroDivisionError: division by zero")


def test_odd_unicode_through_logging_gives_valid_utf8(log_dir: Path, fresh_logger_name: str):
    log = dvic_log.get_logger(fresh_logger_name)
    log.info("surrogate \udcff, pair \ud83d\ude00, emoji 🤖, nul \x00, sep \u2028, bidi \u202e")
    log.info(b"bytes \xff\xfe")
    (surrogates, raw) = records_of(log)  # read_file decodes strictly
    assert surrogates["msg"] == "surrogate \ufffd, pair 😀, emoji 🤖, nul \x00, sep \u2028, bidi \u202e"
    assert raw["msg"] == "b'bytes \\xff\\xfe'"


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    """A demo in its own Python process, with the library from the source tree."""
    return subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(LIB_DIR)),
                          capture_output=True, text=True, timeout=60)


def test_dict_config_can_build_the_handler(log_dir: Path, fresh_logger_name: str):
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "dvic": {"class": "dvic_log.DvicLogHandler", "name": fresh_logger_name, "level": "INFO"}
            },
            "loggers": {fresh_logger_name: {"handlers": ["dvic"], "level": "DEBUG"}},
        }
    )
    logger = logging.getLogger(fresh_logger_name)
    logger.debug("below the handler level")
    logger.info("configured")
    (handler,) = logger.handlers
    assert handler.name == "dvic" and handler.demo_name == fresh_logger_name
    assert [r["msg"] for r in read_file(Path(handler.path))[1]] == ["configured"]


def test_a_write_failure_is_reported_once_on_stderr_not_to_the_caller(log_dir: Path):
    script = textwrap.dedent(
        """
        import resource, dvic_log
        log = dvic_log.get_logger("full-disk-demo")
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
        for i in range(40):
            log.info("record %d %s", i, "w" * 40)  # must never raise into the demo
        print("demo still running")
        """
    )
    result = run_script(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "demo still running\n"
    # 40 failed records, one line (docs/log-format.md "When logging fails"), no traceback per record
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("dvic_log: demo 'full-disk-demo'")
    assert "no room in" in result.stderr and "Traceback" not in result.stderr


def test_logging_after_shutdown_still_reaches_the_same_file(log_dir: Path):
    # atexit runs last-registered first: this function is registered before logging's own
    # shutdown hook, so it logs after logging.shutdown() closed every handler.
    script = textwrap.dedent(
        """
        import atexit
        atexit.register(lambda: log.info("from atexit, after logging.shutdown()"))
        import dvic_log
        log = dvic_log.get_logger("late-demo")
        log.info("during the run")
        """
    )
    result = run_script(script)
    assert result.returncode == 0 and result.stderr == ""
    (path,) = live_files(log_dir)
    assert [r["msg"] for r in read_file(path)[1]] == [
        "during the run",
        "from atexit, after logging.shutdown()",
    ]


def test_a_closed_handler_reopens_its_own_file(log_dir: Path, fresh_logger_name: str):
    log = dvic_log.get_logger(fresh_logger_name)
    (handler,) = log.handlers
    log.info("one")
    handler.close()
    log.info("two")
    assert live_files(log_dir) == [Path(handler.path)]
    assert [r["msg"] for r in records_of(log)] == ["one", "two"]
