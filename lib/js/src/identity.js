'use strict';
// Who is logging: the process facts of the header (pid, start time, exe, argv, user, host).

const fs = require('fs');
const os = require('os');

// Bounds that keep a header small next to the size cap, as in the Python library.
const MAX_ARGS = 64;
const MAX_ARG_CHARS = 256;

/**
 * Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or null without /proc.
 * With the pid it names a process until reboot: a reader tells the demo from a reused pid.
 */
function readPidStart(pid) {
  let stat;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch (_) {
    return null;
  }
  return statStartTime(stat);
}

/** Field 22 (the start time) of the text of a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat. */
function statStartTime(stat) {
  // Field 2 (comm) is in parentheses and may hold spaces and ")": split after the last one.
  const end = stat.lastIndexOf(')');
  if (end < 0) return null;
  const fields = stat.slice(end + 1).trim().split(/\s+/);
  const value = fields[19]; // fields[0] is field 3 (state), so field 22 is fields[19]
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : null;
}

function userName() {
  try {
    return os.userInfo().username; // the effective uid's passwd entry
  } catch (_) {
    // A uid without a passwd entry (common in containers): the number, as Python writes it.
    return typeof process.geteuid === 'function' ? String(process.geteuid()) : 'unknown';
  }
}

function codePoints(text) {
  return text.length > MAX_ARG_CHARS ? Array.from(text) : null;
}

/** argv as the header holds it: at most 64 entries of 256 characters, the rest summarised. */
function boundedArgv(argv) {
  const args = argv.map(String);
  const out = args.slice(0, MAX_ARGS).map((arg) => {
    const chars = codePoints(arg);
    return chars && chars.length > MAX_ARG_CHARS ? chars.slice(0, MAX_ARG_CHARS).join('') + '...' : arg;
  });
  if (args.length > MAX_ARGS) out.push(`... (${args.length - MAX_ARGS} more arguments)`);
  return out;
}

/**
 * The identity of this process. argv is what the program sees as its own arguments, the
 * analogue of Python's sys.argv: the script and its arguments (process.argv without node).
 */
function currentIdentity() {
  const pid = process.pid;
  return {
    pid,
    pidStart: readPidStart(pid),
    exe: process.execPath || '',
    argv: boundedArgv(process.argv.slice(1)),
    user: userName(),
    host: os.hostname(),
  };
}

module.exports = { readPidStart, statStartTime, boundedArgv, currentIdentity };
