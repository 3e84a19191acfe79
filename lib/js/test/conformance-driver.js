'use strict';
// Conformance driver of the JavaScript library (tests/conformance/README.md):
//   node lib/js/test/conformance-driver.js SCRIPT.json
// Runs the script's ops through the demo-facing API: getLogger(), log.info() ..., log.child()
// for named loggers, log.heartbeat(), log.close(). Raw bytes (msg_hex) are passed as a Buffer;
// an explicit traceback (exc) goes through log.write(level, msg, { exc }). The threads op runs
// worker threads, which share the demo's file. JavaScript has no fork: that op is skipped.

const fs = require('fs');
const path = require('path');
const { Worker, isMainThread, workerData } = require('worker_threads');

// DVIC_LOG_JS_PACKAGE lets the packaging test run this driver against an installed tarball.
const dvicLog = require(process.env.DVIC_LOG_JS_PACKAGE || path.join(__dirname, '..'));

const CAPABILITIES = new Set(['bytes', 'surrogates', 'threads']);

function template(text, values) {
  let out = text;
  for (const [key, value] of Object.entries(values)) out = out.split(`{${key}}`).join(String(value));
  return out;
}

function loggerFor(log, op) {
  if (!op.logger) return log;
  const prefix = `${log.demoName}.`;
  if (!op.logger.startsWith(prefix)) throw new Error(`logger ${JSON.stringify(op.logger)} is not under ${log.demoName}`);
  return log.child(op.logger.slice(prefix.length));
}

const METHODS = { DEBUG: 'debug', INFO: 'info', WARNING: 'warning', ERROR: 'error', CRITICAL: 'critical' };

function write(log, op) {
  const target = loggerFor(log, op);
  const msg = op.msg_hex !== undefined ? Buffer.from(op.msg_hex, 'hex') : op.msg.repeat(op.repeat || 1);
  if (op.exc !== undefined) target.write(op.level, msg, { exc: op.exc });
  else target[METHODS[op.level]](msg);
}

function runThreads(op, name) {
  const ready = new Int32Array(new SharedArrayBuffer(4));
  const workers = [];
  for (let t = 0; t < op.threads; t += 1) {
    workers.push(new Worker(__filename, { workerData: { t, name, op, ready, total: op.threads } }));
  }
  return Promise.all(
    workers.map((w) => new Promise((resolve, reject) => {
      w.on('error', reject);
      w.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`worker exited with ${code}`))));
    })),
  );
}

function workerMain() {
  const { t, name, op, ready, total } = workerData;
  const log = dvicLog.getLogger(name);
  // Start together: every worker waits until all of them have their logger.
  Atomics.add(ready, 0, 1);
  Atomics.notify(ready, 0);
  for (let seen = Atomics.load(ready, 0); seen < total; seen = Atomics.load(ready, 0)) Atomics.wait(ready, 0, seen, 1000);
  for (let i = 0; i < op.count; i += 1) log.info(template(op.msg, { t, i }));
}

async function run(ops) {
  const logs = new Map();
  const skipped = [];
  for (const [index, op] of ops.entries()) {
    if (op.requires && !CAPABILITIES.has(op.requires)) {
      skipped.push(index);
      continue;
    }
    const log = logs.get(op.log);
    switch (op.op) {
      case 'open':
        logs.set(op.log, dvicLog.getLogger(op.name));
        break;
      case 'write':
        write(log, op);
        break;
      case 'write_many':
        for (let i = 0; i < op.count; i += 1) write(log, { ...op, msg: template(op.msg, { i }) });
        break;
      case 'heartbeat':
        log.heartbeat();
        break;
      case 'threads':
        await runThreads(op, log.demoName);
        break;
      case 'close':
        log.close();
        break;
      default:
        break; // unknown ops and keys are ignored (README)
    }
  }
  return skipped;
}

async function main() {
  let ops;
  try {
    const script = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
    ops = script.ops;
    if (!Array.isArray(ops)) throw new Error('no "ops" list');
  } catch (err) {
    process.stderr.write(`conformance-driver.js: cannot read the script: ${err.message}\n`);
    process.exit(2);
  }
  const skipped = await run(ops);
  process.stdout.write(`${JSON.stringify({ pid: process.pid, skipped })}\n`);
}

if (isMainThread) {
  main().catch((err) => {
    process.stderr.write(`conformance-driver.js: ${err.stack}\n`);
    process.exit(1);
  });
} else {
  workerMain();
}
