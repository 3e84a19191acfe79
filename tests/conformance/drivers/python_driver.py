"""Conformance driver of the Python library (tests/conformance/README.md): `python_driver.py SCRIPT.json`.

Runs the script's ops with the demo-facing API: dvic_log.get_logger() and the logging module,
dvic_log.heartbeat(). Raw bytes (msg_hex) and an explicit traceback (exc) go through the same
handler's LogFile, the only API that takes them as they are.
"""

import json
import logging
import os
import sys
import threading
from typing import Any

import dvic_log

CAPABILITIES = {"bytes", "surrogates", "fork", "threads"}


def template(text: str, **values: int) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def handler_of(log: logging.Logger) -> Any:
    for handler in log.handlers:
        if isinstance(handler, (dvic_log.DvicLogHandler, dvic_log._handler.UnavailableHandler)):
            return handler
    raise RuntimeError(f"no dvic_log handler on {log.name}")


def write(log: logging.Logger, op: dict[str, Any]) -> None:
    level = getattr(logging, op["level"])
    name = op.get("logger") or log.name
    if "msg_hex" in op or "exc" in op:
        handler = handler_of(log)
        msg: Any = bytes.fromhex(op["msg_hex"]) if "msg_hex" in op else op["msg"]
        if isinstance(handler, dvic_log.DvicLogHandler):
            try:
                handler.log_file.write(level, msg, logger=name, exc=op.get("exc"))
            except OSError as err:
                handler._failed(err)
        return
    msg = op["msg"] * op.get("repeat", 1)
    target = logging.getLogger(name) if op.get("logger") else log
    target.log(level, "%s", msg)


def run(ops: list[dict[str, Any]]) -> list[int]:
    logs: dict[str, logging.Logger] = {}
    skipped = []
    for index, op in enumerate(ops):
        if op.get("requires") and op["requires"] not in CAPABILITIES:
            skipped.append(index)
            continue
        kind = op["op"]
        if kind == "open":
            logs[op["log"]] = dvic_log.get_logger(op["name"])
        elif kind == "write":
            write(logs[op["log"]], op)
        elif kind == "write_many":
            for i in range(op["count"]):
                write(logs[op["log"]], dict(op, msg=template(op["msg"], i=i)))
        elif kind == "heartbeat":
            dvic_log.heartbeat(logs[op["log"]])
        elif kind == "fork":
            pid = os.fork()
            if pid == 0:
                for i in range(op["count"]):
                    logs[op["log"]].info("%s", template(op["msg"], i=i))
                os._exit(0)
            os.waitpid(pid, 0)
        elif kind == "threads":
            log = logs[op["log"]]
            start = threading.Barrier(op["threads"])

            def work(t: int, log: logging.Logger = log, op: dict[str, Any] = op, start: threading.Barrier = start) -> None:
                start.wait()
                for i in range(op["count"]):
                    log.info("%s", template(op["msg"], t=t, i=i))

            threads = [threading.Thread(target=work, args=(t,)) for t in range(op["threads"])]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        elif kind == "close":
            for handler in logs[op["log"]].handlers:
                handler.close()
    return skipped


def main() -> int:
    try:
        with open(sys.argv[1], encoding="utf-8") as f:
            script = json.load(f)
        ops = script["ops"]
    except (IndexError, OSError, ValueError, KeyError) as err:
        print(f"python_driver: cannot read the script: {err}", file=sys.stderr)
        return 2
    skipped = run(ops)
    print(json.dumps({"pid": os.getpid(), "skipped": skipped}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
