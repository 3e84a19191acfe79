// Type declarations of dvic-log (the DVIC demo logging library for Node.js).

/** The only level names a record carries. */
export type LevelName = 'DEBUG' | 'INFO' | 'WARNING' | 'ERROR' | 'CRITICAL';

export interface LoggerOptions {
  /** Directory of the file (default $DVIC_LOG_DIR, else /tmp). Must exist. */
  directory?: string;
  /** Cap per file in bytes, at least 4096 (default $DVIC_LOG_MAX_BYTES, else 8 MiB). */
  maxBytes?: number;
  /** Retention of exited demos' files in days, 0 keeps them (default $DVIC_LOG_KEEP_DAYS, else 7). */
  keepDays?: number;
}

export declare class Logger {
  /** The "logger" field of this logger's records: the demo name, or "<demo>.<child>". */
  readonly name: string;
  /** The demo name given to getLogger (the header's "name"). */
  readonly demoName: string;
  /** Full path of the live file, or null when the log could not be opened. */
  readonly path: string | null;
  /** The 16-hex-character token of the file, or null. */
  readonly token: string | null;

  /**
   * One record. Several arguments are formatted like console.log (util.format); a trailing
   * Error puts its stack in the record's "exc". Returns whether the record was written; never
   * throws for a logging failure (reported once on stderr).
   */
  debug(msg: unknown, ...args: unknown[]): boolean;
  info(msg: unknown, ...args: unknown[]): boolean;
  warning(msg: unknown, ...args: unknown[]): boolean;
  /** Same as warning(). */
  warn(msg: unknown, ...args: unknown[]): boolean;
  error(msg: unknown, ...args: unknown[]): boolean;
  critical(msg: unknown, ...args: unknown[]): boolean;
  /** A level name (also WARN, FATAL) or a Python logging number (25 -> INFO). Throws on an unknown name. */
  log(level: LevelName | 'WARN' | 'FATAL' | number, msg: unknown, ...args: unknown[]): boolean;
  /** One record with its fields as they are: a Buffer message is decoded as UTF-8 (invalid bytes -> U+FFFD); exc is traceback text. */
  write(level: LevelName | 'WARN' | 'FATAL' | number, msg: unknown, options?: { exc?: string }): boolean;
  /** A heartbeat record, at most one per second per file; returns whether one was written. */
  heartbeat(): boolean;
  /** A logger on the same file whose records say logger "<name>.<suffix>". */
  child(suffix: string): Logger;
  /** Close the file (it stays for the daemon); a later record reopens it. */
  close(): void;
}

/** A bad demo name or option (a programming error). */
export declare class ConfigError extends Error {}

/**
 * The logger of demo `name` (1-200 characters, one line), writing $DVIC_LOG_DIR/dvic_log_<token>.
 * The same name returns the same logger and file (worker threads included). Throws ConfigError
 * for a bad name or option; an unusable environment is reported once on stderr instead.
 */
export declare function getLogger(name: string, options?: LoggerOptions): Logger;

export interface ConsoleLike {
  log(...args: unknown[]): void;
  info(...args: unknown[]): void;
  debug(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
  trace(...args: unknown[]): void;
}

/** A console-like object writing to a demo log (log/info INFO, debug/trace DEBUG, warn WARNING, error ERROR). */
export declare function createConsole(target: string | Logger, options?: { echo?: boolean }): ConsoleLike;

/** Route the global console to a demo log too (echo: true by default); returns a function that restores it. */
export declare function patchConsole(target: string | Logger, options?: { echo?: boolean }): () => void;

export declare const LEVELS: readonly LevelName[];
export declare const FORMAT_VERSION: 1;
export declare const FILE_PREFIX: 'dvic_log_';
export declare const VERSION: string;

declare const dvicLog: {
  getLogger: typeof getLogger;
  createConsole: typeof createConsole;
  patchConsole: typeof patchConsole;
  Logger: typeof Logger;
  ConfigError: typeof ConfigError;
  LEVELS: typeof LEVELS;
  FORMAT_VERSION: typeof FORMAT_VERSION;
  FILE_PREFIX: typeof FILE_PREFIX;
  VERSION: typeof VERSION;
};
export default dvicLog;
