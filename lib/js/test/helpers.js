'use strict';
// Shared by the unit tests: scratch directories, child processes, reading files back strictly.

const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const PACKAGE = path.resolve(__dirname, '..');
const LIVE_NAME = /^dvic_log_[0-9a-f]{16}$/;

function scratchDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dvic-log-js-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Run `code` in a fresh node process that has `dvicLog` loaded; returns { status, stdout, stderr }. */
function runNode(code, env = {}, extraArgs = []) {
  const prelude = `const dvicLog = require(${JSON.stringify(PACKAGE)});\n`;
  const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DVIC_LOG_')));
  const done = spawnSync(process.execPath, [...extraArgs, '-e', prelude + code], {
    env: { ...cleanEnv, DVIC_LOG_KEEP_DAYS: '0', ...env },
    encoding: 'utf8',
    timeout: 60000,
  });
  if (done.error) throw done.error;
  return done;
}

function liveFiles(dir) {
  return fs.readdirSync(dir).filter((n) => LIVE_NAME.test(n)).sort().map((n) => path.join(dir, n));
}

/** Strictly parse a file: valid UTF-8, ends with a newline, one JSON object per line. */
function parseFile(file) {
  const text = new TextDecoder('utf-8', { fatal: true }).decode(fs.readFileSync(file));
  if (text && !text.endsWith('\n')) throw new Error(`${file} ends in a partial line`);
  return text.split('\n').slice(0, -1).map((line) => JSON.parse(line));
}

function readLog(file) {
  const [header, ...records] = parseFile(file);
  return { header, records };
}

module.exports = { PACKAGE, scratchDir, runNode, liveFiles, parseFile, readLog };
