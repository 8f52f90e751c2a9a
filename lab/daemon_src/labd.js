// Systerns lab daemon (Node): a long-running service with timers and a
// worker-thread pool, recorded as a benign hard negative.
//
// It serves files of one folder on 127.0.0.1, checks the folder on a timer,
// has worker threads read and hash changed files, and appends log lines.
//
// Usage: node labd.js DIR LOGFILE TICK_MS WORKERS PORT   (TICK_MS 0: no timer)
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const path = require('path');
const { Worker, isMainThread, parentPort } = require('worker_threads');

if (!isMainThread) {
  parentPort.on('message', (file) => {
    fs.readFile(file, (err, data) => {
      parentPort.postMessage(err ? `error ${err.code}` :
        `${path.basename(file)} ${crypto.createHash('sha256').update(data).digest('hex').slice(0, 16)}`);
    });
  });
} else {
  const [dir, logPath, tickMs, nWorkers, port] = process.argv.slice(2);
  const log = fs.createWriteStream(logPath, { flags: 'a', mode: 0o600 });
  const pool = [];
  for (let i = 0; i < Number(nWorkers); i++) {
    const w = new Worker(__filename);
    w.on('message', (line) => log.write(`worker=${i} ${line}\n`));
    pool.push(w);
  }
  let next = 0;
  const seen = new Map();
  if (Number(tickMs) > 0) setInterval(() => {
    fs.readdir(dir, (err, names) => {
      if (err) return;
      for (const name of names) {
        const file = path.join(dir, name);
        fs.stat(file, (e, st) => {
          if (e || !st.isFile() || seen.get(name) === st.mtimeMs) return;
          seen.set(name, st.mtimeMs);
          if (pool.length) pool[next++ % pool.length].postMessage(file);
        });
      }
      log.write(`${new Date().toISOString()} tick files=${names.length}\n`);
    });
  }, Number(tickMs));
  http.createServer((req, res) => {
    const file = path.join(dir, path.basename(req.url || '/'));
    fs.readFile(file, (err, data) => {
      if (err) { res.statusCode = 404; res.end(); return; }
      res.end(data);
      log.write(`get path=${req.url} bytes=${data.length}\n`);
    });
  }).listen(Number(port), '127.0.0.1');
}
