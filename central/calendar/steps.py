"""Runbook steps: their text form ('start kiosk', 'reboot', 'run systemctl restart foo',
'maintenance on', 'deploy kiosk@1.2.0') parsed to the stored form, and which ones act per node.

Pure: whether a named demo exists is checked by the service (it knows the fleet).
"""

from __future__ import annotations

import re
from typing import Any

# Per-node steps go to each node of the group; group steps change the group's desired state once.
NODE_STEPS = ("start_demo", "stop_demo", "restart_demo", "reboot", "run", "maintenance")
GROUP_STEPS = ("deploy", "undeploy")
MAX_STEPS = 20
MAX_SHELL = 4096
_DEMO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")
VERBS = {"start": "start_demo", "stop": "stop_demo", "restart": "restart_demo",
         "start_demo": "start_demo", "stop_demo": "stop_demo", "restart_demo": "restart_demo"}
GRAMMAR = ("write one of: start DEMO, stop DEMO, restart DEMO, reboot, run COMMAND, maintenance on|off, "
           "deploy DEMO@VERSION, undeploy DEMO")


class StepError(ValueError):
    """A step that cannot be run; the message says what to change."""


def parse_step(text: str) -> dict[str, Any]:
    words = text.strip().split(None, 1)
    if not words:
        raise StepError(f"an empty step: {GRAMMAR}")
    verb, rest = words[0].lower(), (words[1].strip() if len(words) > 1 else "")
    if verb in VERBS:
        return {"do": VERBS[verb], "demo": _demo(rest, text)}
    if verb == "reboot":
        if rest:
            raise StepError(f"{text!r}: reboot takes nothing after it")
        return {"do": "reboot"}
    if verb == "run":
        if not rest or len(rest) > MAX_SHELL:
            raise StepError(f"{text!r}: write run COMMAND, the command as a shell line of at most {MAX_SHELL} bytes")
        return {"do": "run", "shell": rest}
    if verb == "maintenance":
        if rest.lower() not in ("on", "off"):
            raise StepError(f"{text!r}: write maintenance on or maintenance off")
        return {"do": "maintenance", "on": rest.lower() == "on"}
    if verb == "deploy":
        demo, at, version = rest.partition("@")
        if not at or not _VERSION.fullmatch(version):
            raise StepError(f"{text!r}: write deploy DEMO@VERSION, e.g. deploy kiosk@1.2.0")
        return {"do": "deploy", "demo": _demo(demo, text), "version": version}
    if verb == "undeploy":
        return {"do": "undeploy", "demo": _demo(rest, text)}
    raise StepError(f"{text!r}: unknown step {verb!r}: {GRAMMAR}")


def _demo(name: str, text: str) -> str:
    if not _DEMO.fullmatch(name):
        raise StepError(f"{text!r}: name the demo (letters, digits, '.', '_' or '-'), e.g. start kiosk")
    return name


def parse_steps(texts: list[str]) -> list[dict[str, Any]]:
    if not texts:
        raise StepError(f"a runbook needs at least one step: {GRAMMAR}")
    if len(texts) > MAX_STEPS:
        raise StepError(f"a runbook has at most {MAX_STEPS} steps: split it in two")
    return [parse_step(t) for t in texts]


def describe(step: dict[str, Any]) -> str:
    do = step["do"]
    if do in ("start_demo", "stop_demo", "restart_demo"):
        return f"{do.split('_')[0]} {step['demo']}"
    if do == "run":
        return f"run {step['shell']}"
    if do == "maintenance":
        return f"maintenance {'on' if step['on'] else 'off'}"
    if do == "deploy":
        return f"deploy {step['demo']}@{step['version']}"
    if do == "undeploy":
        return f"undeploy {step['demo']}"
    return str(do)
