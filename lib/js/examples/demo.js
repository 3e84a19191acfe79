#!/usr/bin/env node
// A small DVIC demo in Node.js: it logs what it does at every level and sends a heartbeat from
// its main loop, so the console shows its lines and that it is alive.
//
//   node demo.js [name] [--readings N]     (Ctrl-C or SIGTERM stops it cleanly)
//
// In your own project: npm install /path/to/dvic-log-0.1.0.tgz, then require('dvic-log').

'use strict';

let dvicLog;
try {
  dvicLog = require('dvic-log');
} catch (_) {
  dvicLog = require('..'); // run from a checkout: lib/js/examples/demo.js
}

const args = process.argv.slice(2);
const name = args.find((a) => !a.startsWith('--')) || 'node-demo';
const readingsArg = args.indexOf('--readings');
const readings = readingsArg >= 0 ? Number(args[readingsArg + 1]) : Infinity;

const log = dvicLog.getLogger(name);
const sensor = log.child('sensor');
dvicLog.patchConsole(log); // console.log & co. also land in the log (and still print)
process.on('uncaughtExceptionMonitor', (err) => log.critical('crashed:', err));

log.info(`started, pid ${process.pid}, logging to ${log.path}`);
let n = 0;
const loop = setInterval(() => {
  log.heartbeat(); // at most one record a second, however often it is called
  n += 1;
  if (n % 4 === 0) {
    const value = 20 + Math.sin(n / 10) * 5;
    sensor.debug(`raw sample ${n}`);
    console.log(`reading ${n / 4}: ${value.toFixed(2)} °C`);
    if (value > 23) sensor.warning(`temperature high: ${value.toFixed(2)} °C`);
  }
  if (n % 40 === 12) log.error('simulated glitch', new Error('sensor timeout'));
  if (n / 4 >= readings) stop('done');
}, 250);

function stop(why) {
  clearInterval(loop);
  log.info(`stopping (${why})`);
  process.exit(0);
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
