'use strict';
// Retention (docs/log-format.md "Retention"): when a writer starts, remove this user's files
// whose writer exited and that were not written for the retention period.

const fs = require('fs');
const path = require('path');
const { readPidStart } = require('./identity');

const NAME = /^dvic_log_[0-9a-f]{16}(\.1|\.new)?$/;
const HEADER_BYTES = 64 * 1024;
const MAX_ENTRIES = 20000;
const { O_RDONLY, O_NOFOLLOW = 0, O_NONBLOCK = 0 } = fs.constants;

const done = new Set();

function readHeader(file) {
  let fd;
  try {
    fd = fs.openSync(file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  } catch (_) {
    return null;
  }
  try {
    const buf = Buffer.alloc(HEADER_BYTES);
    const n = fs.readSync(fd, buf, 0, HEADER_BYTES, 0);
    const data = buf.subarray(0, n);
    const nl = data.indexOf(10);
    const first = new TextDecoder('utf-8', { fatal: true }).decode(nl < 0 ? data : data.subarray(0, nl));
    const header = JSON.parse(first);
    return header && typeof header === 'object' && !Array.isArray(header) ? header : null;
  } catch (_) {
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

/** Whether the process a header names still runs (same pid and same start time). */
function writerAlive(header) {
  const pid = header.pid;
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (Number.isInteger(header.pid_start)) return readPidStart(pid) === header.pid_start;
  try {
    process.kill(pid, 0); // no start time to compare: a live pid counts as alive, to be safe
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

/** Remove this user's stale files in directory; returns how many were removed. */
function pruneStale(directory, keepSeconds, now = Date.now() / 1000) {
  const uid = typeof process.geteuid === 'function' ? process.geteuid() : -1;
  let names;
  try {
    names = fs.readdirSync(directory);
  } catch (_) {
    return 0;
  }
  let removed = 0;
  for (const name of names.slice(0, MAX_ENTRIES)) {
    if (!NAME.test(name)) continue;
    const file = path.join(directory, name);
    let st;
    try {
      st = fs.lstatSync(file);
    } catch (_) {
      continue;
    }
    if (!st.isFile() || st.uid !== uid || now - st.mtimeMs / 1000 < keepSeconds) continue;
    const header = readHeader(file);
    if (header !== null && writerAlive(header)) continue; // an idle demo still running keeps its file
    try {
      fs.unlinkSync(file);
      removed += 1;
    } catch (_) {
      // gone already, or not ours to remove after all
    }
  }
  return removed;
}

/** pruneStale() at most once per thread and directory; never throws. */
function pruneOnce(directory, keepSeconds) {
  if (keepSeconds <= 0) return;
  let key = directory;
  try {
    key = fs.realpathSync(directory);
  } catch (_) {
    // keep the name as given
  }
  if (done.has(key)) return;
  done.add(key);
  try {
    pruneStale(directory, keepSeconds);
  } catch (_) {
    // retention is housekeeping: it must never break a demo's logging
  }
}

module.exports = { pruneStale, pruneOnce, writerAlive, readHeader };
