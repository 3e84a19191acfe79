'use strict';
// Unit tests of dvic-log (node --test): every test writes into its own scratch directory, most in
// a fresh node process, since a logger belongs to a process.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { PACKAGE, scratchDir, runNode, liveFiles, parseFile, readLog } = require('./helpers');

test('the header describes the process, the file is 0644 whatever the umask', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `process.umask(0o077);
     const log = dvicLog.getLogger('robot-arm');
     console.log(JSON.stringify({ path: log.path, token: log.token, argv: process.argv.slice(1), pid: process.pid,
       stat: require('fs').readFileSync('/proc/self/stat', 'latin1') }));`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(done.status, 0, done.stderr);
  const out = JSON.parse(done.stdout);
  assert.match(out.token, /^[0-9a-f]{16}$/);
  assert.equal(out.path, path.join(dir, `dvic_log_${out.token}`));
  assert.equal(fs.statSync(out.path).mode & 0o777, 0o644);
  const { header, records } = readLog(out.path);
  assert.deepEqual(records, []);
  const pidStart = Number(out.stat.slice(out.stat.lastIndexOf(')') + 1).trim().split(/\s+/)[19]);
  assert.deepEqual(Object.keys(header), ['dvic_log', 'token', 'name', 'pid', 'pid_start', 'exe', 'argv', 'user', 'host', 'start']);
  assert.equal(header.dvic_log, 1);
  assert.equal(header.token, out.token);
  assert.equal(header.name, 'robot-arm');
  assert.equal(header.pid, out.pid);
  assert.equal(header.pid_start, pidStart);
  assert.equal(header.exe, process.execPath);
  assert.deepEqual(header.argv, out.argv);
  assert.equal(header.user, os.userInfo().username);
  assert.equal(header.host, os.hostname());
  assert.ok(Math.abs(header.start - Date.now() / 1000) < 60);
});

test('records carry level, message, logger and traceback', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `const log = dvicLog.getLogger('demo');
     log.debug('d'); log.info('i'); log.warning('w'); log.warn('w2'); log.error('e'); log.critical('c');
     log.log(25, 'custom level'); log.log('fatal', 'f');
     log.child('axis').info('from a child');
     log.info('x=%d y=%s', 5, 'z');
     log.error('failed:', new TypeError('boom'));
     log.info({ a: [1, 2] });
     log.info(Buffer.from([0x61, 0xff, 0x62]));
     log.write('ERROR', 'explicit', { exc: 'Traceback\\n  here' });`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(done.status, 0, done.stderr);
  const { records } = readLog(liveFiles(dir)[0]);
  const brief = records.map((r) => [r.level, r.msg, r.logger]);
  assert.deepEqual(brief, [
    ['DEBUG', 'd', 'demo'], ['INFO', 'i', 'demo'], ['WARNING', 'w', 'demo'], ['WARNING', 'w2', 'demo'],
    ['ERROR', 'e', 'demo'], ['CRITICAL', 'c', 'demo'], ['INFO', 'custom level', 'demo'], ['CRITICAL', 'f', 'demo'],
    ['INFO', 'from a child', 'demo.axis'], ['INFO', 'x=5 y=z', 'demo'], ['ERROR', 'failed: TypeError: boom', 'demo'],
    ['INFO', '{ a: [ 1, 2 ] }', 'demo'], ['INFO', 'a\ufffdb', 'demo'], ['ERROR', 'explicit', 'demo'],
  ]);
  assert.match(records[10].exc, /^TypeError: boom\n {4}at /);
  assert.equal(records[13].exc, 'Traceback\n  here');
  for (const r of records) {
    assert.equal(typeof r.ts, 'number');
    assert.equal(Math.round(r.ts * 1000), r.ts * 1000);
  }
});

test('one name, one file; two names, two files', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `const a = dvicLog.getLogger('alpha'); const again = dvicLog.getLogger(' alpha ');
     const b = dvicLog.getLogger('beta');
     a.info('1'); again.info('2'); b.info('3');
     console.log(a === again, a.path === again.path, a.path !== b.path);`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(done.stdout.trim(), 'true true true', done.stderr);
  const byName = Object.fromEntries(liveFiles(dir).map((f) => { const l = readLog(f); return [l.header.name, l.records.map((r) => r.msg)]; }));
  assert.deepEqual(byName, { alpha: ['1', '2'], beta: ['3'] });
});

test('a bad name or option is the caller\'s error; a bad environment is one stderr line', (t) => {
  const dir = scratchDir(t);
  const bad = runNode(
    `for (const name of ['', '   ', 'a\\nb', 'nul\\0', 'x'.repeat(201), 42]) {
       try { dvicLog.getLogger(name); console.log('accepted', JSON.stringify(name)); }
       catch (err) { console.log(err.name, err instanceof dvicLog.ConfigError); }
     }
     try { dvicLog.getLogger('opt', { maxBytes: 10 }); } catch (err) { console.log(err.message); }
     try { dvicLog.getLogger('opt2', { directory: '/nonexistent/dir' }); } catch (err) { console.log(err.message); }`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(bad.status, 0, bad.stderr);
  assert.deepEqual(bad.stdout.trim().split('\n'), [
    ...Array(6).fill('ConfigError true'),
    'dvic_log: maxBytes=10 is below the minimum of 4096 bytes',
    "dvic_log: directory option '/nonexistent/dir' is not an existing directory",
  ]);
  assert.equal(bad.stderr, '');
  for (const [env, want] of [
    [{ DVIC_LOG_DIR: path.join(dir, 'missing') }, /^dvic_log: demo 'x': DVIC_LOG_DIR '.*missing' is not an existing directory; its records are dropped\n$/],
    [{ DVIC_LOG_DIR: dir, DVIC_LOG_MAX_BYTES: 'lots' }, /^dvic_log: demo 'x': DVIC_LOG_MAX_BYTES='lots' is not a whole number of bytes; its records are dropped\n$/],
  ]) {
    const done = runNode(
      `const log = dvicLog.getLogger('x');
       for (let i = 0; i < 100; i++) log.info('r' + i);
       console.log(log.heartbeat(), log.path);`,
      env,
    );
    assert.equal(done.status, 0);
    assert.equal(done.stdout, 'false null\n');
    assert.match(done.stderr, want);
  }
});

test('rotation keeps each file under the cap and every record of the last two files', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `const log = dvicLog.getLogger('rotating');
     for (let i = 0; i < 400; i++) log.info('record ' + String(i).padStart(4, '0') + ' ' + 'x'.repeat(40));
     console.log(log.path);`,
    { DVIC_LOG_DIR: dir, DVIC_LOG_MAX_BYTES: '4096' },
  );
  assert.equal(done.status, 0, done.stderr);
  const live = done.stdout.trim();
  assert.deepEqual(fs.readdirSync(dir).sort(), [path.basename(live), `${path.basename(live)}.1`]);
  const older = readLog(`${live}.1`);
  const newer = readLog(live);
  assert.ok(fs.statSync(live).size <= 4096 && fs.statSync(`${live}.1`).size <= 4096);
  assert.equal(newer.header.rotated, older.header.rotated + 1);
  assert.equal(newer.header.token, older.header.token);
  assert.equal(newer.header.start, older.header.start);
  const numbers = [...older.records, ...newer.records].map((r) => Number(r.msg.slice(7, 11)));
  assert.equal(numbers[numbers.length - 1], 399);
  numbers.forEach((n, k) => assert.equal(n, numbers[0] + k));
});

test('a record bigger than the cap is cut and marked, not dropped', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `const log = dvicLog.getLogger('big');
     log.info('é'.repeat(10000)); log.info('after');`,
    { DVIC_LOG_DIR: dir, DVIC_LOG_MAX_BYTES: '4096' },
  );
  assert.equal(done.status, 0, done.stderr);
  const [file] = liveFiles(dir);
  const all = [...readLog(`${file}.1`).records, ...readLog(file).records];
  assert.equal(all.length, 2);
  assert.match(all[0].msg, /^é+ \[dvic_log: truncated\]$/);
  assert.equal(all[1].msg, 'after');
  assert.ok(fs.statSync(`${file}.1`).size <= 4096);
});

test('a file deleted under the writer is created again at the same path', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `const fs = require('fs');
     const log = dvicLog.getLogger('vanishing');
     log.info('before');
     const file = log.path;
     fs.unlinkSync(file);
     const deadline = Date.now() + 10000;
     for (let i = 0; !fs.existsSync(file) && Date.now() < deadline; i++) log.info('while gone ' + i);
     log.info('after');
     console.log(file === log.path);`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(done.stdout.trim(), 'true', done.stderr);
  const { header, records } = readLog(liveFiles(dir)[0]);
  assert.equal(header.rotated, 1);
  assert.equal(records[records.length - 1].msg, 'after');
});

test('worker threads that log under the same name share the file and never split a line', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `const { Worker } = require('worker_threads');
     const log = dvicLog.getLogger('pool');
     log.info('main first');
     const code = "const log = require(" + JSON.stringify(${JSON.stringify(PACKAGE)}) + ").getLogger('pool');" +
       "const { workerData: t } = require('worker_threads');" +
       "for (let i = 0; i < 500; i++) log.info('worker ' + t + ' record ' + i + ' ' + 'y'.repeat(30));";
     const workers = [0, 1, 2, 3].map((t) => new Worker(code, { eval: true, workerData: t }));
     for (let i = 0; i < 500; i++) log.info('main record ' + i);
     Promise.all(workers.map((w) => new Promise((r) => w.on('exit', r)))).then(() => {
       log.info('main last'); console.log(log.path);
     });`,
    { DVIC_LOG_DIR: dir, DVIC_LOG_MAX_BYTES: '200000' }, // ~250 KB of records: one rotation
  );
  assert.equal(done.status, 0, done.stderr);
  const live = done.stdout.trim();
  assert.equal(liveFiles(dir).length, 1);
  const older = readLog(`${live}.1`);
  const newer = readLog(live);
  assert.equal(older.header.rotated, undefined);
  assert.equal(newer.header.rotated, 1);
  const msgs = [...older.records, ...newer.records].map((r) => r.msg);
  assert.equal(msgs.length, 2502);
  assert.equal(new Set(msgs).size, 2502);
  assert.equal(msgs[0], 'main first');
  assert.equal(msgs[msgs.length - 1], 'main last');
  for (const t of [0, 1, 2, 3]) {
    const own = msgs.filter((m) => m.startsWith(`worker ${t} `)).map((m) => Number(m.split(' ')[3]));
    assert.deepEqual(own, Array.from({ length: 500 }, (_, i) => i)); // each thread's records in order
  }
});

test('records logged from an exit handler and right before a kill are in the file', (t) => {
  const dir = scratchDir(t);
  const exited = runNode(
    `const log = dvicLog.getLogger('exiting');
     process.on('exit', (code) => log.warning('exit handler, code ' + code));
     log.info('bye'); process.exit(3);`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(exited.status, 3);
  const killed = runNode(
    `const log = dvicLog.getLogger('killed');
     for (let i = 0; i < 1000; i++) log.info('line ' + i);
     process.kill(process.pid, 'SIGKILL');`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(killed.signal, 'SIGKILL');
  const byName = Object.fromEntries(liveFiles(dir).map((f) => { const l = readLog(f); return [l.header.name, l.records]; }));
  assert.deepEqual(byName.exiting.map((r) => r.msg), ['bye', 'exit handler, code 3']);
  assert.equal(byName.killed.length, 1000);
});

test('console adapters map methods to levels; patchConsole echoes and restores', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `const c = dvicLog.createConsole('console-demo');
     c.log('a %s', 'b'); c.info('i'); c.debug('d'); c.warn('w'); c.error('e', new Error('oops')); c.trace('t');
     const restore = dvicLog.patchConsole('console-demo');
     console.log('printed and logged'); console.error('to stderr too');
     restore();
     console.log('only printed');`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(done.status, 0, done.stderr);
  assert.equal(done.stdout, 'printed and logged\nonly printed\n');
  assert.equal(done.stderr, 'to stderr too\n');
  const { records } = readLog(liveFiles(dir)[0]);
  assert.deepEqual(records.map((r) => [r.level, r.msg]), [
    ['INFO', 'a b'], ['INFO', 'i'], ['DEBUG', 'd'], ['WARNING', 'w'], ['ERROR', 'e Error: oops'], ['DEBUG', 'Trace: t'],
    ['INFO', 'printed and logged'], ['ERROR', 'to stderr too'],
  ]);
  assert.match(records[4].exc, /^Error: oops\n/);
  assert.match(records[5].exc, /^ {4}at /);
});

test('a heartbeat is written at most once a second, in the documented shape', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `const log = dvicLog.getLogger('beating');
     const first = log.heartbeat(); const second = log.heartbeat();
     const start = Date.now(); let third = false;
     while (!third && Date.now() - start < 5000) third = log.heartbeat();
     console.log(first, second, third, Date.now() - start >= 990);`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(done.stdout.trim(), 'true false true true', done.stderr);
  const lines = fs.readFileSync(liveFiles(dir)[0], 'utf8').split('\n').slice(1, -1);
  assert.equal(lines.length, 2);
  for (const line of lines) assert.match(line, /^\{"ts":\d+\.\d{1,3},"level":"DEBUG","msg":"heartbeat","heartbeat":1\}$/);
});

test('close() keeps the file; a later record reopens the same file', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `const log = dvicLog.getLogger('reopen');
     log.info('one'); const before = log.path; log.close(); log.info('two'); log.heartbeat();
     console.log(before === log.path);`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(done.stdout.trim(), 'true', done.stderr);
  const files = liveFiles(dir);
  assert.equal(files.length, 1);
  assert.deepEqual(parseFile(files[0]).slice(1).map((r) => r.msg), ['one', 'two', 'heartbeat']);
});

test('an existing name, a planted symlink included, is never opened', (t) => {
  const dir = scratchDir(t);
  const { createWithHeader } = require('../src/writer');
  const target = path.join(dir, 'victim');
  fs.writeFileSync(target, 'precious\n');
  const link = path.join(dir, 'dvic_log_0123456789abcdef');
  fs.symlinkSync(target, link);
  assert.throws(() => createWithHeader(link, Buffer.from('{}\n')), { code: 'EEXIST' });
  assert.equal(fs.readFileSync(target, 'utf8'), 'precious\n');
  assert.equal(fs.lstatSync(link).isSymbolicLink(), true);
});

test('retention removes an exited writer\'s old file, keeps fresh and live ones', (t) => {
  const dir = scratchDir(t);
  const old = path.join(dir, 'dvic_log_00000000000000aa');
  const fresh = path.join(dir, 'dvic_log_00000000000000bb');
  const alive = path.join(dir, 'dvic_log_00000000000000cc');
  const stat = fs.readFileSync('/proc/self/stat', 'latin1');
  const myStart = Number(stat.slice(stat.lastIndexOf(')') + 1).trim().split(/\s+/)[19]);
  fs.writeFileSync(old, '{"dvic_log":1,"pid":999999999,"pid_start":1}\n');
  fs.writeFileSync(fresh, '{"dvic_log":1,"pid":999999999,"pid_start":1}\n');
  fs.writeFileSync(alive, `{"dvic_log":1,"pid":${process.pid},"pid_start":${myStart}}\n`);
  const longAgo = Date.now() / 1000 - 8 * 86400;
  fs.utimesSync(old, longAgo, longAgo);
  fs.utimesSync(alive, longAgo, longAgo);
  const done = runNode("dvicLog.getLogger('pruner');", { DVIC_LOG_DIR: dir, DVIC_LOG_KEEP_DAYS: '7' });
  assert.equal(done.status, 0, done.stderr);
  assert.equal(fs.existsSync(old), false);
  assert.equal(fs.existsSync(fresh), true);
  assert.equal(fs.existsSync(alive), true);
});

test('the ESM entry point exports the same API', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `import(${JSON.stringify(path.join(PACKAGE, 'index.mjs'))}).then((m) => {
       const log = m.getLogger('esm'); log.info('from esm');
       console.log(m.default.getLogger === dvicLog.getLogger, m.getLogger('esm') === dvicLog.getLogger('esm'));
     });`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(done.stdout.trim(), 'true true', done.stderr);
  assert.deepEqual(readLog(liveFiles(dir)[0]).records.map((r) => r.msg), ['from esm']);
});

test('a worker terminated while it logs leaves whole lines and never blocks the others for long', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `const { Worker } = require('worker_threads');
     const log = dvicLog.getLogger('terminated');
     const code = "const log = require(" + JSON.stringify(${JSON.stringify(PACKAGE)}) + ").getLogger('terminated');" +
       "require('worker_threads').parentPort.postMessage('go');" +
       "for (let i = 0; ; i++) log.info('worker record ' + i + ' ' + 'w'.repeat(200));";
     const workers = [0, 1, 2].map(() => new Worker(code, { eval: true }));
     let started = 0;
     workers.forEach((w) => w.on('message', () => {
       if (++started < workers.length) return;
       setTimeout(async () => {
         await Promise.all(workers.map((x) => x.terminate()));
         const t0 = Date.now();
         for (let i = 0; i < 100; i++) log.info('main after ' + i);
         console.log(Date.now() - t0 < 5000, log.path);
       }, 200);
     }));`,
    { DVIC_LOG_DIR: dir, DVIC_LOG_MAX_BYTES: String(1024 * 1024) },
  );
  assert.equal(done.status, 0, done.stderr);
  const [quick, live] = done.stdout.trim().split(' ');
  assert.equal(quick, 'true');
  // oldest first: a rotation may fall among the last records (the terminated workers filled the file)
  const files = [`${live}.1`, live].filter((f) => fs.existsSync(f));
  const records = files.flatMap((f) => parseFile(f).slice(1)); // strict: every line whole JSON
  const after = records.filter((r) => r.msg.startsWith('main after ')).map((r) => r.msg);
  assert.deepEqual(after, Array.from({ length: 100 }, (_, i) => `main after ${i}`));
});

test('more demos than the shared table holds still each get their file', (t) => {
  const dir = scratchDir(t);
  const done = runNode(
    `for (let i = 0; i < 40; i++) dvicLog.getLogger('demo ' + i).info('hello ' + i);
     console.log(new Set(Array.from({ length: 40 }, (_, i) => dvicLog.getLogger('demo ' + i).path)).size);`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(done.stdout.trim(), '40', done.stderr);
  const names = liveFiles(dir).map((f) => readLog(f)).map((l) => [l.header.name, l.records[0].msg]);
  assert.equal(names.length, 40);
  for (const [name, msg] of names) assert.equal(msg, `hello ${name.slice(5)}`);
});

// A worker logging 240-byte records under 'held' whose own fs[fn] (a worker has its own fs module)
// stops right after the nth call whose first argument ends with `suffix`: inside the library's
// lock, at that step of a write or a rotation. The main thread terminates it there (`terminate`),
// or lets it stay stopped, alive, for `stopMs` and then stop logging; then it logs 100 records.
function stopWorkerInside(t, { fn, suffix = '', nth = 1, terminate = true, stopMs = 0 }) {
  const dir = scratchDir(t);
  const worker = `const fs = require('fs'); const wt = require('worker_threads');
    const real = fs[${JSON.stringify(fn)}]; let calls = 0; let stopped = false; let logged = 0;
    fs[${JSON.stringify(fn)}] = function (...args) {
      try {
        return real.apply(this, args);
      } finally {
        if (String(args[0]).endsWith(${JSON.stringify(suffix)}) && ++calls === ${nth}) {
          stopped = true;
          wt.parentPort.postMessage(logged);
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ${terminate ? 'Infinity' : stopMs});
        }
      }
    };
    const log = require(${JSON.stringify(PACKAGE)}).getLogger('held');
    for (; !stopped; logged++) log.info('worker record ' + logged + ' ' + 'w'.repeat(200));`;
  const done = runNode(
    `const { Worker } = require('worker_threads');
     const log = dvicLog.getLogger('held');
     const first = log.token;
     const w = new Worker(${JSON.stringify(worker)}, { eval: true });
     const exited = new Promise((resolve) => w.on('exit', resolve));
     w.on('message', async (logged) => {
       if (${terminate}) await w.terminate();
       const t0 = Date.now();
       for (let i = 0; i < 100; i++) log.info('main after ' + i);
       const ms = Date.now() - t0;
       await exited;
       console.log(JSON.stringify({ ms, first, logged, path: log.path }));
     });`,
    { DVIC_LOG_DIR: dir, DVIC_LOG_MAX_BYTES: '16384' }, // a rotation every ~65 worker records
  );
  assert.equal(done.status, 0, done.stderr);
  return JSON.parse(done.stdout);
}

/** The stream ended where it should: one token, rotation counts in order, every record kept. */
function assertOneStreamWithEveryRecord(out, what) {
  const live = readLog(out.path);
  const rotated = fs.existsSync(`${out.path}.1`);
  const older = rotated ? readLog(`${out.path}.1`) : { header: { token: out.first, rotated: -1 }, records: [] };
  const msgs = [...older.records, ...live.records].map((r) => r.msg);
  const after = msgs.filter((m) => m.startsWith('main after '));
  assert.deepEqual(after, Array.from({ length: 100 }, (_, i) => `main after ${i}`), `${what}: main records`);
  // The worker's records up to the last it logged (or the one it was writing when stopped).
  const worker = msgs.filter((m) => m.startsWith('worker record ')).map((m) => Number(m.split(' ')[2]));
  const last = worker[worker.length - 1];
  assert.ok(last === out.logged - 1 || last === out.logged, `${what}: worker records lost`);
  const expected = Array.from({ length: worker.length }, (_, i) => last - worker.length + 1 + i);
  assert.deepEqual(worker, expected, `${what}: worker records`);
  assert.equal(live.header.token, out.first, `${what}: the stream goes on under its token`);
  assert.equal(older.header.token, out.first, what);
  assert.equal(live.header.rotated || 0, (older.header.rotated || 0) + 1, `${what}: rotation counts`);
}

test('a worker terminated at any step of a write or a rotation: the others lose nothing and wait no 2 s', (t) => {
  const problems = [];
  for (const step of [
    { fn: 'writeSync' }, // a record written, its size not yet counted
    { fn: 'openSync', suffix: '.new' }, // the next file created under its temporary name
    { fn: 'unlinkSync', suffix: '.1' },
    { fn: 'linkSync' }, // the full file also named .1
    { fn: 'renameSync' }, // the next file at the live name, the slot not yet told: records went to .1
    { fn: 'renameSync', nth: 2 }, // ... at a later rotation: a new stream began
  ]) {
    const what = `stopped after ${step.fn}${step.suffix ? ` ${step.suffix}` : ''} #${step.nth || 1}`;
    const out = stopWorkerInside(t, step);
    if (out.ms >= 1500) problems.push(`${what}: the main thread waited ${out.ms} ms for the lock`);
    try {
      assertOneStreamWithEveryRecord(out, what);
    } catch (err) {
      problems.push(err.message.split('\n')[0]);
    }
  }
  assert.deepEqual(problems, []);
});

test('a worker that is slow inside the lock keeps it: nobody takes it over while it lives', (t) => {
  // The old rule took over any lock held 2 s: the main thread rotated under a live worker, which
  // then rotated again and the first records went away.
  const out = stopWorkerInside(t, { fn: 'linkSync', terminate: false, stopMs: 3000 });
  assertOneStreamWithEveryRecord(out, 'slow worker');
});

test('a line a terminated worker left half written is ended before the next record', (t) => {
  const dir = scratchDir(t);
  // The disk was full: the worker's write(2) took half of its record, then it was terminated.
  const worker = `const fs = require('fs'); const wt = require('worker_threads');
    const real = fs.writeSync;
    fs.writeSync = function (fd, data, ...rest) {
      if (!Buffer.isBuffer(data) || !data.includes('worker record 20 ')) return real.call(this, fd, data, ...rest);
      real.call(this, fd, data.subarray(0, 50));
      wt.parentPort.postMessage('stopped');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
    };
    const log = require(${JSON.stringify(PACKAGE)}).getLogger('torn');
    for (let i = 0; ; i++) log.info('worker record ' + i + ' ' + 'w'.repeat(200));`;
  const done = runNode(
    `const { Worker } = require('worker_threads');
     const log = dvicLog.getLogger('torn');
     const w = new Worker(${JSON.stringify(worker)}, { eval: true });
     w.on('message', async () => {
       await w.terminate();
       for (let i = 0; i < 100; i++) log.info('main after ' + i);
       console.log(log.path);
     });`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(done.status, 0, done.stderr);
  const lines = fs.readFileSync(done.stdout.trim(), 'utf8').split('\n');
  assert.equal(lines.pop(), '');
  const whole = (line) => { try { return JSON.parse(line); } catch (_) { return null; } };
  const fragment = lines.findIndex((line) => whole(line) === null);
  assert.equal(lines.filter((line) => whole(line) === null).length, 1);
  assert.match(lines[fragment], /^\{"ts":[\d.]+,"level":"INFO","msg":"wor/); // the 50 bytes written
  assert.equal(lines[fragment].length, 50);
  const after = lines.slice(fragment + 1).map((line) => JSON.parse(line).msg);
  assert.deepEqual(after, Array.from({ length: 100 }, (_, i) => `main after ${i}`));
});

test('a worker terminated while it opens a demo\'s file does not hold up the other threads', (t) => {
  const dir = scratchDir(t);
  const worker = `const fs = require('fs'); const wt = require('worker_threads');
    const real = fs.openSync;
    fs.openSync = function (...args) {
      const fd = real.apply(this, args);
      if (String(args[0]).includes('dvic_log_')) {
        wt.parentPort.postMessage('stopped'); // inside getLogger: the table of files is locked
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
      }
      return fd;
    };
    require(${JSON.stringify(PACKAGE)}).getLogger('late');`;
  const done = runNode(
    `const { Worker } = require('worker_threads');
     dvicLog.getLogger('first');
     const w = new Worker(${JSON.stringify(worker)}, { eval: true });
     w.on('message', async () => {
       await w.terminate();
       const t0 = Date.now();
       const log = dvicLog.getLogger('late');
       log.info('main after');
       console.log(JSON.stringify({ ms: Date.now() - t0, path: log.path }));
     });`,
    { DVIC_LOG_DIR: dir },
  );
  assert.equal(done.status, 0, done.stderr);
  const out = JSON.parse(done.stdout);
  assert.ok(out.ms < 1500, `getLogger waited ${out.ms} ms for the table a terminated worker locked`);
  assert.deepEqual(readLog(out.path).records.map((r) => r.msg), ['main after']);
});
