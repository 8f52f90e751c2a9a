// Systerns lab miner (Node): a third training miner, in an interpreted
// runtime, neither XMRig, the lab's C miner nor the held-out family's Python
// stand-in. Worker threads run a memory-hard loop (fill a scratchpad with
// BLAKE2b or SHA3 output, then mix it at data-dependent offsets) and the main
// thread speaks stratum JSON-RPC to the lab's fake pool on 127.0.0.1. It only
// ever runs inside its own network namespace.
//
// Usage: node jsminer.js HOST:PORT USER THREADS MEM_KIB SHARE_BITS ALGO [TITLE]
'use strict';
const crypto = require('crypto');
const net = require('net');
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');

function hashLoop({ blob, first, step, memKib, shareBits, algo }) {
  const pad = Buffer.alloc(memKib * 1024);
  let nonce = first;
  const seed = Buffer.from(blob, 'hex');
  for (;;) {
    let h = crypto.createHash(algo).update(seed).update(String(nonce)).digest();
    for (let off = 0; off + h.length <= pad.length; off += h.length) {
      h.copy(pad, off);
      h = crypto.createHash(algo).update(h).digest();
    }
    for (let i = 0; i < 256; i++) {
      const off = (h.readUInt32LE(0) % (pad.length - 64)) & ~7;
      for (let k = 0; k < 32; k++) pad[off + k] ^= h[k];
      h = crypto.createHash(algo).update(pad.subarray(off, off + 64)).digest();
    }
    if ((h.readUInt32LE(0) >>> (32 - shareBits)) === 0) parentPort.postMessage(nonce);
    nonce += step;
  }
}

if (!isMainThread) {
  hashLoop(workerData);
} else {
  const [hostPort, user, threads, memKib, shareBits, algo, title] = process.argv.slice(2);
  if (title) process.title = title;
  const [host, port] = hostPort.replace('stratum+tcp://', '').split(':');
  const sock = net.connect(Number(port), host);
  let id = 0, job = null, workers = [];
  const send = (method, params) =>
    sock.write(JSON.stringify({ id: ++id, method, params }) + '\n');
  const start = () => {
    for (const w of workers) w.terminate();
    workers = [];
    for (let t = 0; t < Number(threads); t++) {
      const w = new Worker(__filename, { workerData: {
        blob: job.blob, first: t, step: Number(threads), memKib: Number(memKib),
        shareBits: Number(shareBits), algo } });
      const jobId = job.id;
      w.on('message', (nonce) => send('mining.submit', [user, jobId, nonce.toString(16)]));
      workers.push(w);
    }
  };
  let buf = '';
  sock.on('data', (chunk) => {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const msg = JSON.parse(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      if (msg.method === 'mining.notify') {
        job = { id: msg.params[0], blob: msg.params[1] };
        start();
      }
    }
  });
  sock.on('connect', () => {
    send('mining.subscribe', ['lab-jsminer/0.1']);
    send('mining.authorize', [user, 'x']);
  });
  sock.on('error', () => process.exit(3));
  sock.on('close', () => process.exit(0));
}
