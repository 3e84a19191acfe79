"""The JavaScript library (lib/js, npm package dvic-log) against the Python reference.

Runs its node unit tests, installs the `npm pack` tarball into a scratch project and runs it
there, checks that its lines are byte for byte the Python library's, and reads its files with
the Python reader while it rotates and while the disk is full.
"""

import base64
import json
import random
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from dvic_log._format import TRUNCATION_MARK, record_line
from dvic_log._prune import writer_alive
from dvic_log._reader import Follower as ReferenceFollower
from dvic_log_testkit import Follower, check_full_disk, library_env, live_files, read_file, tool

from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
JS_DIR = REPO / "lib" / "js"


def run_node(code: str, log_dir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    prelude = f"const dvicLog = require({json.dumps(str(JS_DIR))});\n"
    return subprocess.run(
        [tool("node"), "-e", prelude + code], env=library_env(log_dir, **extra), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_the_node_unit_tests_pass():
    tests = sorted(str(p) for p in (JS_DIR / "test").glob("*.test.js"))
    done = subprocess.run([tool("node"), "--test", *tests], cwd=JS_DIR, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout


def test_the_npm_tarball_installs_offline_and_works_from_cjs_esm_and_typescript_users(tmp_path: Path, log_dir: Path):
    npm = tool("npm")
    packed = subprocess.run(
        [npm, "pack", "--json", "--pack-destination", str(tmp_path), str(JS_DIR)],
        capture_output=True, text=True, timeout=300, check=True, cwd=tmp_path,
    )  # fmt: skip
    (info,) = json.loads(packed.stdout)
    tarball = tmp_path / info["filename"]
    with tarfile.open(tarball) as tar:
        names = sorted(name.removeprefix("package/") for name in tar.getnames())
    assert names == [
        "README.md", "index.d.ts", "index.js", "index.mjs", "package.json",
        "src/config.js", "src/format.js", "src/identity.js", "src/prune.js", "src/registry.js", "src/writer.js",
    ]  # fmt: skip
    project = tmp_path / "demo"
    project.mkdir()
    (project / "package.json").write_text('{"name": "scratch-demo", "version": "1.0.0", "private": true}\n')
    subprocess.run(
        [npm, "install", "--offline", "--no-audit", "--no-fund", str(tarball)],
        cwd=project, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    installed = project / "node_modules" / "dvic-log"
    assert not (installed / "node_modules").exists()  # no dependencies
    (project / "cjs.js").write_text(
        "const log = require('dvic-log').getLogger('packaged');\n"
        "log.info('from commonjs'); log.heartbeat();\n"
    )
    (project / "esm.mjs").write_text(
        "import dvicLog, { getLogger } from 'dvic-log';\n"
        "getLogger('packaged').warning('from esm', dvicLog === undefined);\n"
    )
    for script in ("cjs.js", "esm.mjs"):
        done = subprocess.run(
            [tool("node"), script], cwd=project, env=library_env(log_dir), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
    types = (installed / "index.d.ts").read_text()
    assert "export declare function getLogger(name: string, options?: LoggerOptions): Logger;" in types
    files = live_files(log_dir)
    assert len(files) == 2  # one per process
    records = [read_file(f)[1] for f in files]
    msgs = sorted((r["level"], r["msg"]) for rs in records for r in rs if "heartbeat" not in r)
    assert msgs == [("INFO", "from commonjs"), ("WARNING", "from esm false")]


def random_text(rng: random.Random, size: int) -> str:
    """Text with every kind of character the encoder treats specially, lone surrogates included."""
    pools = [
        "abc xyz 0123",
        '"\\/{}[]%',
        "".join(chr(c) for c in range(0x20)) + "\x7f\x80\x85\x9f",
        "\u2028\u2029\ufeff\ufffd\u00e9\u4e2d",
        "\U0001f600\U0010ffff",
        "\ud800\udbff\udc00\udfff",
    ]
    text = "".join(rng.choice(rng.choice(pools)) for _ in range(size))
    # A JavaScript string cannot hold a split surrogate pair (two code points): join those, as JSON does.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def encoded_size(text: str) -> int:
    """Bytes text takes inside a record line, escapes included (as the Python library writes it)."""
    return len(record_line(0.0, "INFO", text)) - len(record_line(0.0, "INFO", ""))


def documented_fit(rec: dict[str, Any], max_line: int) -> bytes:
    """A record cut by the rule of docs/log-format.md ("Size of one record"), written out from the text.

    Every library must cut exactly so; the Python library's fit_record is one implementation of it,
    this is the test's own.
    """
    def line(r: dict[str, Any]) -> bytes:
        return record_line(r["ts"], r["level"], r["msg"], r.get("logger"), r.get("exc"))

    if len(line(rec)) <= max_line:
        return line(rec)
    fields = [k for k in ("msg", "exc", "logger") if rec.get(k)]
    out = dict(rec, **{k: TRUNCATION_MARK for k in fields})
    room = max_line - len(line(out))
    sizes = {k: encoded_size(rec[k]) for k in fields}
    for left, key in enumerate(sorted(fields, key=lambda k: sizes[k])):  # stable: ties in msg, exc, logger order
        share = min(sizes[key], max(0, room // (len(fields) - left)))
        room -= share
        if share < sizes[key]:
            keep = max(n for n in range(len(rec[key]) + 1) if encoded_size(rec[key][:n]) <= share)
            out[key] = rec[key][:keep] + TRUNCATION_MARK
        else:
            out[key] = rec[key]
    return line(out)


def test_every_record_line_is_the_python_librarys_bytes():
    rng = random.Random(17)
    cases = []
    for k in range(400):
        msg = random_text(rng, rng.randint(0, 60))
        logger = random_text(rng, rng.randint(0, 12)) if k % 3 else None
        exc = random_text(rng, rng.randint(1, 40)) if k % 5 == 0 else None
        ts = round(rng.uniform(1.6e9, 1.9e9), 3) if k % 7 else float(rng.randint(1_600_000_000, 1_900_000_000))
        cases.append({"ts": ts, "level": rng.choice(["DEBUG", "INFO", "ERROR"]), "msg": msg, "logger": logger,
                      "exc": exc})  # fmt: skip
    # Cuts under the cap: the same prefix, the same mark, the same bytes.
    cuts = [dict(case, max_line=rng.randint(250, 600), msg=case["msg"] * 20) for case in cases[:150]]
    code = (
        "const f = require(process.argv[1] + '/src/format.js');\n"
        "const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "const out = input.lines.map((c) => f.recordLine(c.ts, c.level, c.msg, c.logger, c.exc).toString('base64'));\n"
        "const cut = input.cuts.map((c) => f.fitRecord(c, c.max_line).toString('base64'));\n"
        "process.stdout.write(JSON.stringify({ out, cut }));\n"
    )
    payload = json.dumps({"lines": cases, "cuts": cuts})  # ensure_ascii: lone surrogates travel as \ud800
    done = subprocess.run(
        [tool("node"), "-e", code, str(JS_DIR)], input=payload, capture_output=True, text=True, timeout=120, check=True
    )
    got = json.loads(done.stdout)
    for case, line in zip(cases, got["out"], strict=True):
        want = record_line(case["ts"], case["level"], case["msg"], case["logger"], case["exc"])
        assert base64.b64decode(line) == want, case
    for case, line in zip(cuts, got["cut"], strict=True):
        assert base64.b64decode(line) == documented_fit(case, case["max_line"]), case


def test_the_reference_reader_follows_a_rotating_node_writer_without_losing_a_line(log_dir: Path):
    total = 20000
    writer = subprocess.Popen(
        [tool("node"), "-e",
         f"const log = require({json.dumps(str(JS_DIR))}).getLogger('followed');\n"
         "console.log(log.path);\n"
         "require('fs').readSync(0, Buffer.alloc(1));\n"  # wait for the reader to be ready
         f"for (let i = 0; i < {total}; i++) log.info('n=' + i);\n"],
        env=library_env(log_dir, DVIC_LOG_MAX_BYTES=str(64 * 1024)), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert writer.stdout is not None and writer.stdin is not None
        path = Path(writer.stdout.readline().strip())
        follower = Follower(path)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        try:
            for _ in range(10_000_000):  # bounded; ends as soon as the writer is done
                follower.poll()
                if writer.poll() is not None:
                    break
            assert writer.wait(timeout=60) == 0
            follower.poll()
        finally:
            follower.close()
    finally:
        writer.kill()
        writer.wait()
    follower.check_counted(total, '{"ts":1795519197.347,"level":"INFO","msg":"n=1","logger":"followed"}\n')
    rotated = [h.get("rotated", 0) for h in follower.headers()]
    assert rotated == sorted(rotated) and rotated[-1] >= follower.switches
    # The reference reader (python3 -m dvic_log cat --all) reads the last two files whole.
    with ReferenceFollower(str(path), include_previous=True) as reader:
        entries = reader.poll()
    tail = [int(e.data["msg"][2:]) for e in entries if e.kind == "record"]
    assert tail == list(range(total - len(tail), total))


def test_a_full_disk_is_reported_once_and_the_torn_line_is_finished_when_room_is_back(log_dir: Path):
    # RLIMIT_FSIZE makes the kernel refuse bytes past a size, as a full disk would (node ignores
    # SIGXFSZ). The test raises the limit of the running process with prlimit(2), as freeing
    # space would, and the next record must first complete the cut line.
    code = (
        f"const log = require({json.dumps(str(JS_DIR))}).getLogger('full');\n"
        "const fs = require('fs');\n"
        "console.log(log.path);\n"
        "fs.readSync(0, Buffer.alloc(1));\n"
        "const ok = [];\n"
        "for (let i = 0; i < 100; i++) ok.push(log.info('record ' + String(i).padStart(3, '0') + ' ' + 'z'.repeat(40)));\n"
        "const torn = !fs.readFileSync(log.path).toString('latin1').endsWith('\\n');\n"
        "console.log(JSON.stringify({ ok, torn }));\n"
        "fs.readSync(0, Buffer.alloc(1));\n"
        "log.info('space is back');\n"
    )
    proc = subprocess.Popen(
        [tool("node"), "-e", code], env=library_env(log_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    check_full_disk(proc)


def test_liveness_fields_match_what_the_reader_checks(log_dir: Path):
    done = run_node("const log = dvicLog.getLogger('alive'); log.info('x'); console.log(log.path);", log_dir)
    assert done.returncode == 0, done.stderr
    header, _ = read_file(Path(done.stdout.strip()))
    assert writer_alive(header) is False  # the process exited: pid and start time no longer match
    proc = subprocess.Popen(
        [tool("node"), "-e",
         f"const log = require({json.dumps(str(JS_DIR))}).getLogger('alive2'); log.info('up');"
         "console.log(log.path); setInterval(() => {}, 1000);"],
        env=library_env(log_dir), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        header, _ = read_file(Path(proc.stdout.readline().strip()))
        assert header["pid"] == proc.pid and writer_alive(header)
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not writer_alive(header), 10, "the killed demo to be seen as exited")
