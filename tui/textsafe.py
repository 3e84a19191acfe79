"""Turns text that came from nodes into something safe to show: no markup, no escape sequences.

Node-supplied strings (log messages, demo names, facts...) are untrusted. They must never be parsed as
Textual/Rich markup and must never reach the terminal with control characters in them (an OSC 52
sequence could write the operator's clipboard, a CSI sequence could move the cursor). Every widget
and every CLI table builds its cells through these helpers.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing (`dvic` start-up time)
if TYPE_CHECKING:  # rich is imported by `literal` only: `dvic` commands use `clean` and start faster without it
    from rich.style import Style
    from rich.text import Text

# ESC-introduced sequences: CSI (ESC [ ... final), OSC/DCS/SOS/PM/APC (terminated by BEL or ST),
# and the two-byte forms (ESC + one char). The 8-bit C1 introducers (0x9b CSI, 0x9d OSC...) too.
_ESCAPE_SEQ = re.compile(
    r"""
    (?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?              # CSI
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])      # OSC, DCS, SOS, PM, APC ...
      [^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?        # ... up to BEL or ST (or the end)
    | \x1b[ -/]*[0-~]?                             # other ESC sequences (and a lone ESC)
    """,
    re.VERBOSE,
)
# Controls left after removing sequences, plus the bidi overrides that can reorder what is shown.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _picture(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode "control picture" (e.g. U+241B for ESC)
    if code == 0x7F:
        return "\u2421"
    return "\ufffd"


def clean(value: object, *, single_line: bool = False) -> str:
    """Returns `value` as a printable string: escape sequences removed, other controls made visible.

    Newlines and tabs survive unless `single_line`, which turns them into visible marks/spaces so a
    table cell stays one line.
    """
    text = value if isinstance(value, str) else str(value)
    text = _ESCAPE_SEQ.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    text = _CONTROL.sub(_picture, text)
    if single_line:
        text = text.replace("\n", "\u23ce ")
    return text


def literal(value: object, style: str | Style = "", *, single_line: bool = True) -> Text:
    """A Rich `Text` holding `value` literally (never interpreted as markup), cleaned by `clean`."""
    from rich.text import Text

    return Text(clean(value, single_line=single_line), style=style, end="")
