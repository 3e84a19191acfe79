"""The POSIX sh install script run on the target (as root), kept as text so it ships with the package.

Modes: ``check`` (facts + existing identity, changes nothing), ``install`` (install, repair or upgrade;
rolls back on failure), ``uninstall``. Values are substituted by ``installer.render`` already
shell-quoted; payload files are embedded as quoted here-documents. Output for the installer is
lines ``DVIC key value``; a failure prints one ``DVIC-ERROR code message`` and exits non-zero.
"""

TEMPLATE = r"""#!/bin/sh
# dvic-node installer (rendered by `dvic add-node`). Usage: sh install.sh check|install|uninstall
set -u
umask 077
# stdin may still hold the password line when sudo did not need it: never read it.
exec </dev/null

PATH=@TARGET_PATH@; export PATH
INIT=@INIT@
PYTHON_WANT=@PYTHON@
KEEP_BUNDLE=@KEEP_BUNDLE@
EXPECT_NODE_ID=@EXPECT_NODE_ID@
DAEMON=@DAEMON@
BUNDLE=@BUNDLE@
STATE_DIR=@STATE_DIR@
UNIT=@UNIT@
SHELL_USER=@SHELL_USER@
WRITE_DEMOS=@WRITE_DEMOS@
DEMOS="$STATE_DIR/demos.json"
SERVICE=dvic-node.service
PIDFILE="$STATE_DIR/dvic-node.pid"
DAEMON_OUT="$STATE_DIR/daemon.out"
# The daemon is started as its unit starts it: imported by dvic_node.LAUNCHER (kept identical), so Python
# loads the bytecode compile_daemon writes instead of compiling the source at every start.
LAUNCHER='import os, sys; del sys.argv[0]; sys.path[:] = [os.path.dirname(sys.argv[0])] + [p for p in sys.path if p]; import dvic_node; sys.exit(dvic_node.main())'

COMMITTING=0
STAGE=""
CREATED_DIRS=""
TOUCHED=""
WAS_RUNNING=0

say() { printf 'DVIC %s %s\n' "$1" "$2"; }
fail() { printf 'DVIC-ERROR %s %s\n' "$1" "$2"; exit 3; }
nap() { sleep 0.1 2>/dev/null || sleep 1; }

find_python() {
    if [ -n "$PYTHON_WANT" ]; then
        PY=$PYTHON_WANT
        [ -x "$PY" ] || fail no_python "the interpreter $PY does not exist or is not executable"
    else
        PY=$(command -v python3 2>/dev/null) || PY=""
        [ -n "$PY" ] || fail no_python "python3 was not found in $PATH"
    fi
    case "$PY" in /*) ;; *) fail no_python "the interpreter path $PY is not absolute" ;; esac
    PYVER=$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) \
        || fail no_python "$PY does not run"
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)' \
        || fail old_python "$PY is Python $PYVER; the daemon needs Python 3.8 or newer"
}

check_system() {
    [ "$(id -u)" = 0 ] || fail not_root "the install script must run as root"
    os=$(uname -s)
    [ "$os" = Linux ] || fail unsupported_os "$os is not supported (Linux only)"
    pretty=$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | tr -d '"')
    say os "${pretty:-Linux}"
    say arch "$(uname -m)"
    say hostname "$(uname -n)"
    find_python
    say python "$PY"
    say python_version "$PYVER"
    if [ "$INIT" = systemd ]; then
        if [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null 2>&1; then
            fail no_systemd "systemd is not running on this machine"
        fi
    fi
    say init "$INIT"
    if [ -n "$SHELL_USER" ]; then
        id -u "$SHELL_USER" >/dev/null 2>&1 \
            || fail no_shell_user "the shell user $SHELL_USER does not exist on this machine"
    fi
}

# Validates an installed bundle with the target's own Python and prints its identity (no secrets).
read_bundle() {
    "$PY" - "$BUNDLE" <<'DVIC_READ_BUNDLE'
import json, sys
need = ("node_id", "name", "ws_url", "ca_pem", "cert_pem", "key_pem", "token")
try:
    with open(sys.argv[1]) as f:
        b = json.load(f)
    ok = isinstance(b, dict) and b.get("format") == "dvic-node-bundle/1" and all(
        isinstance(b.get(k), str) and b.get(k) for k in need)
except (OSError, ValueError):
    ok = False
if not ok:
    print("DVIC installed invalid")
    sys.exit(0)
print("DVIC installed yes")
for key, field in (("node_id", "node_id"), ("node_name", "name"), ("ca_sha256", "ca_sha256")):
    print("DVIC %s %s" % (key, " ".join(str(b.get(field, "")).split())))
DVIC_READ_BUNDLE
}

# True while PID runs our daemon. Not `kill -0`: an exited daemon may linger as a zombie until init
# reaps it, and a zombie's cmdline is empty.
is_our_daemon() {
    [ -r "/proc/$1/cmdline" ] && tr '\000' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF -- "$DAEMON"
}

daemon_pid() {
    [ -f "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE" 2>/dev/null)
    case "$pid" in ''|*[!0-9]*) return 1 ;; esac
    is_our_daemon "$pid" || return 1
    echo "$pid"
}

service_active() {
    if [ "$INIT" = systemd ]; then
        systemctl is-active --quiet "$SERVICE"
    else
        daemon_pid >/dev/null
    fi
}

stop_daemon() {
    if [ "$INIT" = systemd ]; then
        systemctl stop "$SERVICE" >/dev/null 2>&1 || true
        return 0
    fi
    if pid=$(daemon_pid); then
        kill "$pid" 2>/dev/null
        i=0
        while is_our_daemon "$pid" && [ "$i" -lt 50 ]; do nap; i=$((i + 1)); done
        if is_our_daemon "$pid"; then kill -9 "$pid" 2>/dev/null; fi
    fi
    rm -f "$PIDFILE"
}

# A daemon that cannot even start (bad bundle, import error) dies within a moment.
settle() {
    i=0
    while [ "$i" -lt 5 ]; do nap; i=$((i + 1)); done
}

daemon_tail() {
    if [ "$INIT" = systemd ]; then
        journalctl -u "$SERVICE" -n 5 -o cat --no-pager 2>/dev/null | tr '\n' ' '
    else
        tail -n 5 "$DAEMON_OUT" 2>/dev/null | tr '\n' ' '
    fi
}

start_daemon() {
    if [ "$INIT" = systemd ]; then
        systemctl daemon-reload && systemctl enable --quiet "$SERVICE" && systemctl restart "$SERVICE" \
            || return 1
        settle
        # A crashed daemon is "activating (auto-restart)" here, which is-active reports as not active.
        systemctl is-active --quiet "$SERVICE"
        return
    fi
    mkdir -p "$STATE_DIR"
    # The same command line as the unit's ExecStart.
    set -- "$PY" -c "$LAUNCHER" "$DAEMON" --config "$BUNDLE" --state-dir "$STATE_DIR"
    if [ -n "$SHELL_USER" ]; then set -- "$@" --shell-user "$SHELL_USER"; fi
    if command -v setsid >/dev/null 2>&1; then
        setsid nohup "$@" >>"$DAEMON_OUT" 2>&1 </dev/null &
    else
        nohup "$@" >>"$DAEMON_OUT" 2>&1 </dev/null &
    fi
    echo $! >"$PIDFILE"
    settle
    daemon_pid >/dev/null
}

make_dir() {  # make_dir DIR MODE: create (and remember, for rollback) a directory we own
    top=""
    d=$1
    while [ ! -d "$d" ]; do top=$d; d=$(dirname "$d"); done
    mkdir -p "$1" || fail install_failed "cannot create $1"
    # Remember the topmost directory we created: rollback removes it with all it holds.
    if [ -n "$top" ]; then CREATED_DIRS="$top $CREATED_DIRS"; fi
    chmod "$2" "$1"
}

put() {  # put SRC DEST MODE: atomic replace, keeping the old file in the stage for rollback
    name=$(echo "$2" | tr '/' '_')
    if [ -e "$2" ]; then cp -p "$2" "$STAGE/old$name" || fail install_failed "cannot back up $2"; fi
    TOUCHED="$2 $TOUCHED"
    cp "$1" "$2.dvic-new" && chmod "$3" "$2.dvic-new" && mv -f "$2.dvic-new" "$2" \
        || fail install_failed "cannot write $2"
}

# The bytecode the daemon starts from, compiled by the interpreter that runs it: a checked-hash .pyc (a
# later change of the file, by a self-update, is noticed). Not fatal: without it the daemon compiles its
# source at each start (slower, ~10 MB more memory) and Python writes the .pyc itself.
compile_daemon() {
    if "$PY" -c 'import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)' "$DAEMON" >/dev/null 2>&1; then
        say bytecode compiled
    else
        say bytecode "not compiled (the daemon compiles its source at start)"
    fi
}

rollback() {
    say rollback started
    stop_daemon
    # A fresh unit is disabled while its file still exists (disable needs it to find the links).
    if [ "$INIT" = systemd ] && [ ! -e "$STAGE/old$(echo "$UNIT" | tr '/' '_')" ]; then
        systemctl disable --quiet "$SERVICE" >/dev/null 2>&1
    fi
    for f in $TOUCHED; do
        name=$(echo "$f" | tr '/' '_')
        rm -f "$f.dvic-new"
        if [ -e "$STAGE/old$name" ]; then mv -f "$STAGE/old$name" "$f"; else rm -f "$f"; fi
    done
    if [ "$INIT" = systemd ]; then systemctl daemon-reload >/dev/null 2>&1; fi
    for d in $CREATED_DIRS; do rm -rf "$d"; done
    if [ -e "$DAEMON" ]; then compile_daemon >/dev/null; fi  # the restored file's bytecode
    if [ "$WAS_RUNNING" = 1 ]; then start_daemon >/dev/null 2>&1 || true; fi
    say rollback finished
}

on_exit() {
    rc=$?
    trap - EXIT
    if [ "$COMMITTING" = 1 ] && [ "$rc" != 0 ]; then rollback; fi
    [ -n "$STAGE" ] && rm -rf "$STAGE"
    exit "$rc"
}

verify_unit() {
    command -v systemd-analyze >/dev/null 2>&1 || { say unit_verify unavailable; return 0; }
    out=$(systemd-analyze verify "$1" 2>&1)
    rc=$?
    # Only complaints about our own file count: a container may warn about unrelated units.
    ours=$(printf '%s\n' "$out" | grep -F -- "$1")
    if [ "$rc" != 0 ] || [ -n "$ours" ]; then
        fail bad_unit "systemd-analyze verify rejected the unit: $(printf '%s' "${ours:-$out}" | tr '\n' ' ')"
    fi
    say unit_verify ok
}

do_check() {
    check_system
    if [ -e "$BUNDLE" ]; then read_bundle; else say installed no; fi
    if service_active; then say service active; else say service inactive; fi
}

do_install() {
    check_system
    trap on_exit EXIT
    trap 'exit 4' HUP INT TERM
    STAGE=$(mktemp -d "${TMPDIR:-/tmp}/dvic-node-stage.XXXXXX") || fail install_failed "cannot create a staging dir"
    write_daemon "$STAGE/dvic_node.py"
    "$PY" -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$STAGE/dvic_node.py" \
        || fail bad_daemon "the daemon file does not parse with $PY ($PYVER)"
    if [ "$KEEP_BUNDLE" = 1 ]; then
        [ -e "$BUNDLE" ] || fail bundle_changed "the installed bundle disappeared"
        ident=$(read_bundle)
        printf '%s\n' "$ident" | grep -qxF "DVIC node_id $EXPECT_NODE_ID" \
            || fail bundle_changed "the installed bundle no longer holds node $EXPECT_NODE_ID"
    else
        write_bundle "$STAGE/bundle.json"
    fi
    if [ "$WRITE_DEMOS" = 1 ]; then
        write_demos "$STAGE/demos.json"
        "$PY" -c 'import json, sys; json.load(open(sys.argv[1]))' "$STAGE/demos.json" \
            || fail bad_demos "the rendered demos.json is not valid JSON"
    fi
    mkdir -p "$STAGE/unit"
    write_unit "$STAGE/unit/$SERVICE"
    verify_unit "$STAGE/unit/$SERVICE"

    if service_active; then WAS_RUNNING=1; fi
    COMMITTING=1
    stop_daemon
    make_dir "$(dirname "$DAEMON")" 755
    make_dir "$(dirname "$BUNDLE")" 700
    make_dir "$STATE_DIR" 700
    make_dir "$(dirname "$UNIT")" 755
    put "$STAGE/dvic_node.py" "$DAEMON" 644
    compile_daemon
    if [ "$KEEP_BUNDLE" != 1 ]; then put "$STAGE/bundle.json" "$BUNDLE" 600; fi
    put "$STAGE/unit/$SERVICE" "$UNIT" 644
    # demos.json is replaced only when demos were given: a re-run keeps the operator's file.
    if [ "$WRITE_DEMOS" = 1 ]; then
        put "$STAGE/demos.json" "$DEMOS" 644
        say demos written
    elif [ -e "$DEMOS" ]; then
        say demos kept
    else
        say demos none
    fi
    start_daemon || fail start_failed "the daemon did not stay running: $(daemon_tail)"
    COMMITTING=0
    if [ "$INIT" = none ]; then say pid "$(cat "$PIDFILE")"; fi
    say installed ok
}

do_uninstall() {
    [ "$(id -u)" = 0 ] || fail not_root "the install script must run as root"
    if [ -n "$EXPECT_NODE_ID" ] && [ -e "$BUNDLE" ] && ! grep -qF -- "\"$EXPECT_NODE_ID\"" "$BUNDLE"; then
        fail wrong_node "this machine holds another node identity than $EXPECT_NODE_ID"
    fi
    # Its last lines, before the log file goes with the state dir (add-node's rollback shows them).
    tail=$(daemon_tail)
    if [ -n "$tail" ]; then say daemon_tail "$tail"; fi
    stop_daemon
    if [ "$INIT" = systemd ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --quiet "$SERVICE" >/dev/null 2>&1
    fi
    rm -f "$UNIT"
    if [ "$INIT" = systemd ] && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload >/dev/null 2>&1
    fi
    rm -rf "$(dirname "$DAEMON")" "$(dirname "$BUNDLE")" "$STATE_DIR"
    say uninstalled ok
}

@PAYLOAD@

case "${1:-}" in
    check) do_check ;;
    install) do_install ;;
    uninstall) do_uninstall ;;
    *) fail usage "usage: install.sh check|install|uninstall" ;;
esac
"""
