'use strict';
/**
 * dvic-log: the DVIC demo logging library for Node.js (docs/log-format.md is the contract).
 *
 *   const log = require('dvic-log').getLogger('robot-arm');
 *   log.info('calibrated');
 *
 * Each record is one synchronous write(2) of a whole line: when a call returns, the line is in
 * the file, so a crash loses nothing already logged. Logging never throws into the caller: a
 * failure (no log directory, a full disk) is reported once on stderr. Only a bad demo name or
 * option (a programming error) throws, from getLogger.
 */

const fs = require('fs');
const util = require('util');
const config = require('./src/config');
const format = require('./src/format');
const { currentIdentity } = require('./src/identity');
const { pruneOnce } = require('./src/prune');
const { processRegistry, Slot } = require('./src/registry');
const { LogFile, FILE_PREFIX } = require('./src/writer');

const VERSION = '0.1.0';
const MAX_LOGGER_CHARS = 200;

const registry = processRegistry();
const demos = new Map(); // demo name -> Demo, for this thread

/** One line on stderr, the way every dvic_log library reports a logging failure. */
function report(text) {
  try {
    fs.writeSync(2, `dvic_log: ${text}\n`); // not console.error: the console may be patched to log here
  } catch (_) {
    // no stderr either: nothing more can be done, and the demo must go on
  }
}

function describe(err) {
  const text = err && err.message ? String(err.message) : String(err);
  return text.replace(/^dvic_log: /, '');
}

/** The first n characters (code points, as Python counts them) of text. */
function firstChars(text, n) {
  return text.length <= n ? text : Array.from(text).slice(0, n).join('');
}

/**
 * One demo (one file) as this thread sees it. `file` is null when the log could not be opened
 * (reported once at getLogger): its records are then dropped, as the Python library's are.
 */
class Demo {
  constructor(name, file) {
    this.name = name;
    this.file = file;
    this.failing = false; // a write failed and was reported; quiet until one succeeds again
    this.logger = new Logger(this, firstChars(name, MAX_LOGGER_CHARS));
  }

  /** Append a record; never throws. */
  write(rec) {
    return this.attempt(() => this.file.writeRecord(rec));
  }

  /** A heartbeat record, at most one per second per file; never throws. */
  heartbeat() {
    return this.attempt(() => this.file.heartbeat());
  }

  attempt(fn) {
    if (this.file === null) return false;
    try {
      const written = fn();
      this.failing = false;
      return written !== false;
    } catch (err) {
      if (!this.failing) {
        this.failing = true;
        report(`cannot write to ${this.file.path}: ${describe(err)}; records are dropped until writing works again`);
      }
      return false;
    }
  }
}

/** Open (or join, when another thread opened it) the file of demo `name`. Throws on failure. */
function openFile(name, options) {
  const directory = config.resolveDir(options.directory);
  const maxBytes = config.resolveMaxBytes(options.maxBytes);
  const keepSeconds = config.resolveKeepSeconds(options.keepDays);
  let file;
  registry.lockTable();
  try {
    const index = registry.find(name);
    file = index >= 0
      ? new LogFile(new Slot(registry, index))
      : LogFile.open(registry, name, directory, maxBytes, currentIdentity());
  } finally {
    registry.unlockTable();
  }
  pruneOnce(directory, keepSeconds);
  return file;
}

/** (text, traceback) of a call's arguments: a trailing Error gives its stack as the traceback. */
function splitMessage(msg, args) {
  const all = [msg, ...args];
  const last = all[all.length - 1];
  let exc;
  if (last instanceof Error) {
    try {
      exc = typeof last.stack === 'string' ? last.stack : undefined;
    } catch (_) {
      exc = undefined;
    }
    if (exc !== undefined) all[all.length - 1] = format.toText(last); // "Name: message", the stack goes to exc
  }
  if (all.length === 1) return { text: format.toText(all[0]), exc };
  try {
    return { text: util.format(...all), exc };
  } catch (err) {
    return { text: `${format.toText(msg)} (dvic_log: message formatting failed: ${describe(err)})`, exc };
  }
}

class Logger {
  constructor(demo, loggerName) {
    this._demo = demo;
    this.name = loggerName;
  }

  /** The demo name given to getLogger (the file's header "name"). */
  get demoName() {
    return this._demo.name;
  }

  /** Full path of the live file, or null while the file cannot be opened. */
  get path() {
    return this._demo.file ? this._demo.file.path : null;
  }

  /** The 16-hex-character token of the file, or null. */
  get token() {
    return this._demo.file ? this._demo.file.token : null;
  }

  /** Log at a level name (DEBUG ... CRITICAL, WARN, FATAL) or a Python logging number. */
  log(level, msg, ...args) {
    return this._write(format.levelName(level), msg, args); // an unknown level name is the caller's bug: throws
  }

  /**
   * One record with its fields given as they are: a level name or number, the message (a
   * Buffer is decoded as UTF-8, invalid bytes becoming U+FFFD) and options.exc, traceback text.
   */
  write(level, msg, options) {
    const exc = options && options.exc ? format.toText(options.exc) : undefined;
    const rec = { ts: Date.now() / 1000, level: format.levelName(level), msg: format.toText(msg), logger: this.name, exc };
    return this._demo.write(rec);
  }

  debug(msg, ...args) {
    return this._write('DEBUG', msg, args);
  }

  info(msg, ...args) {
    return this._write('INFO', msg, args);
  }

  warning(msg, ...args) {
    return this._write('WARNING', msg, args);
  }

  warn(msg, ...args) {
    return this._write('WARNING', msg, args);
  }

  error(msg, ...args) {
    return this._write('ERROR', msg, args);
  }

  critical(msg, ...args) {
    return this._write('CRITICAL', msg, args);
  }

  /**
   * Say the demo's main loop is alive: a heartbeat record, at most one per second per file (more
   * calls write nothing and cost next to nothing, so call it every frame if you like). Returns
   * true when a record was written.
   */
  heartbeat() {
    return this._demo.heartbeat();
  }

  /** A logger writing to the same file whose records say logger "<name>.<suffix>". */
  child(suffix) {
    return new Logger(this._demo, firstChars(`${this.name}.${format.toText(suffix)}`, MAX_LOGGER_CHARS));
  }

  /** Close the file (it stays for the daemon); a later record reopens it. */
  close() {
    try {
      if (this._demo.file) this._demo.file.close();
    } catch (err) {
      report(`closing ${this._demo.file.path}: ${describe(err)}`);
    }
  }

  _write(level, msg, args) {
    const { text, exc } = splitMessage(msg, args);
    return this._demo.write({ ts: Date.now() / 1000, level, msg: text, logger: this.name, exc });
  }
}

/**
 * The logger of demo `name`, writing $DVIC_LOG_DIR/dvic_log_<token>. The same name returns the
 * same logger and file, in every worker thread too (see the README); options of a later call are
 * ignored. options: { directory, maxBytes, keepDays } override DVIC_LOG_DIR, DVIC_LOG_MAX_BYTES
 * and DVIC_LOG_KEEP_DAYS.
 *
 * A bad name or option throws ConfigError (a programming error). A log that cannot be opened
 * because of the environment (DVIC_LOG_DIR missing or unwritable, a bad DVIC_LOG_MAX_BYTES, no
 * free name) does not stop the demo: one line on stderr says why, and its records are dropped.
 */
function getLogger(name, options) {
  const key = config.checkName(name);
  let demo = demos.get(key);
  if (demo !== undefined) return demo.logger;
  const opts = options || {};
  let file = null;
  try {
    file = openFile(key, opts);
  } catch (err) {
    const given = ['directory', 'maxBytes', 'keepDays'].some((k) => opts[k] !== undefined && opts[k] !== null);
    if (err instanceof config.ConfigError && given) throw err; // the program's own argument: its bug
    const reason = err instanceof config.ConfigError ? describe(err) : `cannot create a log file: ${describe(err)}`;
    report(`demo '${key}': ${reason}; its records are dropped`);
  }
  demo = new Demo(key, file);
  demos.set(key, demo);
  return demo.logger;
}

const CONSOLE_LEVELS = { log: 'INFO', info: 'INFO', debug: 'DEBUG', warn: 'WARNING', error: 'ERROR', trace: 'DEBUG' };

function asLogger(target) {
  return target instanceof Logger ? target : getLogger(target);
}

function consoleMethod(logger, method, level, echo) {
  return (...args) => {
    let rec;
    if (method === 'trace') {
      const stack = new Error('Trace').stack.split('\n').slice(2).join('\n');
      rec = { text: `Trace: ${args.length ? safeFormat(args) : ''}`, exc: stack };
    } else {
      rec = args.length ? splitMessage(args[0], args.slice(1)) : { text: '', exc: undefined };
    }
    logger._demo.write({ ts: Date.now() / 1000, level, msg: rec.text, logger: logger.name, exc: rec.exc });
    if (echo) echo[method](...args);
  };
}

function safeFormat(args) {
  try {
    return util.format(...args);
  } catch (err) {
    return `(dvic_log: console arguments could not be formatted: ${describe(err)})`;
  }
}

/**
 * A console-like object (log, info, debug, warn, error, trace) writing to demo `target` (a name
 * or a Logger). With { echo: true } every call also goes to the real console.
 */
function createConsole(target, { echo = false } = {}) {
  const logger = asLogger(target);
  const original = echo ? { ...pickConsole(console) } : null;
  const out = {};
  for (const [method, level] of Object.entries(CONSOLE_LEVELS)) out[method] = consoleMethod(logger, method, level, original);
  return out;
}

function pickConsole(c) {
  const out = {};
  for (const method of Object.keys(CONSOLE_LEVELS)) out[method] = c[method].bind(c);
  return out;
}

/**
 * Route the global console's log/info/debug/warn/error/trace to demo `target` as well (echo
 * true, the default, keeps printing them). Returns a function that restores the console.
 */
function patchConsole(target, { echo = true } = {}) {
  const logger = asLogger(target);
  const saved = {};
  for (const method of Object.keys(CONSOLE_LEVELS)) saved[method] = console[method];
  const original = echo ? pickConsole(console) : null;
  for (const [method, level] of Object.entries(CONSOLE_LEVELS)) console[method] = consoleMethod(logger, method, level, original);
  return function restoreConsole() {
    Object.assign(console, saved);
  };
}

module.exports = {
  getLogger,
  createConsole,
  patchConsole,
  Logger,
  ConfigError: config.ConfigError,
  LEVELS: format.LEVELS,
  FORMAT_VERSION: format.FORMAT_VERSION,
  FILE_PREFIX,
  VERSION,
};
