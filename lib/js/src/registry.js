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

const wt = require('worker_threads');

const KEY = 'dvic-log:registry:v1';
const MAGIC = 0x64766c31; // "dvl1"
const SLOTS = 32;
const HEAP_BYTES = 512 * 1024;

// Int32 fields of a slot.
const I = {
  LOCK: 0, STATE: 1, GEN: 2, ROTATED: 3, CLOSED: 4, TORN_OWNER: 5, TOKEN_HI: 6, TOKEN_LO: 7,
  NAME_OFF: 8, NAME_LEN: 9, DIR_OFF: 10, DIR_LEN: 11, IDENT_OFF: 12, IDENT_LEN: 13,
};
const SLOT_INTS = 16;
// Float64 fields of a slot.
const F = {
  SIZE: 0, START: 1, MAX_BYTES: 2, MAX_LINE: 3, NEXT_CHECK: 4, INO: 5, DEV: 6, LAST_HEARTBEAT: 7,
};
const SLOT_FLOATS = 8;
// Table-wide Int32 fields, before the slots.
const G = { LOCK: 0, MAGIC: 1, HEAP_TOP: 2 };
const HEAD_INTS = 4;

const STATE_FREE = 0;
const STATE_READY = 1;
// A lock held this long belongs to a thread that was terminated inside it: take it over.
const LOCK_TAKEOVER_MS = 2000;

function monotonicMs() {
  return Number(process.hrtime.bigint() / 1000000n);
}

/** The table: typed views over one SharedArrayBuffer. */
class Registry {
  constructor(sab, slots) {
    this.sab = sab;
    this.slots = slots;
    const intsLen = HEAD_INTS + slots * SLOT_INTS;
    this.ints = new Int32Array(sab, 0, intsLen);
    const floatsOff = Math.ceil((intsLen * 4) / 8) * 8;
    this.floats = new Float64Array(sab, floatsOff, slots * SLOT_FLOATS);
    this.heapOff = floatsOff + slots * SLOT_FLOATS * 8;
    this.heap = new Uint8Array(sab, this.heapOff);
  }

  static create(slots, heapBytes) {
    const intsLen = HEAD_INTS + slots * SLOT_INTS;
    const floatsOff = Math.ceil((intsLen * 4) / 8) * 8;
    const sab = new SharedArrayBuffer(floatsOff + slots * SLOT_FLOATS * 8 + heapBytes);
    const reg = new Registry(sab, slots);
    reg.ints[G.MAGIC] = MAGIC;
    return reg;
  }

  static attach(sab) {
    if (!(sab instanceof SharedArrayBuffer) || sab.byteLength < HEAD_INTS * 4) return null;
    const magic = new Int32Array(sab, 0, HEAD_INTS)[G.MAGIC];
    return magic === MAGIC ? new Registry(sab, SLOTS) : null;
  }

  lockTable() {
    lock(this.ints, G.LOCK);
  }

  unlockTable() {
    unlock(this.ints, G.LOCK);
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

  lock() {
    lock(this.reg.ints, this.ib + I.LOCK);
  }

  unlock() {
    unlock(this.reg.ints, this.ib + I.LOCK);
  }

  stringField(offField, lenField) {
    return this.reg.text(this.int(offField), this.int(lenField));
  }
}

// A three-state futex mutex (0 free, 1 held, 2 held with waiters), with a takeover for a lock
// whose holder was terminated: Atomics.wait is allowed on Node's main thread too.
function lock(ints, i) {
  if (Atomics.compareExchange(ints, i, 0, 1) === 0) return;
  const deadline = monotonicMs() + LOCK_TAKEOVER_MS;
  for (;;) {
    if (Atomics.exchange(ints, i, 2) === 0) return;
    const left = deadline - monotonicMs();
    if (left <= 0) return;
    Atomics.wait(ints, i, 2, Math.min(left, 100));
  }
}

function unlock(ints, i) {
  if (Atomics.exchange(ints, i, 0) === 2) Atomics.notify(ints, i, 1);
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

module.exports = { Registry, Slot, I, F, G, STATE_FREE, STATE_READY, processRegistry, privateRegistry, monotonicMs };
