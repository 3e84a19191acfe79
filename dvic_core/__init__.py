"""What the server, the `dvic` client and the installer share: the protocol's and the API's facts
(constants.py) and the one writer of private files (files.py).

Standard library only and cheap to import: `dvic run` imports it at start-up (docs/performance.md,
"Remote control"), so no `typing` or `dataclasses` at module level (the `TYPE_CHECKING = False`
idiom of tui/cmds/run.py where a module needs types). The node daemon and dvic_log keep their own
copies (one file, Python 3.8, no dependencies); tests/test_constants.py holds them equal.
"""
