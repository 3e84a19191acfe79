'use strict';
// The process-wide table of open dvic_log files, in shared memory so worker threads share them.
//
// The format's rule is "each process has its own file; two loggers with the same name share a
// file". Node's worker threads do not share modules, but they do share descriptors and can share
// a SharedArrayBuffer: the main thread creates this table when it loads the package and hands it
// to the workers it starts afterwards (worker_threads.setEnvironmentData). Each slot holds the
// state of one file (token, inode, size, rotation count ...) and a lock, so any thread can
// append, rotate or reopen the file, exactly one at a time. Descriptors are not shared: Node
// closes the descriptors a worker opened when that worker exits, so each thread opens its own
// on the slot's current file (checked by inode) and notices a rotation by the slot's GEN. A worker started before the main
// thread loaded the package, or a table that is full, gets a private table: then that worker
// writes its own file (a second stream of the same demo, with the same pid).
//
// A worker can be terminated (worker.terminate()) anywhere, inside a lock too. A lock word names
// its holder's kernel thread (id and start time), so a waiter can tell from /proc that the holder
// has exited and take the lock over at once, and never takes it from a live, merely slow, holder.
// The thread that takes a slot's lock over first repairs what the dead holder left half done
// (LogFile.recover in writer.js).

const fs = require('fs');
const wt = require('worker_threads');
const { statStartTime } = require('./identity');

const KEY = 'dvic-log:registry:v2';
const MAGIC = 0x64766c32; // "dvl2": the layout below (v1 had int32 locks without owners)
const SLOTS = 32;
const HEAP_BYTES = 512 * 1024;

// Int32 fields of a slot. NEXT_* describe a file about to become the slot's file (writer.js).
const I = {
  STATE: 0, GEN: 1, ROTATED: 2, CLOSED: 3, TORN_OWNER: 4, TOKEN_HI: 5, TOKEN_LO: 6,
  NAME_OFF: 7, NAME_LEN: 8, DIR_OFF: 9, DIR_LEN: 10, IDENT_OFF: 11, IDENT_LEN: 12,
  RECOVER: 13, NEXT_VALID: 14, NEXT_ROTATED: 15, NEXT_TOKEN_HI: 16, NEXT_TOKEN_LO: 17,
};
const SLOT_INTS = 18;
// Float64 fields of a slot.
const F = {
  SIZE: 0, START: 1, MAX_BYTES: 2, MAX_LINE: 3, NEXT_CHECK: 4, INO: 5, DEV: 6, LAST_HEARTBEAT: 7,
  NEXT_START: 8, NEXT_INO: 9, NEXT_DEV: 10,
};
const SLOT_FLOATS = 11;
// Table-wide Int32 fields, before the slots.
const G = { MAGIC: 0, HEAP_TOP: 1 };
const HEAD_INTS = 2;
// The locks (BigInt64): the table's at 0, slot s's at 1 + s.
const TABLE_LOCK = 0;

const STATE_FREE = 0;
const STATE_READY = 1;

// A lock word: 0 free, else the holder's id | WAITERS (someone may sleep on it). On Linux the id
// is the kernel thread id (low 30 bits) and, above bit 32, its start time: /proc/self/task/<tid>
// says whether that very thread still runs (a tid can be reused, with another start time).
const WAITERS = 1n << 30n;
const TID_MASK = WAITERS - 1n;
// Without /proc (not Linux) the id is the worker threadId + 1 with this bit, and nothing can tell
// a terminated holder from a slow one: a holder seen for LOCK_TAKEOVER_MS is taken over.
const NO_PROC = 1n << 31n;
const LOCK_TAKEOVER_MS = 2000;
// How long a waiter sleeps before it looks whether the holder still exists.
const HOLDER_CHECK_MS = 20;

function monotonicMs() {
  return Number(process.hrtime.bigint() / 1000000n);
}

/** Byte offsets of the parts of a table of `slots` slots: ints, floats, locks, heap. */
function layout(slots) {
  const floats = Math.ceil(((HEAD_INTS + slots * SLOT_INTS) * 4) / 8) * 8;
  const locks = floats + slots * SLOT_FLOATS * 8;
  return { floats, locks, heap: locks + (1 + slots) * 8 };
}

/** The table: typed views over one SharedArrayBuffer. */
class Registry {
  constructor(sab, slots) {
    this.sab = sab;
    this.slots = slots;
    const at = layout(slots);
    this.ints = new Int32Array(sab, 0, HEAD_INTS + slots * SLOT_INTS);
    this.floats = new Float64Array(sab, at.floats, slots * SLOT_FLOATS);
    this.locks = new BigInt64Array(sab, at.locks, 1 + slots);
    this.heapOff = at.heap;
    this.heap = new Uint8Array(sab, this.heapOff);
  }

  static create(slots, heapBytes) {
    const sab = new SharedArrayBuffer(layout(slots).heap + heapBytes);
    const reg = new Registry(sab, slots);
    reg.ints[G.MAGIC] = MAGIC;
    return reg;
  }

  static attach(sab) {
    if (!(sab instanceof SharedArrayBuffer) || sab.byteLength < HEAD_INTS * 4) return null;
    const magic = new Int32Array(sab, 0, HEAD_INTS)[G.MAGIC];
    return magic === MAGIC ? new Registry(sab, SLOTS) : null;
  }

  /** Returns true when the lock was taken over from a thread that exited holding it. */
  lockTable() {
    return lock(this.locks, TABLE_LOCK);
  }

  unlockTable() {
    unlock(this.locks, TABLE_LOCK);
  }

  /** Copy bytes into the heap; returns their offset, or -1 when the heap is full. */
  store(bytes) {
    const top = this.ints[G.HEAP_TOP];
    if (top + bytes.length > this.heap.length) return -1;
    this.heap.set(bytes, top);
    this.ints[G.HEAP_TOP] = top + bytes.length;
    return top;
  }

  text(off, len) {
    return Buffer.from(this.sab, this.heapOff + off, len).toString('utf8');
  }

  /** The ready slot of a demo name and directory, or -1 (call with the table locked). */
  find(name) {
    for (let s = 0; s < this.slots; s += 1) {
      const base = HEAD_INTS + s * SLOT_INTS;
      if (this.ints[base + I.STATE] !== STATE_READY) continue;
      if (this.text(this.ints[base + I.NAME_OFF], this.ints[base + I.NAME_LEN]) === name) return s;
    }
    return -1;
  }

  /** A free slot (call with the table locked), or -1. */
  free() {
    for (let s = 0; s < this.slots; s += 1) {
      if (this.ints[HEAD_INTS + s * SLOT_INTS + I.STATE] === STATE_FREE) return s;
    }
    return -1;
  }
}

/** Typed accessors for one slot of a registry; one such object per thread and slot. */
class Slot {
  constructor(registry, index) {
    this.reg = registry;
    this.index = index;
    this.ib = HEAD_INTS + index * SLOT_INTS;
    this.fb = index * SLOT_FLOATS;
  }

  int(field) {
    return this.reg.ints[this.ib + field];
  }

  setInt(field, value) {
    this.reg.ints[this.ib + field] = value;
  }

  float(field) {
    return this.reg.floats[this.fb + field];
  }

  setFloat(field, value) {
    this.reg.floats[this.fb + field] = value;
  }

  /** Take the slot's lock; a lock taken over from a thread that exited in it marks the slot RECOVER. */
  lock() {
    if (lock(this.reg.locks, 1 + this.index)) this.setInt(I.RECOVER, 1);
  }

  unlock() {
    unlock(this.reg.locks, 1 + this.index);
  }

  stringField(offField, lenField) {
    return this.reg.text(this.int(offField), this.int(lenField));
  }
}

/** This thread's lock word (see WAITERS): its kernel thread id and start time, read from /proc. */
function threadWord() {
  try {
    const link = fs.readlinkSync('/proc/thread-self'); // "<pid>/task/<tid>", of the calling thread
    const tid = Number(link.slice(link.lastIndexOf('/') + 1));
    const start = statStartTime(fs.readFileSync(`/proc/self/task/${tid}/stat`, 'latin1'));
    if (Number.isInteger(tid) && tid > 0 && BigInt(tid) <= TID_MASK && start !== null) {
      return (BigInt(start % 2 ** 31) << 32n) | BigInt(tid);
    }
  } catch (_) {
    // no /proc: below
  }
  return NO_PROC | BigInt(wt.threadId + 1);
}

const SELF = threadWord();

/**
 * Whether the thread named by lock word `word` has exited: true or false, or null when that
 * cannot be known (no /proc, or /proc refuses to say).
 */
function holderExited(word) {
  if (word & NO_PROC) return null;
  let stat;
  try {
    stat = fs.readFileSync(`/proc/self/task/${word & TID_MASK}/stat`, 'latin1');
  } catch (err) {
    return err.code === 'ENOENT' || err.code === 'ESRCH' ? true : null;
  }
  const start = statStartTime(stat);
  if (start === null) return null;
  return BigInt(start % 2 ** 31) !== word >> 32n; // the tid names a newer thread now
}

// A futex mutex (free / held / held with waiters, Drepper's "mutex2") whose word names its holder.
// Returns true when the lock was taken over from a holder that exited without unlocking.
function lock(words, i) {
  if (Atomics.compareExchange(words, i, 0n, SELF) === 0n) return false;
  let seen = 0n; // the holder word we are waiting on, and since when (for the no-/proc rule)
  let seenSince = 0;
  for (;;) {
    let word = Atomics.load(words, i);
    if (word === 0n) {
      if (Atomics.compareExchange(words, i, 0n, SELF | WAITERS) === 0n) return false;
      continue;
    }
    if (!(word & WAITERS)) {
      if (Atomics.compareExchange(words, i, word, word | WAITERS) !== word) continue;
      word |= WAITERS;
    }
    if (word !== seen) {
      seen = word;
      seenSince = monotonicMs();
    }
    // A holder that unlocks wakes us; one that exited never will: look at it on each timeout.
    if (Atomics.wait(words, i, word, HOLDER_CHECK_MS) !== 'timed-out') continue;
    const exited = holderExited(word);
    const gone = exited === null ? monotonicMs() - seenSince >= LOCK_TAKEOVER_MS : exited;
    // The exchange fails if the word changed meanwhile: a dead holder's word cannot come back.
    if (gone && Atomics.compareExchange(words, i, word, SELF | WAITERS) === word) return true;
  }
}

function unlock(words, i) {
  if (Atomics.compareExchange(words, i, SELF, 0n) === SELF) return;
  // Contended: wake one waiter. (Without /proc a lock held too long may have been taken over:
  // then it is no longer ours, and stays with its new holder.)
  if (Atomics.compareExchange(words, i, SELF | WAITERS, 0n) === (SELF | WAITERS)) Atomics.notify(words, i, 1);
}

/** This thread's view of the process-wide table (created here if no parent thread made one). */
function processRegistry() {
  let reg = null;
  try {
    reg = Registry.attach(wt.getEnvironmentData(KEY));
  } catch (_) {
    reg = null;
  }
  if (reg === null) {
    reg = Registry.create(SLOTS, HEAP_BYTES);
    try {
      wt.setEnvironmentData(KEY, reg.sab); // workers started from now on share it
    } catch (_) {
      // an old runtime without environment data: each thread keeps its own table
    }
  }
  return reg;
}

/** A one-slot table for a logger that cannot be shared (the process table is full). */
function privateRegistry(heapBytes) {
  return Registry.create(1, heapBytes);
}

module.exports = {
  Registry, Slot, I, F, G, STATE_FREE, STATE_READY, processRegistry, privateRegistry, monotonicMs,
};
