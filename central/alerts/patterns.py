"""Log patterns an operator may write into a rule: regular expressions that cannot stall the server.

Python's `re` backtracks and cannot be interrupted, so a pattern such as `(a+)+$` can hold the event
loop for minutes on one line. Three layers keep a pattern cheap (docs/alerts.md, "Log patterns"):
1. at creation the pattern's structure is checked: at most MAX_PATTERN_CHARS characters, no
   quantifier applied to something that itself repeats or alternates (`(a+)+`, `(a|ab)*`), no
   backreference or lookaround, at most MAX_UNBOUNDED unbounded quantifiers;
2. it is then timed on lines built to make it backtrack (its own characters repeated); a pattern
   slower than PROBE_BUDGET_S on one of them is refused;
3. at run time only the first MATCH_CHARS characters of a line are searched, and a rule whose
   matching costs more than its budget is suspended for a while (central/alerts/engine.py).
"""

from __future__ import annotations

import re
import re._constants as sre_constants  # type: ignore[import-not-found]  # the standard library's own regex parser
import re._parser as sre_parse  # type: ignore[import-not-found]
import time
from typing import Any

MAX_PATTERN_CHARS = 200
MAX_UNBOUNDED = 3
MATCH_CHARS = 512
PROBE_CHARS = MATCH_CHARS
PROBE_BUDGET_S = 0.01

_REPEATS = {sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT}
_REFUSED = {
    sre_constants.GROUPREF: "backreferences are not allowed",
    sre_constants.GROUPREF_EXISTS: "conditional groups are not allowed",
    sre_constants.ASSERT: "lookahead/lookbehind is not allowed",
    sre_constants.ASSERT_NOT: "lookahead/lookbehind is not allowed",
}


class PatternError(ValueError):
    """Why a pattern is refused (said to the operator as is)."""


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The compiled pattern, or PatternError saying what to change."""
    if not pattern:
        raise PatternError("the pattern is empty")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PatternError(f"the pattern is {len(pattern)} characters long: at most {MAX_PATTERN_CHARS}")
    try:
        parsed = sre_parse.parse(pattern)
        compiled = re.compile(pattern)
    except re.error as exc:
        raise PatternError(f"not a valid regular expression: {exc}") from None
    unbounded = _check(parsed, inside_repeat=False)
    if unbounded > MAX_UNBOUNDED:
        raise PatternError(f"{unbounded} unbounded repeats (*, +, {{n,}}): at most {MAX_UNBOUNDED}")
    slowest, size = _probe(compiled, pattern)
    if slowest > PROBE_BUDGET_S:
        raise PatternError(f"too slow: {slowest * 1000:.0f} ms on a {size}-character test line "
                           f"(at most {PROBE_BUDGET_S * 1000:.0f} ms); make it more specific")
    return compiled


def _check(items: Any, inside_repeat: bool) -> int:
    """Walk the parsed pattern; refuse what can backtrack badly. Returns the unbounded repeats."""
    unbounded = 0
    for op, arg in items:
        if op in _REFUSED:
            raise PatternError(_REFUSED[op])
        if op in _REPEATS:
            low, high, sub = arg
            if inside_repeat:
                raise PatternError("nested quantifiers (a repeat inside a repeat, like (a+)+) are not allowed")
            if high == sre_constants.MAXREPEAT:
                unbounded += 1
            unbounded += _check(sub, inside_repeat=True)
        elif op == sre_constants.SUBPATTERN:
            unbounded += _check(arg[-1], inside_repeat)
        elif op == sre_constants.BRANCH:
            if inside_repeat:
                raise PatternError("alternation inside a repeat (like (a|ab)*) is not allowed")
            unbounded += sum(_check(branch, inside_repeat) for branch in arg[1])
        elif op == sre_constants.ATOMIC_GROUP:
            unbounded += _check(arg, inside_repeat)
    return unbounded


def _probe(compiled: re.Pattern[str], pattern: str) -> tuple[float, int]:
    """The slowest search (seconds, line length) over lines made of the pattern's own characters (what makes it backtrack).

    Lines double in length from 32 characters up to PROBE_CHARS and the probe stops at the first
    one over budget, so a catastrophic pattern is caught after a few milliseconds more than the
    budget, not after the seconds it would take on a full-length line.
    """
    chars = "".join(dict.fromkeys(c for c in pattern if c.isalnum() or c in " -_:=/.")) or "a"
    shapes = [chars, chars[0]] + ([chars[:-1]] if len(chars) > 1 else [])
    slowest = 0.0
    size = 32
    while size <= PROBE_CHARS:
        for shape in shapes:
            probe = (shape * (size // len(shape) + 1))[:size]
            started = time.perf_counter()
            compiled.search(probe)
            slowest = max(slowest, time.perf_counter() - started)
            if slowest > PROBE_BUDGET_S:
                return slowest, size
        size *= 2
    return slowest, PROBE_CHARS
