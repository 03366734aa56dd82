/**
 * maxReadingBodies: only a few request bodies are read at once, the rest wait paused. A client that stops sending
 * in the middle of a body must not hold its reading place while others wait (the pool's idle sweep takes it back).
 */
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PREFIX, bytesOf, initUpload, putChunks, shuffled, slice, startServer } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';
import { TestSocket } from '../fixtures/ws-client.js';

const KIB = 1024;
const CS = 256 * KIB;

let server: TestServer | null = null;
afterEach(async () => {
  await server?.close();
  server = null;
});

/** A PUT written by hand, so the test decides when each part of the body goes out. */
function rawPut(base: string, guid: string, chunk: number, length: number) {
  const { port } = new URL(base);
  const socket = net.connect(Number(port), '127.0.0.1');
  let text = '';
  const reply = new Promise<{ status: number; body: Record<string, unknown> }>((resolve, reject) => {
    socket.on('data', (b) => {
      text += b.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      const len = /content-length: (\d+)/i.exec(text);
      if (end !== -1 && len && text.length >= end + 4 + Number(len[1])) {
        resolve({ status: Number(text.slice(9, 12)), body: JSON.parse(text.slice(end + 4, end + 4 + Number(len[1]))) });
        socket.end();
      }
    });
    socket.on('error', reject);
  });
  socket.write(
    `PUT ${PREFIX}/upload-chunk?guid=${guid}&chunk=${chunk} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${length}\r\n\r\n`,
  );
  return { send: (b: Uint8Array) => socket.write(b), reply, socket };
}

describe('requests the server holds paused', () => {
  it("outlive uWS's own 10 s request timer: the second writer of a chunk sent over 16 s gets its answer, not a closed connection", async () => {
    const size = 384 * KIB;
    server = await startServer({ chunkSize: size });
    const data = bytesOf(size);
    const init = await initUpload(server.base, { fileName: 'held.bin', fileSize: 2 * size, chunkSize: size });
    const guid = init.json.data!.guid as string;
    const first = rawPut(server.base, guid, 0, size);
    const second = rawPut(server.base, guid, 0, size);
    try {
      // 24 KiB/s: above uWS's 16 KiB/s minimum for a body being read, so only the held request is at risk.
      const step = 24 * KIB;
      first.send(data.subarray(0, step));
      await new Promise((r) => setTimeout(r, 200));
      second.send(data); // whole, at once: it waits, paused, for the first writer of chunk 0
      for (let off = step; off < size; off += step) {
        await new Promise((r) => setTimeout(r, 1000));
        first.send(data.subarray(off, off + step));
      }
      const [a, b] = await Promise.all([first.reply, second.reply]);
      expect([a.status, a.body.message]).toEqual([200, 'Chunk received']);
      expect([b.status, b.body.message]).toEqual([200, 'Chunk already received']);
      const last = await putChunks(server.base, guid, Buffer.concat([data, data]), size, [1], 1);
      expect(last[0]!.json.data).toMatchObject({ complete: true });
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'held.bin')), Buffer.concat([data, data]))).toBe(0);
    } finally {
      first.socket.destroy();
      second.socket.destroy();
    }
  }, 40_000);
});

describe('a body that finds the in-flight budget spent', () => {
  it('is paused mid-chunk, not read on into memory, until a slab comes back; then it completes byte for byte', async () => {
    // Two slabs. Chunks streamed as updraft.v1 parts hold a slab between parts (a WebSocket cannot pause, so nothing
    // takes it back): one holds a slab, the PUT the other, and a second stream queues for a slab ahead of the PUT.
    server = await startServer({ batchSize: 64 * KIB, maxInFlightBytes: 128 * KIB, chunkSize: CS });
    const wsCs = 32 * KIB;
    const wsData = bytesOf(2 * wsCs);
    const w = await initUpload(server.base, { fileName: 'parts.bin', fileSize: wsData.length, chunkSize: wsCs });
    const wGuid = w.json.data!.guid as string;
    const data = bytesOf(CS);
    const p = await initUpload(server.base, { fileName: 'put.bin', fileSize: data.length, chunkSize: CS });
    const inFlight = async (): Promise<number> =>
      (await fetch(`${server!.base}/healthz`).then((x) => x.json() as Promise<{ data: { inFlightBytes: number } }>)).data.inFlightBytes;
    const sockets: TestSocket[] = [];
    const put = rawPut(server.base, p.json.data!.guid as string, 0, CS);
    try {
      const openV1 = async (): Promise<TestSocket> => {
        const s = await TestSocket.open(server!.base, wGuid, { protocols: ['updraft.v1'] });
        sockets.push(s);
        expect(await s.nextFrame()).toMatchObject({ t: 'hello' });
        return s;
      };
      const a = await openV1();
      a.nativePart(0, 0, slice(wsData, wsCs, 0).subarray(0, 1000));
      a.nativeStatus();
      expect(await a.nextFrame()).toMatchObject({ t: 'progress', rc: 0 });
      put.send(data.subarray(0, 10 * KIB));
      for (let i = 0; i < 100 && (await inFlight()) !== 128 * KIB; i++) await new Promise((r) => setTimeout(r, 20));
      expect(await inFlight()).toBe(128 * KIB);
      const b = await openV1();
      b.nativePart(1, 0, slice(wsData, wsCs, 1).subarray(0, 1000));
      b.nativeStatus();
      expect(await b.nextFrame()).toMatchObject({ t: 'progress', rc: 0 });
      // The rest of the body: its first slab fills and goes to the writers, and comes back to the stream that waited
      // first; the body waits, paused, with about one network read set aside.
      put.send(data.subarray(10 * KIB));
      expect(await Promise.race([put.reply, new Promise<null>((r) => setTimeout(() => r(null), 1000))])).toBeNull();
      a.nativePart(0, 1000, slice(wsData, wsCs, 0).subarray(1000));
      expect(await a.nextFrame()).toMatchObject({ t: 'ack', c: 0 });
      const r = await Promise.race([put.reply, new Promise<null>((r) => setTimeout(() => r(null), 9000))]);
      expect(r).toMatchObject({ status: 200, body: { data: { complete: true } } });
      b.nativePart(1, 1000, slice(wsData, wsCs, 1).subarray(1000));
      expect(await b.nextFrame()).toMatchObject({ t: 'ack', c: 1 });
      expect(await b.nextFrame()).toMatchObject({ t: 'progress', complete: true });
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'put.bin')), data)).toBe(0);
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'parts.bin')), wsData)).toBe(0);
    } finally {
      put.socket.destroy();
      for (const s of sockets) s.ws.terminate();
    }
  });
});

describe('a cancel while a body arrives', () => {
  it('answers the rest of that body 410 ERR_UPLOAD_CANCELLED, as upload-status says, not 409 ERR_UPLOAD_FAILED', async () => {
    server = await startServer({ chunkSize: CS });
    const init = await initUpload(server.base, { fileName: 'c.bin', fileSize: 2 * CS, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    const put = rawPut(server.base, guid, 0, CS);
    try {
      const data = bytesOf(CS);
      put.send(data.subarray(0, CS / 2)); // less than a slab: nothing is written before the body ends
      await new Promise((r) => setTimeout(r, 100));
      const cancel = await fetch(`${server.base}${PREFIX}/upload-chunk?guid=${guid}`, { method: 'DELETE' });
      expect(cancel.status).toBe(200);
      put.send(data.subarray(CS / 2));
      const r = await put.reply;
      expect([r.status, r.body.code]).toEqual([410, 'ERR_UPLOAD_CANCELLED']);
    } finally {
      put.socket.destroy();
    }
  });
});

describe('bodies read at once (maxReadingBodies)', () => {
  it('a body that stalls half-way gives its place up; the others complete, then it completes too, byte for byte', async () => {
    server = await startServer({ maxReadingBodies: 1, batchSize: 64 * KIB, maxInFlightBytes: 1024 * KIB, chunkSize: CS });
    const stalledData = bytesOf(2 * CS);
    const a = await initUpload(server.base, { fileName: 'stalled.bin', fileSize: stalledData.length, chunkSize: CS });
    const aGuid = a.json.data!.guid as string;
    const slow = rawPut(server.base, aGuid, 0, CS);
    try {
      // 100 KiB of chunk 0 (the first 64 KiB slab goes to a writer; the second slab is held half full), then silence.
      slow.send(slice(stalledData, CS, 0).subarray(0, 100 * KIB));
      await new Promise((r) => setTimeout(r, 100));

      // With one reading place, these bodies can only be read once the stalled one has given it up.
      const data = bytesOf(6 * CS + 777);
      const b = await initUpload(server.base, { fileName: 'other.bin', fileSize: data.length, chunkSize: CS });
      const guid = b.json.data!.guid as string;
      const started = Date.now();
      const replies = await putChunks(server.base, guid, data, CS, shuffled([...Array(7).keys()], 3), 4);
      for (const r of replies) expect(r.status, JSON.stringify(r.json)).toBe(200);
      expect(replies.filter((r) => r.json.data?.complete === true)).toHaveLength(1);
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'other.bin')), data)).toBe(0);
      expect(Date.now() - started).toBeLessThan(10_000);

      // The stalled client comes back: the rest of its body is read (it waits its turn like anyone else).
      slow.send(slice(stalledData, CS, 0).subarray(100 * KIB));
      const r = await slow.reply;
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(r.body).toMatchObject({ message: 'Chunk received', data: { chunkNumber: 0, complete: false } });
      const last = await putChunks(server.base, aGuid, stalledData, CS, [1], 1);
      expect(last[0]!.json.data).toMatchObject({ complete: true });
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'stalled.bin')), stalledData)).toBe(0);
    } finally {
      slow.socket.destroy();
    }
  });

  it('reads no more bodies at once than maxReadingBodies: a second body waits without a slab until the first gives its place up', async () => {
    // 1000 bytes each: a yield hands no 4 KiB block to the writers, so the only slabs in use are the ones being filled.
    server = await startServer({ maxReadingBodies: 1, batchSize: 64 * KIB, chunkSize: CS });
    const data = bytesOf(2 * CS);
    const a = await initUpload(server.base, { fileName: 'one-place.bin', fileSize: data.length, chunkSize: CS });
    const guid = a.json.data!.guid as string;
    const puts = [0, 1].map((c) => rawPut(server!.base, guid, c, CS));
    try {
      for (const [c, p] of puts.entries()) p.send(slice(data, CS, c).subarray(0, 1000));
      // Over a few idle yields (250 ms each) the place goes back and forth; one slab is filled at a time.
      const inFlight: number[] = [];
      for (let i = 0; i < 8; i++) {
        await new Promise((r) => setTimeout(r, 100));
        const health = await fetch(`${server.base}/healthz`).then((x) => x.json() as Promise<{ data: { inFlightBytes: number } }>);
        inFlight.push(health.data.inFlightBytes);
      }
      expect(Math.max(...inFlight)).toBe(64 * KIB);
      for (const [c, p] of puts.entries()) p.send(slice(data, CS, c).subarray(1000));
      const replies = await Promise.race([Promise.all(puts.map((p) => p.reply)), new Promise<null>((r) => setTimeout(() => r(null), 9000))]);
      expect(replies?.map((r) => r.status)).toEqual([200, 200]);
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'one-place.bin')), data)).toBe(0);
    } finally {
      for (const p of puts) p.socket.destroy();
    }
  });

  it('a body silent for bodyIdleTimeout while being read is answered ERR_CHUNK_INCOMPLETE and frees everything it held', async () => {
    // Without it, the yield-and-resume cycle of a stalled body restarted uWS's idle timer for good: a few stalled
    // bodies kept their claims, reading places and the user's in-flight budget forever (found by review).
    server = await startServer({ bodyIdleTimeout: 300, batchSize: 64 * KIB, chunkSize: CS });
    const data = bytesOf(2 * CS);
    const a = await initUpload(server.base, { fileName: 'silent.bin', fileSize: data.length, chunkSize: CS });
    const guid = a.json.data!.guid as string;
    const stalled = rawPut(server.base, guid, 0, CS);
    try {
      stalled.send(slice(data, CS, 0).subarray(0, 10));
      const started = Date.now();
      const r = await stalled.reply;
      expect(r.status).toBe(400);
      expect(r.body).toMatchObject({ status: 'fail', code: 'ERR_CHUNK_INCOMPLETE' });
      expect(Date.now() - started).toBeGreaterThanOrEqual(250);
      await new Promise<void>((resolve) => (stalled.socket.closed ? resolve() : stalled.socket.once('close', () => resolve())));
      const health = await fetch(`${server.base}/healthz`).then((x) => x.json() as Promise<{ data: { inFlightBytes: number } }>);
      expect(health.data.inFlightBytes).toBe(0);
      // Its claim is gone: the chunk is written at once, and the upload completes.
      const replies = await putChunks(server.base, guid, data, CS, [0, 1], 1);
      expect(replies.map((x) => x.status)).toEqual([200, 200]);
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'silent.bin')), data)).toBe(0);
    } finally {
      stalled.socket.destroy();
    }
  });

  it('silent bodies that keep losing their place to each other are still dropped after bodyIdleTimeout', async () => {
    // Each took a reading place again after every yield, and the wait in between did not count as idle, so they
    // lived forever, holding their claims and the user's budget, while everyone else's bodies waited behind them.
    server = await startServer({ maxReadingBodies: 1, bodyIdleTimeout: 1000, batchSize: 64 * KIB, chunkSize: CS });
    const data = bytesOf(4 * CS);
    const a = await initUpload(server.base, { fileName: 'quiet.bin', fileSize: data.length, chunkSize: CS });
    const guid = a.json.data!.guid as string;
    const silent = [0, 1, 2].map((c) => rawPut(server!.base, guid, c, CS));
    try {
      const bounded = (p: Promise<{ status: number; body: Record<string, unknown> }>) =>
        Promise.race([p, new Promise<null>((r) => setTimeout(() => r(null), 8000))]);
      const replies = await Promise.all(silent.map((b) => bounded(b.reply)));
      for (const r of replies) expect(r).toMatchObject({ status: 400, body: { code: 'ERR_CHUNK_INCOMPLETE' } });
      for (const b of silent) b.socket.destroy();
      const health = await fetch(`${server.base}/healthz`).then((x) => x.json() as Promise<{ data: { inFlightBytes: number } }>);
      expect(health.data.inFlightBytes).toBe(0);
      const puts = await putChunks(server.base, guid, data, CS, [0, 1, 2, 3], 2);
      expect(puts.map((x) => x.status)).toEqual([200, 200, 200, 200]);
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'quiet.bin')), data)).toBe(0);
    } finally {
      for (const b of silent) b.socket.destroy();
    }
  });

  it('a body that paused once and then sent everything is not failed for the time it waits in line afterwards', async () => {
    // Its bytes wait unread in the kernel while the server holds it paused: that wait is not the client's silence.
    server = await startServer({ maxReadingBodies: 1, bodyIdleTimeout: 1000, batchSize: 64 * KIB, chunkSize: CS });
    const slowData = bytesOf(3 * CS);
    const s = await initUpload(server.base, { fileName: 'busy.bin', fileSize: slowData.length, chunkSize: CS });
    const data = bytesOf(CS);
    const a = await initUpload(server.base, { fileName: 'gap.bin', fileSize: data.length, chunkSize: CS });
    const gap = rawPut(server.base, a.json.data!.guid as string, 0, CS);
    // Three bodies trickle steadily (never silent for 250 ms), each keeping the one place up to 1 s per turn.
    const trickles = [0, 1, 2].map((c) => rawPut(server!.base, s.json.data!.guid as string, c, CS));
    let sent = 0;
    const timer = setInterval(() => {
      for (const [c, t] of trickles.entries()) t.send(slice(slowData, CS, c).subarray(sent, sent + 16));
      sent += 16;
    }, 50);
    const stop = setTimeout(() => clearInterval(timer), 9000);
    try {
      gap.send(data.subarray(0, 100));
      await new Promise((r) => setTimeout(r, 400)); // silent long enough to lose its place to the waiting ones
      gap.send(data.subarray(100));
      const reply = await Promise.race([gap.reply, new Promise<null>((r) => setTimeout(() => r(null), 9000))]);
      expect(reply).toMatchObject({ status: 200, body: { data: { complete: true } } });
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'gap.bin')), data)).toBe(0);
    } finally {
      clearInterval(timer);
      clearTimeout(stop);
      for (const t of [gap, ...trickles]) t.socket.destroy();
    }
  });

  it('bodies trickling in slowly take turns with a waiting one instead of holding every reading place', async () => {
    server = await startServer({ maxReadingBodies: 2, batchSize: 64 * KIB, chunkSize: CS });
    const slowData = bytesOf(2 * CS);
    const a = await initUpload(server.base, { fileName: 'trickle.bin', fileSize: slowData.length, chunkSize: CS });
    const slowGuid = a.json.data!.guid as string;
    // Two bodies send 16 bytes every 50 ms (never idle long enough to be taken back for silence), for at most 8 s.
    const trickles = [0, 1].map((c) => rawPut(server!.base, slowGuid, c, CS));
    let sent = 0;
    const timer = setInterval(() => {
      for (const [c, t] of trickles.entries()) t.send(slice(slowData, CS, c).subarray(sent, sent + 16));
      sent += 16;
    }, 50);
    const stop = setTimeout(() => clearInterval(timer), 8000);
    try {
      await new Promise((r) => setTimeout(r, 300));
      const data = bytesOf(CS);
      const b = await initUpload(server.base, { fileName: 'waiting.bin', fileSize: data.length, chunkSize: CS });
      const replies = await Promise.race([
        putChunks(server.base, b.json.data!.guid as string, data, CS, [0], 1),
        new Promise<null>((r) => setTimeout(() => r(null), 6000)),
      ]);
      expect(replies?.[0]).toMatchObject({ status: 200, json: { data: { complete: true } } });
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'waiting.bin')), data)).toBe(0);
      expect(sent).toBeLessThan(CS); // answered while both trickles were still sending
    } finally {
      clearInterval(timer);
      clearTimeout(stop);
      for (const t of trickles) t.socket.destroy();
    }
  });

  it('many uploads at once through one reading place: every byte lands', async () => {
    server = await startServer({ maxReadingBodies: 1, batchSize: 64 * KIB, maxInFlightBytes: 512 * KIB, chunkSize: CS });
    const files = Array.from({ length: 6 }, (_, i) => ({ name: `f${i}.bin`, data: bytesOf(3 * CS + 1 + i * 1000) }));
    await Promise.all(
      files.map(async (f, i) => {
        const init = await initUpload(server!.base, { fileName: f.name, fileSize: f.data.length, chunkSize: CS });
        const replies = await putChunks(server!.base, init.json.data!.guid as string, f.data, CS, shuffled([0, 1, 2, 3], i + 1), 4);
        for (const r of replies) expect(r.status, JSON.stringify(r.json)).toBe(200);
      }),
    );
    for (const f of files) expect(Buffer.compare(await fsp.readFile(path.join(server.dir, f.name)), f.data)).toBe(0);
  });
});
