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
  const files = [live, `${live}.1`].filter((f) => fs.existsSync(f));
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
