"""The example demo: counts visitors, logs through dvic_log, sends heartbeats (docs/demos.md).

With the dvic_log library installed (`pip install lib/python` on the node) it writes its own log
file with a heartbeat every 2 s. Without it, it prints: the daemon turns its stdout into log lines
too, and those count as heartbeats as well.
"""

import os
import signal
import sys
import time

try:
    import dvic_log
except ImportError:
    dvic_log = None

running = True


def stop(signum, frame):
    global running
    running = False


def main():
    signal.signal(signal.SIGTERM, stop)
    name = os.environ.get("DVIC_DEMO_NAME", "hello-demo")
    version = os.environ.get("DVIC_DEMO_VERSION", "?")
    greeting = os.environ.get("GREETING", "hello")
    os.makedirs("data", exist_ok=True)
    counter = os.path.join("data", "visitors")
    visitors = int(open(counter).read()) if os.path.exists(counter) else 0

    log = dvic_log.open_log(name) if dvic_log else None

    def say(text):
        if log:
            log.info(text)
        else:
            print(text, flush=True)

    say(f"{greeting} (version {version}, pid {os.getpid()}, dvic_log {'on' if log else 'off'})")
    while running:
        visitors += 1
        with open(counter + ".tmp", "w") as f:
            f.write(str(visitors))
        os.replace(counter + ".tmp", counter)
        if visitors % 15 == 0:
            say(f"visitor {visitors}")
        if log:
            dvic_log.heartbeat(log)
        elif visitors % 2 == 0:
            print("alive", flush=True)
        time.sleep(1)
    say(f"stopping after {visitors} visitors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
