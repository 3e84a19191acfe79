'use strict';
// Settings: the directory, the size cap and retention, from options or the environment, checked
// exactly as the Python library checks them (docs/log-format.md "Configuration").

const fs = require('fs');

const DEFAULT_DIR = '/tmp';
const DEFAULT_MAX_BYTES = 8 * 1024 * 1024;
const MIN_MAX_BYTES = 4096;
const DEFAULT_KEEP_DAYS = 7;
const ENV_DIR = 'DVIC_LOG_DIR';
const ENV_MAX_BYTES = 'DVIC_LOG_MAX_BYTES';
const ENV_KEEP_DAYS = 'DVIC_LOG_KEEP_DAYS';
const MAX_NAME_CHARS = 200;

// Python's str.strip() whitespace (str.isspace), which differs from String.prototype.trim.
const PY_SPACE = '\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const STRIP = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, 'g');
// int() and float() of Python accept surrounding spaces, a sign and "_" between digits.
const DIGITS = '\\d+(?:_\\d+)*';
const PY_INT = new RegExp(`^[+-]?${DIGITS}$`);
const PY_FLOAT = new RegExp(`^[+-]?(?:${DIGITS}(?:\\.(?:${DIGITS})?)?|\\.${DIGITS})(?:[eE][+-]?${DIGITS})?$`);
const PY_FLOAT_WORD = /^[+-]?(?:inf|infinity|nan)$/i;

/** A setting the library cannot use (an option or environment variable). */
class ConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ConfigError';
  }
}

function envValue(env, key) {
  const value = env[key];
  return typeof value === 'string' ? value : '';
}

/** The directory to write in: the option, else $DVIC_LOG_DIR, else /tmp. It must exist. */
function resolveDir(directory, env = process.env) {
  let source = 'directory option';
  if (directory === undefined || directory === null) {
    directory = envValue(env, ENV_DIR) || DEFAULT_DIR;
    source = envValue(env, ENV_DIR) ? ENV_DIR : 'default directory';
  }
  directory = String(directory);
  let isDir = false;
  try {
    isDir = fs.statSync(directory).isDirectory();
  } catch (_) {
    isDir = false;
  }
  if (!isDir) throw new ConfigError(`dvic_log: ${source} '${directory}' is not an existing directory`);
  return directory;
}

/**
 * A setting given as an option or in the environment: the option when given, else the environment
 * variable read by `parse` (which throws on text it cannot read), else undefined: the default.
 * `source` says which one it was, for the messages.
 */
function optionOrEnv(option, optionName, env, envName, parse) {
  if (option !== undefined && option !== null) return { value: option, source: optionName };
  const raw = envValue(env, envName).replace(STRIP, '');
  return raw ? { value: parse(raw), source: envName } : undefined;
}

function parseWholeBytes(raw) {
  if (!PY_INT.test(raw)) throw new ConfigError(`dvic_log: ${ENV_MAX_BYTES}='${raw}' is not a whole number of bytes`);
  return Number(raw.replace(/_/g, ''));
}

function parseDays(raw) {
  if (!PY_FLOAT.test(raw) && !PY_FLOAT_WORD.test(raw)) throw new ConfigError(`dvic_log: ${ENV_KEEP_DAYS}='${raw}' is not a number of days`);
  const lower = raw.toLowerCase().replace(/^[+-]/, '');
  if (lower.startsWith('inf')) return raw.startsWith('-') ? -Infinity : Infinity;
  return lower === 'nan' ? NaN : Number(raw.replace(/_/g, ''));
}

/** The per-file cap: the option, else $DVIC_LOG_MAX_BYTES, else 8 MiB; at least 4096. */
function resolveMaxBytes(maxBytes, env = process.env) {
  const given = optionOrEnv(maxBytes, 'maxBytes', env, ENV_MAX_BYTES, parseWholeBytes);
  if (!given) return DEFAULT_MAX_BYTES;
  const { value, source } = given;
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new ConfigError(`dvic_log: ${source} must be a whole number, not ${typeof value}`);
  }
  if (value < MIN_MAX_BYTES) {
    throw new ConfigError(`dvic_log: ${source}=${value} is below the minimum of ${MIN_MAX_BYTES} bytes`);
  }
  return value;
}

/** Retention in seconds: the option, else $DVIC_LOG_KEEP_DAYS, else 7 days; 0 keeps forever. */
function resolveKeepSeconds(keepDays, env = process.env) {
  const given = optionOrEnv(keepDays, 'keepDays', env, ENV_KEEP_DAYS, parseDays);
  if (!given) return DEFAULT_KEEP_DAYS * 86400;
  const { value, source } = given;
  if (typeof value !== 'number') {
    throw new ConfigError(`dvic_log: ${source} must be a number of days, not ${typeof value}`);
  }
  if (!(value >= 0) || value === Infinity) {
    throw new ConfigError(`dvic_log: ${source}=${value} must be a finite number of days >= 0`);
  }
  return value * 86400;
}

/** Validate a demo name: the label operators see, so short, printable, one line. */
function checkName(name) {
  if (typeof name !== 'string') throw new ConfigError(`dvic_log: the demo name must be a string, not ${typeof name}`);
  const stripped = name.replace(STRIP, '');
  if (!stripped) throw new ConfigError('dvic_log: the demo name must not be empty');
  if (stripped.length > MAX_NAME_CHARS && [...stripped].length > MAX_NAME_CHARS) {
    throw new ConfigError(`dvic_log: the demo name is longer than ${MAX_NAME_CHARS} characters`);
  }
  if (/[\r\n\0]/.test(stripped)) throw new ConfigError('dvic_log: the demo name must be one line without NUL characters');
  return stripped;
}

module.exports = {
  ConfigError,
  DEFAULT_DIR,
  DEFAULT_MAX_BYTES,
  MIN_MAX_BYTES,
  DEFAULT_KEEP_DAYS,
  ENV_DIR,
  ENV_MAX_BYTES,
  ENV_KEEP_DAYS,
  MAX_NAME_CHARS,
  resolveDir,
  resolveMaxBytes,
  resolveKeepSeconds,
  checkName,
};
