'use strict';
// Records/s of lib/js (dvic-log) writing 100-byte messages (bench/dvic_log_js_csharp.py runs it).
// Usage: node dvic_log_js_bench.js RECORDS THREADS   (DVIC_LOG_DIR set). Prints {"records": N, "seconds": S}.
// With THREADS > 1 the records are written by that many worker threads sharing the demo's file.

const path = require('path');
const { Worker, isMainThread, workerData } = require('worker_threads');
const dvicLog = require(path.join(__dirname, '..', 'lib', 'js'));

const MESSAGE = ('bench record with a plain ASCII message of exactly one hundred bytes: ' + 'x'.repeat(100)).slice(0, 100);

function write(count) {
  const log = dvicLog.getLogger('bench-js');
  for (let i = 0; i < count; i += 1) log.info(MESSAGE);
}

if (isMainThread) {
  const records = Number(process.argv[2] || 1000000);
  const threads = Number(process.argv[3] || 1);
  const perThread = Math.floor(records / threads);
  dvicLog.getLogger('bench-js'); // opened before the workers start, so they share it
  if (threads === 1) {
    write(2000); // let the JIT compile the write path first
    const start = process.hrtime.bigint();
    write(perThread);
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    process.stdout.write(`${JSON.stringify({ records: perThread, seconds })}\n`);
  } else {
    const go = new Int32Array(new SharedArrayBuffer(8));
    const workers = Array.from({ length: threads }, () => new Worker(__filename, { workerData: { perThread, go } }));
    // Start the clock once every worker is loaded and warmed up (go[1] counts them).
    const wait = () => {
      if (Atomics.load(go, 1) < threads) return setTimeout(wait, 5);
      const start = process.hrtime.bigint();
      Atomics.store(go, 0, 1);
      Atomics.notify(go, 0);
      Promise.all(workers.map((w) => new Promise((resolve) => w.on('exit', resolve)))).then(() => {
        const seconds = Number(process.hrtime.bigint() - start) / 1e9;
        process.stdout.write(`${JSON.stringify({ records: perThread * threads, seconds })}\n`);
      });
      return undefined;
    };
    wait();
  }
} else {
  const { perThread, go } = workerData;
  write(2000);
  Atomics.add(go, 1, 1);
  Atomics.wait(go, 0, 0);
  write(perThread);
}
