"""Write tests/vectors/dvic_log_conformance_expected.json from the Python library's run of the script.

Only when the format changes on purpose: `.venv/bin/python -m tests.conformance.regen`, then read
the diff. The tests compare every library (Python included) against the file this writes.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from tests.conformance import harness


def main() -> int:
    script = harness.load_script()
    (python,) = [d for d in harness.all_drivers() if d.name == "python"]
    scratch = Path(tempfile.mkdtemp(prefix="dvic-conformance-regen-"))
    try:
        python.prepare(scratch / "build")
        log_dir = scratch / "logs"
        log_dir.mkdir()
        run = harness.run_driver(python, script["ops"], script["settings"], log_dir)
        assert run.returncode == 0 and run.summary and not run.summary["skipped"], run
        groups = harness.read_groups(log_dir, run.summary["pid"])
        view = harness.tag_records(groups, script["ops"], [])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    untagged = [r for data in view.values() for r in data["records"] if r["op"] is None]
    assert not untagged, f"records no op accounts for: {untagged[:3]}"
    expected = {
        "_doc": "Golden vectors of tests/conformance (README.md): the Python library's files after "
                "dvic_log_conformance.json, as the reference reader reads them (.1 first), normalised: "
                "ts, pid, token, exe, argv, user, host and start removed; a record cut to fit the cap shows "
                "msg_truncated (its exact cut is checked apart); 'op' is the index of the op that wrote it. "
                "Written by `python -m tests.conformance.regen`.",
        "files": view,
    }
    harness.EXPECTED_PATH.write_text(json.dumps(expected, indent=1, ensure_ascii=True) + "\n", encoding="utf-8")
    print(f"wrote {harness.EXPECTED_PATH} ({sum(len(v['records']) for v in view.values())} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
