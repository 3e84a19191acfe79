'use strict';
// One dvic_log file: exclusive creation, one write(2) per line, rotation under the cap, a file
// deleted under the writer re-created (docs/log-format.md "Files", "The size cap and rotation").
// The state lives in a registry slot (shared memory) so that every thread of the process that
// logs under the same name appends to the same file; every step runs under the slot's lock.
// A worker can be terminated at any point of a step: every switch to another file (rotation,
// re-creation, new stream) is first staged in the slot (NEXT_*) and then committed, so the thread
// that takes the lock over from it can finish or drop the switch (recover) and no thread goes on
// writing into a file that is no longer the live one.

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const wt = require('worker_threads');
const { headerLine, heartbeatLine, quote, fitRecord, recordLine, pyFloat } = require('./format');
const { Slot, I, F, G, STATE_READY, monotonicMs, privateRegistry } = require('./registry');

const FILE_PREFIX = 'dvic_log_';
const ROTATED_SUFFIX = '.1';
// A rotation prepares the next file under this name, then renames it over the live path.
const PREPARE_SUFFIX = '.new';
const { O_WRONLY, O_CREAT, O_EXCL, O_APPEND, O_NOFOLLOW = 0 } = fs.constants;
// O_NOFOLLOW and O_EXCL together refuse any existing name, a planted symlink included. Node adds
// O_CLOEXEC to every descriptor it opens (libuv), so children started later do not inherit it.
const CREATE_FLAGS = O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_NOFOLLOW;
const FILE_MODE = 0o644;
const TOKEN_ATTEMPTS = 16;
const VANISH_CHECK_MS = 1000;
// A heartbeat call within this many ms of the file's last heartbeat record writes nothing.
const HEARTBEAT_MIN_INTERVAL_MS = 1000;
const NO_ROOM = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);
// Room kept for the '"rotated":N' field later headers add: keeps every record under the cap.
const ROTATED_FIELD_SLACK = 24;
const ME = wt.threadId + 1; // 0 means "nobody" in the slot's TORN_OWNER
// TORN_OWNER of a line a terminated thread left without its newline: any thread ends it.
const ORPHAN_LINE = -1;

class DvicLogError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'DvicLogError';
    this.code = code;
  }
}

function newToken() {
  return crypto.randomBytes(8);
}

function tokenHex(hi, lo) {
  return (hi >>> 0).toString(16).padStart(8, '0') + (lo >>> 0).toString(16).padStart(8, '0');
}

/** fd and fstat of an existing regular file opened read-only (never through a symlink), or null. */
function openToCheck(file) {
  let fd;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | O_NOFOLLOW);
  } catch (err) {
    if (err.code === 'ENOENT' || err.code === 'ELOOP') return null;
    throw err;
  }
  const st = fs.fstatSync(fd);
  if (st.isFile()) return { fd, st };
  closeQuietly(fd);
  return null;
}

function endsWithNewline(fd, size) {
  if (size === 0) return true;
  const last = Buffer.alloc(1);
  return fs.readSync(fd, last, 0, 1, size - 1) === 1 && last[0] === 0x0a;
}

function unlinkIfPresent(file) {
  try {
    fs.unlinkSync(file);
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
  }
}

/** Create file exclusively (never through a symlink), mode 0644, holding only the header. */
function createWithHeader(file, header) {
  const fd = fs.openSync(file, CREATE_FLAGS, FILE_MODE);
  try {
    fs.fchmodSync(fd, FILE_MODE); // a restrictive umask must not hide the file from the daemon
    const written = fs.writeSync(fd, header);
    if (written !== header.length) throw new DvicLogError('ENOSPC', `dvic_log: short write of the header to ${file}`);
  } catch (err) {
    fs.closeSync(fd);
    try {
      unlinkIfPresent(file);
    } catch (_) {
      // the original error is the one worth reporting
    }
    throw err;
  }
  return fd;
}

/** The fields of a header that never change for a process: pid ... host (a JSON fragment). */
function identityFragment(ident) {
  return (
    ',"pid":' + ident.pid +
    ',"pid_start":' + (ident.pidStart === null ? 'null' : String(ident.pidStart)) +
    ',"exe":' + quote(ident.exe) +
    ',"argv":[' + ident.argv.map(quote).join(',') + ']' +
    ',"user":' + quote(ident.user) +
    ',"host":' + quote(ident.host)
  );
}

/**
 * Shorten argv and exe until the header takes at most a quarter of the cap (the Python
 * library's rule), and at most the registry heap's share so the table can hold it.
 */
function fitIdentity(name, ident, maxBytes, limit) {
  const budget = Math.min(Math.floor(maxBytes / 4), limit);
  let fitted = ident;
  for (const [maxArgs, maxChars] of [[null, null], [16, 64], [4, 32], [1, 32], [0, 0]]) {
    const h = { ...fitted, token: '0'.repeat(16), name, start: Date.now() / 1000 };
    if (headerLine(h, 1e9).length <= budget) break;
    let argv = ident.argv;
    if (maxArgs !== null) {
      const kept = argv.slice(0, maxArgs).map((a) => Array.from(a).slice(0, maxChars).join(''));
      if (argv.length > maxArgs) kept.push(`... (${argv.length - maxArgs} more arguments)`);
      argv = kept;
    }
    fitted = { ...ident, argv, exe: Array.from(ident.exe).slice(0, 256).join('') };
  }
  return fitted;
}

/**
 * A dvic_log file of this process, seen from this thread. Every public method may throw (an
 * OSError-like Error with .code): the Logger above turns failures into one stderr report.
 */
class LogFile {
  /** Attach to a slot that is already open (found in the registry). */
  constructor(slot) {
    this.slot = slot;
    this.name = slot.stringField(I.NAME_OFF, I.NAME_LEN);
    this.directory = slot.stringField(I.DIR_OFF, I.DIR_LEN);
    this.fragment = slot.stringField(I.IDENT_OFF, I.IDENT_LEN);
    this.fd = -1; // this thread's descriptor on the slot's file ...
    this.gen = -1; // ... as it was at this generation of the slot
    this.pending = null; // the rest of a line cut short by a full disk (this thread's own)
  }

  /**
   * Open a new file for name in a free slot of registry (the table is locked by the caller);
   * with no free slot or no heap room, in a private one-slot table (not shared with workers).
   */
  static open(registry, name, directory, maxBytes, ident) {
    const heapShare = 128 * 1024; // far above any real header
    const fitted = fitIdentity(name, ident, maxBytes, heapShare);
    const strings = [name, directory, identityFragment(fitted)].map((s) => Buffer.from(s, 'utf8'));
    const need = strings.reduce((n, b) => n + b.length, 0);
    let reg = registry;
    let index = reg.free();
    if (index < 0 || reg.ints[G.HEAP_TOP] + need > reg.heap.length) {
      reg = privateRegistry(need);
      index = 0;
    }
    const slot = new Slot(reg, index);
    const fields = [[I.NAME_OFF, I.NAME_LEN], [I.DIR_OFF, I.DIR_LEN], [I.IDENT_OFF, I.IDENT_LEN]];
    strings.forEach((bytes, k) => {
      slot.setInt(fields[k][0], reg.store(bytes));
      slot.setInt(fields[k][1], bytes.length);
    });
    slot.setFloat(F.MAX_BYTES, maxBytes);
    slot.setFloat(F.LAST_HEARTBEAT, -Infinity);
    slot.setInt(I.RECOVER, 0); // a free slot may hold the leftovers of a terminated open
    slot.setInt(I.NEXT_VALID, 0);
    const file = new LogFile(slot);
    file.openStream();
    slot.setInt(I.STATE, STATE_READY); // only now may other threads find it
    return file;
  }

  get token() {
    return tokenHex(this.slot.int(I.TOKEN_HI), this.slot.int(I.TOKEN_LO));
  }

  get path() {
    return this.pathOf(this.token);
  }

  pathOf(token) {
    return path.join(this.directory, FILE_PREFIX + token);
  }

  get maxBytes() {
    return this.slot.float(F.MAX_BYTES);
  }

  get closed() {
    return this.slot.int(I.CLOSED) === 1;
  }

  /** Append one record line; when this returns, the whole line is in the file. */
  writeRecord(rec) {
    const line = recordLine(rec.ts, rec.level, rec.msg, rec.logger, rec.exc); // outside the lock
    this.locked(() => {
      this.ready();
      const maxLine = this.slot.float(F.MAX_LINE);
      this.append(line.length > maxLine ? fitRecord(rec, maxLine) : line);
    });
  }

  /**
   * A heartbeat record (docs/log-format.md "Heartbeats"), at most one per second for the file
   * whatever thread calls; returns whether one was written.
   */
  heartbeat() {
    const now = monotonicMs();
    return this.locked(() => {
      this.ready();
      if (now - this.slot.float(F.LAST_HEARTBEAT) < HEARTBEAT_MIN_INTERVAL_MS) return false;
      this.append(heartbeatLine(Date.now() / 1000));
      this.slot.setFloat(F.LAST_HEARTBEAT, now);
      return true;
    });
  }

  /** Close the file (it stays for the daemon); a later write reopens it. */
  close() {
    this.locked(() => {
      if (this.closed) return;
      try {
        this.ready();
        this.finishPending();
      } catch (_) {
        // still no room: the reader will see the incomplete last line
      }
      this.slot.setInt(I.CLOSED, 1);
      this.dropFd();
    });
  }

  locked(fn) {
    this.slot.lock();
    try {
      if (this.slot.int(I.RECOVER) === 1) this.recover();
      return fn();
    } finally {
      this.slot.unlock();
    }
  }

  // ----- internals (the slot's lock is held) ---------------------------------------------------

  /** The header of this stream (or of the stream token, start) at rotation count `rotated`. */
  header(rotated, token = this.token, start = this.slot.float(F.START)) {
    let line = '{"dvic_log":1,"token":"' + token + '","name":' + quote(this.name) + this.fragment;
    line += ',"start":' + pyFloat(start);
    if (rotated) line += ',"rotated":' + rotated;
    return Buffer.from(line + '}\n', 'utf8');
  }

  /**
   * The previous holder of the lock exited inside it (a terminated worker): make the slot agree
   * with the files again before anything is written. A switch it staged is finished if its file
   * is in place and dropped if not; the size is read again (a write may have landed uncounted); a
   * line it left without its newline will get one; a file that is not the slot's any more makes
   * every thread find the live file again (ready), as after a deletion.
   */
  recover() {
    const slot = this.slot;
    if (slot.int(I.NEXT_VALID) === 1) {
      const token = tokenHex(slot.int(I.NEXT_TOKEN_HI), slot.int(I.NEXT_TOKEN_LO));
      const staged = openToCheck(this.pathOf(token));
      if (staged !== null) {
        closeQuietly(staged.fd);
        const inPlace = staged.st.ino === slot.float(F.NEXT_INO) && staged.st.dev === slot.float(F.NEXT_DEV);
        if (inPlace) this.commit(staged.st.size);
      }
      slot.setInt(I.NEXT_VALID, 0);
    }
    const live = openToCheck(this.path);
    if (live !== null && live.st.ino === slot.float(F.INO) && live.st.dev === slot.float(F.DEV)) {
      try {
        slot.setFloat(F.SIZE, live.st.size);
        if (slot.int(I.TORN_OWNER) === 0 && !endsWithNewline(live.fd, live.st.size)) {
          slot.setInt(I.TORN_OWNER, ORPHAN_LINE);
        }
      } finally {
        closeQuietly(live.fd);
      }
    } else {
      if (live !== null) closeQuietly(live.fd);
      slot.setInt(I.GEN, slot.int(I.GEN) + 1);
    }
    slot.setInt(I.RECOVER, 0);
  }

  /** Make this thread's descriptor point at the slot's current file. */
  ready() {
    if (this.closed) {
      this.reopenClosed();
    } else if (this.gen !== this.slot.int(I.GEN) || this.fd < 0) {
      this.dropFd();
      const fd = this.openCurrent();
      if (fd < 0) {
        this.replaceVanished(); // the slot's file is gone (deleted, or replaced by someone else)
      } else {
        this.fd = fd;
        this.gen = this.slot.int(I.GEN);
      }
    }
  }

  /** The slot's file opened for appending, or -1 if its path no longer names it. */
  openCurrent() {
    let fd;
    try {
      fd = fs.openSync(this.path, O_WRONLY | O_APPEND | O_NOFOLLOW);
    } catch (err) {
      if (err.code === 'ENOENT' || err.code === 'ELOOP') return -1;
      throw err;
    }
    const st = fs.fstatSync(fd);
    if (st.ino !== this.slot.float(F.INO) || st.dev !== this.slot.float(F.DEV) || !st.isFile()) {
      closeQuietly(fd);
      return -1;
    }
    return fd;
  }

  /** A closed file continues where it was, or as a new stream if that file is gone. */
  reopenClosed() {
    this.dropFd();
    const fd = this.openCurrent();
    if (fd < 0) {
      this.openStream();
      return;
    }
    this.fd = fd;
    this.gen = this.slot.int(I.GEN);
    this.slot.setInt(I.CLOSED, 0);
    this.slot.setFloat(F.SIZE, fs.fstatSync(fd).size);
  }

  /** The steps of one append: deleted file, torn line, rotation, then the single write. */
  append(line) {
    this.checkVanished();
    this.finishPending();
    if (this.slot.float(F.SIZE) + line.length > this.maxBytes) this.rotate();
    this.writeLine(line);
  }

  dropFd() {
    if (this.fd >= 0) closeQuietly(this.fd);
    this.fd = -1;
  }

  /**
   * Write down the file fd (just created, holding only its header) as the one about to become the
   * slot's file: stream token, start, rotation count. Until commit the slot's file is the old one.
   */
  stage(fd, token, start, rotated) {
    const slot = this.slot;
    const st = fs.fstatSync(fd);
    slot.setInt(I.NEXT_VALID, 0);
    slot.setInt(I.NEXT_TOKEN_HI, token.readInt32BE(0));
    slot.setInt(I.NEXT_TOKEN_LO, token.readInt32BE(4));
    slot.setFloat(F.NEXT_START, start);
    slot.setInt(I.NEXT_ROTATED, rotated);
    slot.setFloat(F.NEXT_INO, st.ino);
    slot.setFloat(F.NEXT_DEV, st.dev);
    slot.setInt(I.NEXT_VALID, 1);
  }

  /** Make the staged file the slot's file, for every thread; all of it can be done again. */
  commit(size) {
    const slot = this.slot;
    const [hi, lo] = [slot.int(I.NEXT_TOKEN_HI), slot.int(I.NEXT_TOKEN_LO)];
    const start = slot.float(F.NEXT_START);
    slot.setInt(I.TOKEN_HI, hi);
    slot.setInt(I.TOKEN_LO, lo);
    slot.setFloat(F.START, start);
    slot.setInt(I.ROTATED, slot.int(I.NEXT_ROTATED));
    slot.setFloat(F.INO, slot.float(F.NEXT_INO));
    slot.setFloat(F.DEV, slot.float(F.NEXT_DEV));
    slot.setFloat(F.SIZE, size);
    slot.setInt(I.TORN_OWNER, 0); // the new file holds whole lines only
    slot.setInt(I.CLOSED, 0);
    const firstHeader = this.header(0, tokenHex(hi, lo), start).length;
    slot.setFloat(F.MAX_LINE, this.maxBytes - firstHeader - ROTATED_FIELD_SLACK);
    slot.setInt(I.GEN, slot.int(I.GEN) + 1);
    slot.setInt(I.NEXT_VALID, 0);
  }

  /** Commit the staged file fd (holding its header of `size` bytes), this thread writing to it. */
  adopt(fd, size) {
    this.commit(size);
    this.dropFd();
    this.fd = fd;
    this.gen = this.slot.int(I.GEN);
  }

  /** This stream's token as 8 bytes, for stage. */
  tokenBytes() {
    const bytes = Buffer.alloc(8);
    bytes.writeInt32BE(this.slot.int(I.TOKEN_HI), 0);
    bytes.writeInt32BE(this.slot.int(I.TOKEN_LO), 4);
    return bytes;
  }

  /** Start a new stream: new token, new start time, new file, header with rotated = 0. */
  openStream() {
    const start = Date.now() / 1000;
    this.pending = null;
    let lastError = null;
    for (let attempt = 0; attempt < TOKEN_ATTEMPTS; attempt += 1) {
      const token = newToken();
      const header = this.header(0, token.toString('hex'), start);
      let fd;
      try {
        fd = createWithHeader(this.pathOf(token.toString('hex')), header);
      } catch (err) {
        if (err.code !== 'EEXIST') throw err;
        lastError = err; // a token collision or a name planted in advance
        continue;
      }
      this.stage(fd, token, start, 0);
      this.adopt(fd, header.length);
      this.slot.setFloat(F.NEXT_CHECK, monotonicMs() + VANISH_CHECK_MS);
      return;
    }
    const err = new DvicLogError(
      'EEXIST',
      `dvic_log: no free file name after ${TOKEN_ATTEMPTS} attempts in ${this.directory}`,
    );
    err.cause = lastError;
    throw err;
  }

  writeLine(line) {
    const written = fs.writeSync(this.fd, line);
    this.slot.setFloat(F.SIZE, this.slot.float(F.SIZE) + written);
    if (written !== line.length) {
      // Disk full or file size limit: part of the line is on disk. Keep the rest and write it
      // first next time, so the file stays append-only and the line ends up whole.
      this.pending = line.subarray(written);
      this.slot.setInt(I.TORN_OWNER, ME);
      throw new DvicLogError(
        'ENOSPC',
        `dvic_log: no room in ${this.path}: ${written} of ${line.length} bytes of the record written, ` +
          'the rest follows before the next record',
      );
    }
  }

  /** Complete a line a full disk cut short; throws while there is still no room. */
  finishPending() {
    const owner = this.slot.int(I.TORN_OWNER);
    if (owner !== ME) this.pending = null; // another thread finished or ended our torn line
    if (owner === 0) return;
    // The rest of the line is held by the thread that wrote its start. Another thread can only
    // end it with a newline (the reader ships the fragment as a raw line), never glue a record to it.
    let rest = owner === ME && this.pending ? this.pending : Buffer.from('\n');
    while (rest.length) {
      const written = fs.writeSync(this.fd, rest);
      this.slot.setFloat(F.SIZE, this.slot.float(F.SIZE) + written);
      rest = rest.subarray(written);
      if (owner === ME) this.pending = rest;
    }
    this.pending = null;
    this.slot.setInt(I.TORN_OWNER, 0);
  }

  /** If the file was deleted under us, start a fresh one at the same path (as a rotation). */
  checkVanished() {
    const now = monotonicMs();
    if (now < this.slot.float(F.NEXT_CHECK)) return;
    this.slot.setFloat(F.NEXT_CHECK, now + VANISH_CHECK_MS);
    if (fs.fstatSync(this.fd).nlink > 0) return;
    this.replaceVanished();
  }

  replaceVanished() {
    this.pending = null; // the unfinished line went away with the deleted file
    const rotated = this.slot.int(I.ROTATED) + 1;
    const header = this.header(rotated);
    let fd;
    try {
      fd = createWithHeader(this.path, header);
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
      this.openStream(); // something else took the name: continue under a new token
      return;
    }
    this.stage(fd, this.tokenBytes(), this.slot.float(F.START), rotated);
    this.adopt(fd, header.length);
  }

  /**
   * Move the live file to <path>.1 and continue in a fresh file: prepared under .new, the full
   * file gets the second name .1 (a hard link), .new is renamed over the live name. Without hard
   * links: rename live to .1 and create the live name again; if .1 is unusable too, go on under
   * a new token. A full disk is reported, not worked around.
   */
  rotate() {
    const rotated = this.slot.int(I.ROTATED) + 1;
    const header = this.header(rotated);
    let fd;
    try {
      fd = this.rotateWithLink(header, rotated);
    } catch (err) {
      this.slot.setInt(I.NEXT_VALID, 0);
      if (NO_ROOM.has(err.code)) throw err;
      try {
        fd = this.rotateWithRename(header, rotated);
      } catch (err2) {
        this.slot.setInt(I.NEXT_VALID, 0);
        if (NO_ROOM.has(err2.code)) throw err2;
        this.openStream();
        return;
      }
    }
    this.adopt(fd, header.length);
  }

  rotateWithLink(header, rotated) {
    const live = this.path;
    const prepared = live + PREPARE_SUFFIX;
    unlinkIfPresent(prepared); // left over by a crash in the middle of an earlier rotation
    const fd = createWithHeader(prepared, header);
    try {
      // From here a thread taking over from us finds the new file once it is at the live name.
      this.stage(fd, this.tokenBytes(), this.slot.float(F.START), rotated);
      const backup = live + ROTATED_SUFFIX;
      unlinkIfPresent(backup);
      fs.linkSync(live, backup);
      fs.renameSync(prepared, live);
    } catch (err) {
      closeQuietly(fd);
      try {
        fs.unlinkSync(prepared);
      } catch (_) {
        // nothing left to clean
      }
      throw err;
    }
    return fd;
  }

  rotateWithRename(header, rotated) {
    const live = this.path;
    const backup = live + ROTATED_SUFFIX;
    unlinkIfPresent(backup);
    try {
      fs.renameSync(live, backup);
    } catch (err) {
      if (err.code !== 'ENOENT') throw err; // deleted under us: nothing to keep
    }
    const fd = createWithHeader(live, header);
    try {
      this.stage(fd, this.tokenBytes(), this.slot.float(F.START), rotated);
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    return fd;
  }
}

function closeQuietly(fd) {
  try {
    fs.closeSync(fd);
  } catch (_) {
    // already closed
  }
}

module.exports = { LogFile, DvicLogError, FILE_PREFIX, ROTATED_SUFFIX, createWithHeader, fitIdentity };
