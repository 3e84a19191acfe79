'use strict';
// Encoding of dvic_log lines (docs/log-format.md): one JSON object per line, the same bytes as
// the Python library's json.dumps(ensure_ascii=False, separators=(",", ":")).

const util = require('util');

const FORMAT_VERSION = 1;
const LEVELS = Object.freeze(['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL']);
const TRUNCATION_MARK = ' [dvic_log: truncated]';

const LEVEL_ALIASES = { WARN: 'WARNING', FATAL: 'CRITICAL' };

// Characters that need more than JSON.stringify: lone surrogates (become U+FFFD so the file is
// always valid UTF-8) and the Unicode line breaks some line splitters honour (written escaped).
const NEEDS_FIXING = /[\u0085\u2028\u2029\ud800-\udfff]/;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
const LINE_BREAKS = /[\u0085\u2028\u2029]/g;
const LINE_BREAK_ESCAPES = { '\u0085': '\\u0085', '\u2028': '\\u2028', '\u2029': '\\u2029' };

/** Map a level name or a Python logging number to one of LEVELS; throws on an unknown name. */
function levelName(level) {
  if (typeof level === 'string') {
    const key = level.trim().toUpperCase();
    if (LEVELS.includes(key)) return key;
    if (LEVEL_ALIASES[key]) return LEVEL_ALIASES[key];
    throw new RangeError(`unknown dvic_log level ${JSON.stringify(level)}: use one of ${LEVELS.join(', ')} or a number`);
  }
  if (typeof level !== 'number' || Number.isNaN(level)) {
    throw new TypeError(`dvic_log level must be a number or a level name, not ${typeof level}`);
  }
  // Custom numeric levels fall to the nearest standard level below, as in Python's logging.
  if (level >= 50) return 'CRITICAL';
  if (level >= 40) return 'ERROR';
  if (level >= 30) return 'WARNING';
  if (level >= 20) return 'INFO';
  return 'DEBUG';
}

/** Turn any message value into text without ever throwing. */
function toText(value) {
  if (typeof value === 'string') return value;
  try {
    if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('utf8');
    if (value instanceof Error) return errorLine(value);
    return util.format(value); // what console.log shows for it
  } catch (err) {
    return `<unprintable ${typeof value}: ${safeName(err)}>`;
  }
}

function errorLine(err) {
  const name = typeof err.name === 'string' ? err.name : 'Error';
  const message = typeof err.message === 'string' ? err.message : '';
  return message ? `${name}: ${message}` : name;
}

function safeName(err) {
  try {
    return (err && err.name) || typeof err;
  } catch (_) {
    return 'error';
  }
}

/** A JSON string literal with the format's extra rules (no lone surrogates, escaped line breaks). */
function quote(text) {
  if (!NEEDS_FIXING.test(text)) return JSON.stringify(text);
  const whole = text.replace(LONE_SURROGATE, '\ufffd');
  return JSON.stringify(whole).replace(LINE_BREAKS, (ch) => LINE_BREAK_ESCAPES[ch]);
}

/** Python's repr() of a float: what json.dumps writes for ts and start. */
function pyFloat(x) {
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return x.toFixed(1);
  const abs = Math.abs(x);
  if (abs >= 1e16 || (abs !== 0 && abs < 1e-4)) {
    // Python writes at least two exponent digits: 1e-05, 1.5e+16.
    return x.toExponential().replace(/e([+-])(\d)$/, 'e$10$2');
  }
  return String(x);
}

/** The bytes of one record line; `ts` in Unix seconds (already rounded), the rest strings. */
function recordLine(ts, level, msg, logger, exc) {
  let line = '{"ts":' + pyFloat(ts) + ',"level":"' + level + '","msg":' + quote(msg);
  if (logger) line += ',"logger":' + quote(logger);
  if (exc) line += ',"exc":' + quote(exc);
  return Buffer.from(line + '}\n', 'utf8');
}

/** A heartbeat record: always these four fields, in this order (docs/log-format.md "Heartbeats"). */
function heartbeatLine(ts) {
  return Buffer.from('{"ts":' + pyFloat(ts) + ',"level":"DEBUG","msg":"heartbeat","heartbeat":1}\n', 'latin1');
}

/** The header line (docs/log-format.md "The header"); "rotated" only after a rotation. */
function headerLine(h, rotated) {
  let line =
    '{"dvic_log":' + FORMAT_VERSION +
    ',"token":' + quote(h.token) +
    ',"name":' + quote(h.name) +
    ',"pid":' + h.pid +
    ',"pid_start":' + (h.pidStart === null ? 'null' : String(h.pidStart)) +
    ',"exe":' + quote(h.exe) +
    ',"argv":[' + h.argv.map(quote).join(',') + ']' +
    ',"user":' + quote(h.user) +
    ',"host":' + quote(h.host) +
    ',"start":' + pyFloat(h.start);
  if (rotated) line += ',"rotated":' + rotated;
  return Buffer.from(line + '}\n', 'utf8');
}

// ----- cutting a record under the size cap (docs/log-format.md "Size of one record") -----------

/** Bytes one code point takes inside a line: JSON escapes, escaped line breaks, U+FFFD for a lone surrogate. */
function charSize(c, pair) {
  if (pair) return 4;
  if (c < 0x80) {
    if (c === 0x22 || c === 0x5c || c === 0x0a || c === 0x0d || c === 0x09 || c === 0x08 || c === 0x0c) return 2;
    return c < 0x20 ? 6 : 1;
  }
  if (c === 0x85 || c === 0x2028 || c === 0x2029) return 6;
  return c < 0x800 ? 2 : 3; // a lone surrogate is written as U+FFFD: 3 bytes
}

function isPairAt(text, i) {
  const c = text.charCodeAt(i);
  return c >= 0xd800 && c <= 0xdbff && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00;
}

/** Bytes text takes inside a line (its encoded size), without the quotes. */
function encodedSize(text) {
  let n = 0;
  for (let i = 0; i < text.length; i += 1) {
    const pair = isPairAt(text, i);
    n += charSize(text.charCodeAt(i), pair);
    if (pair) i += 1;
  }
  return n;
}

/**
 * The longest prefix of whole characters of text whose encoded size is at most budget bytes.
 * Sizes add up character by character, so one pass finds what the Python library's binary
 * search over prefixes finds.
 */
function cutEncoded(text, budget) {
  let n = 0;
  let i = 0;
  while (i < text.length) {
    const pair = isPairAt(text, i);
    const size = charSize(text.charCodeAt(i), pair);
    if (n + size > budget) break;
    n += size;
    i += pair ? 2 : 1;
  }
  return text.slice(0, i);
}

/** Split room bytes between fields: small fields keep all they need, big ones share the rest. */
function share(room, sizes) {
  const shares = {};
  const pending = Object.keys(sizes).sort((a, b) => sizes[a] - sizes[b]);
  while (pending.length) {
    const fair = Math.floor(room / pending.length);
    const key = pending.shift();
    shares[key] = Math.min(sizes[key], Math.max(0, fair));
    room -= shares[key];
  }
  return shares;
}

/**
 * Encode a record, shortening msg, exc and logger so the line is at most maxLine bytes; the cut
 * text ends with TRUNCATION_MARK, and the record is still written.
 */
function fitRecord(rec, maxLine) {
  const encode = (r) => recordLine(r.ts, r.level, r.msg, r.logger, r.exc);
  let line = encode(rec);
  if (line.length <= maxLine) return line;
  const fields = ['msg', 'exc', 'logger'].filter((key) => rec[key]);
  if (!fields.length) return line;
  const out = { ...rec };
  for (const key of fields) out[key] = TRUNCATION_MARK;
  const room = maxLine - encode(out).length;
  const sizes = {};
  for (const key of fields) sizes[key] = encodedSize(rec[key]);
  const shares = share(room, sizes);
  for (const key of fields) {
    let text = rec[key];
    if (shares[key] < sizes[key]) text = cutEncoded(text, shares[key]) + TRUNCATION_MARK;
    out[key] = text;
  }
  line = encode(out);
  // Only when even the marks do not fit (a tiny cap, a long logger name) is the line still too
  // long: then the longest field is trimmed by the overflow, as the Python library does.
  for (let i = 0; i < 16; i += 1) {
    const overflow = line.length - maxLine;
    if (overflow <= 0) return line;
    const key = fields.reduce((best, k) => (pyLength(out[k]) > pyLength(out[best]) ? k : best));
    const text = out[key].endsWith(TRUNCATION_MARK) ? out[key].slice(0, -TRUNCATION_MARK.length) : out[key];
    out[key] = cutEncoded(text, encodedSize(text) - overflow) + TRUNCATION_MARK;
    line = encode(out);
  }
  return line;
}

/** len() of a Python str: code points, not UTF-16 units. */
function pyLength(text) {
  let n = text.length;
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n -= 1;
        i += 1;
      }
    }
  }
  return n;
}

module.exports = {
  FORMAT_VERSION,
  LEVELS,
  TRUNCATION_MARK,
  levelName,
  toText,
  quote,
  pyFloat,
  pyLength,
  recordLine,
  heartbeatLine,
  headerLine,
  fitRecord,
};
