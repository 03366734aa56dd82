/**
 * The WebSocket transport, native protocol `updraft.v1` (issue 3): hello, windowed chunks, acks, checksums, resume
 * from the hello bitmap, two connections on one upload, and the fatal cases (window overrun, bad frames, cancel).
 */
import { createHash, randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import type { AckMessage, ErrorMessage, HelloMessage, ServerMessage } from '../../src/protocol/messages.js';
import { encodeFrame } from '../../src/protocol/codec.js';
import { PREFIX, bytesOf, call, initUpload, putChunk, shuffled, slice, startServer } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';
import { TestSocket } from '../fixtures/ws-client.js';
import { completionFailures } from '../fixtures/completion-failures.js';

const MiB = 1024 * 1024;
const CS = 64 * 1024;

let server: TestServer | null = null;
const sockets: TestSocket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.ws.terminate();
  await server?.close();
  server = null;
});

/** The window each connection's hello told (sendWindowed starts from it). */
const helloWindow = new WeakMap<TestSocket, number>();

async function open(guid: string): Promise<{ s: TestSocket; hello: HelloMessage }> {
  const s = await TestSocket.open(server!.base, guid, { protocols: ['updraft.v1'] });
  sockets.push(s);
  expect(s.protocol).toBe('updraft.v1');
  const hello = await s.nextFrame();
  if (hello.t !== 'hello') throw new Error(`expected hello, got ${hello.t}`);
  helloWindow.set(s, hello.window);
  return { s, hello };
}

async function init(size: number, chunkSize: number, fileName = 'f.bin') {
  const r = await initUpload(server!.base, { fileName, fileSize: size, chunkSize });
  expect(r.status, JSON.stringify(r.json)).toBe(200);
  return r.json.data as { guid: string; totalChunks: number };
}

async function status(guid: string) {
  return (await call(server!.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`)).json.data!;
}

interface SendResult {
  /** Windows the server told while sending (`window` messages), in order. */
  windows: number[];
  acks: AckMessage[];
  errors: ErrorMessage[];
  /** Everything after the replies to the chunks: progress, complete, ... */
  tail: ServerMessage[];
  maxInFlight: number;
}

/**
 * Sends `chunks` keeping at most `window` unanswered and, unless `followWindow` is false, no more than the server
 * told (hello, then `window` messages), as a client must; stops when every chunk is answered and, if `untilClose`,
 * reads on to the close. `partSize` > 0: each chunk goes as `part` frames of that size.
 */
async function sendWindowed(
  s: TestSocket,
  data: Uint8Array,
  chunkSize: number,
  chunks: number[],
  window: number,
  untilClose = true,
  followWindow = true,
  partSize = 0,
): Promise<SendResult> {
  const queue = chunks.slice();
  const out: SendResult = { windows: [], acks: [], errors: [], tail: [], maxInFlight: 0 };
  const cap = window;
  let told = s.windows.at(-1) ?? helloWindow.get(s) ?? window;
  if (followWindow) window = Math.min(cap, told);
  const inFlight = new Set<number>();
  const fill = (): void => {
    while (inFlight.size < window && queue.length > 0) {
      const c = queue.shift()!;
      inFlight.add(c);
      if (partSize > 0) s.nativeParts(c, slice(data, chunkSize, c), partSize);
      else s.nativeChunk(c, slice(data, chunkSize, c));
    }
    out.maxInFlight = Math.max(out.maxInFlight, inFlight.size);
  };
  fill();
  while (inFlight.size > 0 || (queue.length > 0 && window === 0)) {
    const m = await s.nextFrame(30_000, true);
    if (m.t === 'window') {
      out.windows.push(m.window);
      told = m.window;
      if (followWindow) window = Math.min(cap, told);
    } else if (m.t === 'ack') {
      expect(inFlight.delete(m.c), `ack for chunk ${m.c} that is not in flight`).toBe(true);
      out.acks.push(m);
    } else if (m.t === 'error' && m.c !== undefined) {
      inFlight.delete(m.c);
      out.errors.push(m);
    } else {
      out.tail.push(m);
      if (m.t === 'error') break;
    }
    fill();
  }
  if (untilClose) {
    for (;;) {
      const m = await s.nextFrame(30_000).catch(() => null);
      if (!m) break;
      out.tail.push(m);
    }
  }
  return out;
}

/**
 * The server's in-flight bytes once they stop changing to 0 (slabs come back when the writes queued before a drop
 * have run, and the pool may still be starting): polled for up to 5 s.
 */
async function inFlightBytesSettled(): Promise<number> {
  let inFlight = -1;
  for (let i = 0; i < 100 && inFlight !== 0; i++) {
    if (i > 0) await new Promise((r) => setTimeout(r, 50));
    inFlight = (await call(server!.base, 'GET', '/healthz')).json.data!.inFlightBytes as number;
  }
  return inFlight;
}

function expectCompleteTail(tail: ServerMessage[], fileName: string, size: number, totalChunks: number): void {
  expect(tail).toEqual([
    { t: 'progress', rc: totalChunks, tc: totalChunks, rb: size, complete: true },
    { t: 'complete', fileName, size },
  ]);
}


describe('WebSocket, updraft.v1', () => {
  it('uploads 256 MiB in 8 MiB chunks with window 8, byte for byte', async () => {
    server = await startServer({ maxChunkSize: 64 * MiB });
    const size = 256 * MiB;
    const chunkSize = 8 * MiB;
    const data = randomBytes(size);
    const { guid, totalChunks } = await init(size, chunkSize, 'big.bin');
    const { s, hello } = await open(guid);
    expect(hello).toEqual({
      t: 'hello',
      v: 1,
      guid,
      chunkSize,
      fileSize: size,
      totalChunks: 32,
      maxFrame: 64 * MiB + 2 + 4096,
      window: 1, // slow start: doubled on each answered chunk up to 8 (64 MiB of window budget / 8 MiB)
      missing: [...Array(32).keys()],
    });
    const r = await sendWindowed(s, data, chunkSize, hello.missing, 8);
    expect(r.errors).toEqual([]);
    expect(r.windows).toEqual([2, 4, 8]);
    expect(r.maxInFlight).toBe(8);
    expect(r.acks).toHaveLength(totalChunks);
    expect(r.acks.every((a) => a.dup === undefined)).toBe(true);
    // Counters are read when each ack is made (one group commit may cover several chunks): they never go back.
    const rcs = r.acks.map((a) => a.rc);
    expect(rcs).toEqual(rcs.slice().sort((x, y) => x - y));
    expect(rcs.at(-1)).toBe(32);
    expectCompleteTail(r.tail, 'big.bin', size, totalChunks);
    expect(await s.closed).toEqual({ code: 1000, reason: 'Upload complete' });
    const written = await fsp.readFile(path.join(server.dir, 'big.bin'));
    expect(written.length).toBe(size);
    expect(Buffer.compare(written, data)).toBe(0);
  });

  it('rejects a chunk whose checksum does not match (retryable, bit unset) and takes it when resent', async () => {
    server = await startServer();
    const data = bytesOf(3 * CS + 1);
    const { guid } = await init(data.length, CS, 'sum.bin');
    const { s } = await open(guid);
    const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
    const wrong = sha(slice(data, CS, 1).subarray(1));
    s.nativeChunk(1, slice(data, CS, 1), { a: 'sha256', v: wrong });
    expect(await s.nextFrame()).toEqual({ t: 'error', code: 'ERR_CHECKSUM_MISMATCH', message: expect.any(String), c: 1, retry: true });
    s.nativeChunk(2, slice(data, CS, 2), { a: 'crc32', v: flipHex(crc(slice(data, CS, 2))) });
    expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_CHECKSUM_MISMATCH', c: 2, retry: true });
    expect(await status(guid)).toMatchObject({ receivedChunks: 0, missingChunks: [0, 1, 2, 3] });
    // Resent with the right sums (upper-case hex is accepted).
    s.nativeChunk(1, slice(data, CS, 1), { a: 'sha256', v: sha(slice(data, CS, 1)).toUpperCase() });
    expect(await s.nextFrame()).toEqual({ t: 'ack', c: 1, rc: 1, rb: CS });
    s.nativeChunk(2, slice(data, CS, 2), { a: 'crc32', v: crc(slice(data, CS, 2)) });
    expect(await s.nextFrame()).toEqual({ t: 'ack', c: 2, rc: 2, rb: 2 * CS });
    const r = await sendWindowed(s, data, CS, [0, 3], 8);
    expect(r.errors).toEqual([]);
    expectCompleteTail(r.tail, 'sum.bin', data.length, 4);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'sum.bin')), data)).toBe(0);
  });

  it('resumes after a reconnect from the hello bitmap', async () => {
    server = await startServer();
    const data = bytesOf(10 * CS + 3);
    const { guid, totalChunks } = await init(data.length, CS, 'resume.bin');
    const first = await open(guid);
    const part = await sendWindowed(first.s, data, CS, [0, 2, 4, 6, 8, 10], 4, false);
    expect(part.acks).toHaveLength(6);
    expect((await first.s.close(1000)).code).toBe(1000);
    const second = await open(guid);
    expect(second.hello.missing).toEqual([1, 3, 5, 7, 9]);
    // A resent chunk is harmless: acked as a duplicate, counted once.
    const r = await sendWindowed(second.s, data, CS, [0, ...second.hello.missing], 3);
    expect(r.acks.find((a) => a.c === 0)).toEqual({ t: 'ack', c: 0, dup: true, rc: expect.any(Number), rb: expect.any(Number) });
    expect(r.acks.filter((a) => a.dup === undefined)).toHaveLength(5);
    expectCompleteTail(r.tail, 'resume.bin', data.length, totalChunks);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'resume.bin')), data)).toBe(0);
  });

  it('takes chunks of one upload from two connections at once; both hear complete', async () => {
    server = await startServer();
    const data = bytesOf(24 * CS + 17);
    const { guid, totalChunks } = await init(data.length, CS, 'two.bin');
    const a = await open(guid);
    const b = await open(guid);
    const all = [...Array(totalChunks).keys()];
    // Overlapping halves: chunks 10..14 go over both connections.
    const [ra, rb] = await Promise.all([
      sendWindowed(a.s, data, CS, all.filter((c) => c < 15), 8),
      sendWindowed(b.s, data, CS, all.filter((c) => c >= 10).reverse(), 8),
    ]);
    expect([...ra.errors, ...rb.errors]).toEqual([]);
    const fresh = [...ra.acks, ...rb.acks].filter((x) => x.dup === undefined).map((x) => x.c);
    expect(fresh.sort((x, y) => x - y)).toEqual(all);
    for (const r of [ra, rb]) expectCompleteTail(r.tail, 'two.bin', data.length, totalChunks);
    expect(await a.s.closed).toEqual({ code: 1000, reason: 'Upload complete' });
    expect(await b.s.closed).toEqual({ code: 1000, reason: 'Upload complete' });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'two.bin')), data)).toBe(0);
  });

  it('answers status with progress and per-chunk errors without closing', async () => {
    server = await startServer();
    const data = bytesOf(2 * CS);
    const { guid } = await init(data.length, CS);
    const { s } = await open(guid);
    s.nativeStatus();
    expect(await s.nextFrame()).toEqual({ t: 'progress', rc: 0, tc: 2, rb: 0, complete: false });
    s.nativeChunk(2, slice(data, CS, 0));
    expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_CHUNK_OUT_OF_RANGE', c: 2, retry: false });
    s.nativeChunk(1, slice(data, CS, 1).subarray(1));
    expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_CHUNK_TOO_SMALL', c: 1, retry: false });
    s.nativeChunk(0, slice(data, CS, 0));
    expect(await s.nextFrame()).toEqual({ t: 'ack', c: 0, rc: 1, rb: CS });
    s.nativeStatus();
    expect(await s.nextFrame()).toEqual({ t: 'progress', rc: 1, tc: 2, rb: CS, complete: false });
  });

  it.each([
    ['a text frame', (s: TestSocket) => s.sendText('{"type":"getProgress"}')],
    ['a malformed frame', (s: TestSocket) => s.sendBinary(new Uint8Array([3, 0, 0x81, 0xa1]))],
  ])('closes with 4000 after an error on %s, and keeps the upload', async (_name, send) => {
    server = await startServer();
    const { guid } = await init(CS, CS);
    const { s } = await open(guid);
    send(s);
    expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_CHUNK_HEADER_INVALID', retry: false });
    expect((await s.closed).code).toBe(4000);
    expect(await status(guid)).toMatchObject({ uploadStatus: 'active' });
  });

  it('closes a client that exceeds its window with 4000 (ERR_WINDOW_EXCEEDED)', async () => {
    server = await startServer({ wsWindow: 2 });
    const data = bytesOf(2 * CS);
    const { guid } = await init(data.length, CS, 'w.bin');
    // A PUT of chunk 0 that sends half its body holds chunk 0's claim, so the frames below stay in flight.
    const url = new URL(`${server.base}${PREFIX}/upload-chunk?guid=${guid}&chunk=0`);
    const put = http.request(url, { method: 'PUT', headers: { 'content-length': String(CS) } });
    put.on('error', () => {});
    put.write(slice(data, CS, 0).subarray(0, CS / 2));
    await new Promise((r) => setTimeout(r, 200));
    const { s, hello } = await open(guid);
    expect(hello.window).toBe(1); // slow start: 1 until a chunk is answered
    for (let i = 0; i < 2; i++) s.nativeChunk(0, slice(data, CS, 0));
    expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_WINDOW_EXCEEDED' });
    expect((await s.closed).code).toBe(4000);
    put.destroy();
    // The chunk frames that were within the window still land (their bytes were whole); the upload goes on.
    const again = await open(guid);
    const r = await sendWindowed(again.s, data, CS, [0, 1], 2);
    expectCompleteTail(r.tail, 'w.bin', data.length, 2);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'w.bin')), data)).toBe(0);
  });

  it('shares the in-flight budget among connections: slow start, then windows shrink as connections open and grow as they close', async () => {
    // Windows share half of maxInFlightBytes: 8 MiB of 1 MiB chunks -> 8 for one connection, 4 each for two.
    server = await startServer({ maxInFlightBytes: 16 * MiB });
    const files = await Promise.all([20 * MiB, 6 * MiB + 1, 1 * MiB].map((size, i) => init(size, MiB, `s${i}.bin`)));
    const data = bytesOf(20 * MiB);
    const a = await open(files[0]!.guid);
    expect(a.hello.window).toBe(1);
    // Each answered chunk doubles a's window (the new window comes before the ack) up to its share, 8.
    const ramp = await sendWindowed(a.s, data, MiB, [...Array(10).keys()], 8, false);
    expect(ramp.windows).toEqual([2, 4, 8]);
    expect(ramp.maxInFlight).toBe(8);
    const b = await open(files[1]!.guid);
    expect(b.hello.window).toBe(1);
    expect(await a.s.nextFrame(undefined, true)).toEqual({ t: 'window', window: 4 });
    const c = await open(files[2]!.guid);
    expect(c.hello.window).toBe(1);
    expect(await a.s.nextFrame(undefined, true)).toEqual({ t: 'window', window: 2 }); // b and c are still at 1 (slow start)
    await c.s.close();
    expect(await a.s.nextFrame(undefined, true)).toEqual({ t: 'window', window: 4 });

    // Chunks a client sent before it read a lowered window are still taken: connection a was told 8 once, so 6
    // unanswered chunks are within what it may have in flight.
    const burst = await sendWindowed(a.s, data, MiB, [10, 11, 12, 13, 14, 15], 6, false, false);
    expect(burst.errors).toEqual([]);
    expect(burst.maxInFlight).toBe(6);
    expect(burst.acks.map((m) => m.c).sort((x, y) => x - y)).toEqual([10, 11, 12, 13, 14, 15]);
    const rest = await sendWindowed(a.s, data, MiB, [16, 17, 18, 19], 4);
    expectCompleteTail(rest.tail, 's0.bin', data.length, 20);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 's0.bin')), data)).toBe(0);
    // Alone now, b ramps up to the whole budget's window.
    const dataB = bytesOf(6 * MiB + 1);
    const rb = await sendWindowed(b.s, dataB, MiB, [6, 0, 5, 1, 4, 2, 3], 8);
    expect(rb.windows).toEqual([2, 4, 8]);
    expectCompleteTail(rb.tail, 's1.bin', dataB.length, 7);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 's1.bin')), dataB)).toBe(0);
  });

  it('with more connections than the budget has chunks for, they take turns (window 0, then 1)', async () => {
    // 2 MiB of window budget in 1 MiB chunks: two slots for three connections.
    server = await startServer({ maxInFlightBytes: 4 * MiB, batchSize: 1 * MiB });
    const files = await Promise.all([0, 1, 2].map((i) => init(3 * MiB + i, MiB, `t${i}.bin`)));
    const a = await open(files[0]!.guid);
    const b = await open(files[1]!.guid);
    const c = await open(files[2]!.guid);
    expect([a.hello.window, b.hello.window, c.hello.window]).toEqual([1, 1, 0]);
    // a's chunk is answered while c waits: a is told 0 before its ack, and c gets the slot.
    const data = bytesOf(3 * MiB);
    a.s.nativeChunk(0, slice(data, MiB, 0));
    expect(await a.s.nextFrame(undefined, true)).toEqual({ t: 'window', window: 0 });
    expect(await a.s.nextFrame()).toMatchObject({ t: 'ack', c: 0 });
    expect(await c.s.nextFrame(undefined, true)).toEqual({ t: 'window', window: 1 });
    // b's turn ends the same way, and the slot goes back to a, which has waited longest.
    const dataB = bytesOf(3 * MiB + 1);
    b.s.nativeChunk(3, slice(dataB, MiB, 3));
    expect(await b.s.nextFrame(undefined, true)).toEqual({ t: 'window', window: 0 });
    expect(await b.s.nextFrame()).toMatchObject({ t: 'ack', c: 3 });
    expect(await a.s.nextFrame(undefined, true)).toEqual({ t: 'window', window: 1 });
    // c closes: its slot goes to b. Both finish, taking turns, byte for byte.
    await c.s.close();
    expect(await b.s.nextFrame(undefined, true)).toEqual({ t: 'window', window: 1 });
    await Promise.all([
      (async () => {
        const r = await sendWindowed(a.s, data, MiB, [1, 2], 1);
        expect(r.errors).toEqual([]);
      })(),
      (async () => {
        const r = await sendWindowed(b.s, dataB, MiB, [0, 1, 2], 1);
        expect(r.errors).toEqual([]);
      })(),
    ]);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 't0.bin')), data)).toBe(0);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 't1.bin')), dataB)).toBe(0);
  });

  it('closes on a frame over maxFrame with 1006 (uWS sends no close frame)', async () => {
    server = await startServer({ maxChunkSize: 128 * 1024 });
    const { guid } = await init(2 * CS, CS);
    const { s, hello } = await open(guid);
    expect(hello.maxFrame).toBe(128 * 1024 + 2 + 4096);
    s.sendBinary(new Uint8Array(hello.maxFrame + 1));
    expect(await s.closed).toEqual({ code: 1006, reason: '' });
    expect(await status(guid)).toMatchObject({ uploadStatus: 'active', receivedChunks: 0 });
  });

  it('cancel deletes the upload and closes every connection to it with 4001', async () => {
    server = await startServer();
    const { guid } = await init(2 * CS, CS);
    const a = await open(guid);
    const b = await open(guid);
    a.s.nativeCancel();
    for (const { s } of [a, b]) {
      expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_UPLOAD_CANCELLED', retry: false });
      expect((await s.closed).code).toBe(4001);
    }
    const r = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(r.json.data).toMatchObject({ uploadStatus: 'cancelled', missingChunks: [] });
  });

  // A refused completion used to reach every connection as ERR_UPLOAD_FAILED with 4009, whatever refused it; a PUT
  // of the same last chunk hears the real code. The connections must hear that code, its message, and its close code.
  it.each(completionFailures)(
    'tells every connection of an upload whose completion fails the real code and its close code: %s',
    async (_label, options, prepare, code, message, close) => {
      server = await startServer(options);
      const data = bytesOf(2 * CS);
      const { guid } = await init(data.length, CS, 'done.bin');
      await prepare(server.dir, 'done.bin');
      const a = await open(guid);
      const b = await open(guid);
      a.s.nativeChunk(0, slice(data, CS, 0));
      expect(await a.s.nextFrame()).toEqual({ t: 'ack', c: 0, rc: 1, rb: CS });
      a.s.nativeChunk(1, slice(data, CS, 1));
      for (const { s } of [a, b]) {
        expect(await s.nextFrame()).toEqual({ t: 'error', code, message, retry: false });
        expect(await s.closed).toEqual({ code: close, reason: message });
      }
      expect(await status(guid)).toMatchObject({ uploadStatus: 'failed' });
    },
  );
});

describe('WebSocket, updraft.v1 parts', () => {
  it('streams chunks sent as parts across slab boundaries, mixed with whole chunk frames, byte for byte', async () => {
    // 64 KiB slabs and 256 KiB chunks: every chunk spans four slabs, and 20,000-byte parts end off the 4 KiB grid.
    server = await startServer({ batchSize: 64 * 1024 });
    const cs = 256 * 1024;
    const data = bytesOf(9 * cs + 4097);
    const { guid, totalChunks } = await init(data.length, cs, 'parts.bin');
    const { s } = await open(guid);
    const all = [...Array(totalChunks).keys()];
    const parts = await sendWindowed(s, data, cs, shuffled(all.filter((c) => c % 3 !== 0), 7), 8, false, true, 20_000);
    expect(parts.errors).toEqual([]);
    expect(parts.acks.every((a) => a.dup === undefined)).toBe(true);
    // One byte per part, and the chunks that are left as whole frames.
    s.nativeParts(3, slice(data, cs, 3).subarray(0, 300), 1);
    s.nativePart(3, 300, slice(data, cs, 3).subarray(300));
    expect(await s.nextFrame()).toMatchObject({ t: 'ack', c: 3 });
    const rest = await sendWindowed(s, data, cs, all.filter((c) => c % 3 === 0 && c !== 3), 8);
    expect(rest.errors).toEqual([]);
    expectCompleteTail(rest.tail, 'parts.bin', data.length, totalChunks);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'parts.bin')), data)).toBe(0);
  });

  it('answers a chunk already stored, sent again as parts, as a duplicate and keeps the stored bytes', async () => {
    server = await startServer();
    const data = bytesOf(2 * CS);
    const { guid } = await init(data.length, CS, 'dup.bin');
    const { s } = await open(guid);
    s.nativeParts(0, slice(data, CS, 0), 10_000);
    expect(await s.nextFrame()).toEqual({ t: 'ack', c: 0, rc: 1, rb: CS });
    s.nativeParts(0, bytesOf(CS), 10_000);
    expect(await s.nextFrame()).toEqual({ t: 'ack', c: 0, dup: true, rc: 1, rb: CS });
    const r = await sendWindowed(s, data, CS, [1], 8, true, true, 10_000);
    expectCompleteTail(r.tail, 'dup.bin', data.length, 2);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'dup.bin')), data)).toBe(0);
  });

  it('refuses one chunk (out of range, parts past its end) with a chunk error, drops its other parts, and goes on', async () => {
    server = await startServer();
    const data = bytesOf(2 * CS + 100);
    const { guid } = await init(data.length, CS, 'refused.bin');
    const { s } = await open(guid);
    s.nativeParts(7, bytesOf(CS), 16_384);
    expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_CHUNK_OUT_OF_RANGE', c: 7, retry: false });
    // The last chunk is 100 bytes: a second part that runs past its end.
    s.nativePart(2, 0, slice(data, CS, 2).subarray(0, 60));
    s.nativePart(2, 60, bytesOf(41));
    s.nativePart(2, 101, bytesOf(10)); // the rest of the refused chunk: dropped without a reply
    expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_CHUNK_TOO_LARGE', c: 2, retry: false });
    s.nativeStatus();
    expect(await s.nextFrame()).toEqual({ t: 'progress', rc: 0, tc: 3, rb: 0, complete: false });
    const r = await sendWindowed(s, data, CS, [2, 0, 1], 8, true, true, 16_384);
    expect(r.errors).toEqual([]);
    expectCompleteTail(r.tail, 'refused.bin', data.length, 3);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'refused.bin')), data)).toBe(0);
  });

  it('refuses a first part longer than its chunk with a chunk error, drops the rest of that chunk, and goes on', async () => {
    server = await startServer();
    const data = bytesOf(CS + 100);
    const { guid } = await init(data.length, CS, 'long-first.bin');
    const { s } = await open(guid);
    // The last chunk is 100 bytes; its first part alone is longer.
    s.nativePart(1, 0, bytesOf(150));
    expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_CHUNK_TOO_LARGE', c: 1, retry: false });
    s.nativePart(1, 150, bytesOf(10)); // the rest of the refused chunk: dropped without a reply
    s.nativeStatus();
    expect(await s.nextFrame()).toEqual({ t: 'progress', rc: 0, tc: 2, rb: 0, complete: false });
    const r = await sendWindowed(s, data, CS, [1, 0], 8, true, true, 16_384);
    expect(r.errors).toEqual([]);
    expectCompleteTail(r.tail, 'long-first.bin', data.length, 2);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'long-first.bin')), data)).toBe(0);
  });

  it('after a refused chunk, a later part of another chunk is still a protocol error (4000)', async () => {
    server = await startServer();
    const data = bytesOf(2 * CS);
    const { guid } = await init(data.length, CS, 'after.bin');
    const { s } = await open(guid);
    s.nativePart(9, 0, data.subarray(0, 100));
    expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_CHUNK_OUT_OF_RANGE', c: 9 });
    s.nativePart(9, 100, data.subarray(100, 200)); // the refused chunk's rest: dropped
    s.nativePart(1, 100, data.subarray(CS + 100, CS + 200));
    expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_CHUNK_HEADER_INVALID', retry: false });
    expect((await s.closed).code).toBe(4000);
    expect(await status(guid)).toMatchObject({ uploadStatus: 'active', receivedChunks: 0 });
  });

  it.each([
    ['a first part that does not start at 0', (s: TestSocket, d: Uint8Array) => s.nativePart(0, 10, d.subarray(10, 20))],
    ['a gap between parts', (s: TestSocket, d: Uint8Array) => {
      s.nativePart(0, 0, d.subarray(0, 100));
      s.nativePart(0, 101, d.subarray(101, 200));
    }],
    ['a part that starts before the previous one ended (an overlap)', (s: TestSocket, d: Uint8Array) => {
      s.nativePart(0, 0, d.subarray(0, 100));
      s.nativePart(0, 50, d.subarray(50, 150));
    }],
    ['another chunk before the unfinished one ends', (s: TestSocket, d: Uint8Array) => {
      s.nativePart(0, 0, d.subarray(0, 100));
      s.nativePart(1, 0, d.subarray(CS, CS + 100));
    }],
    ['a whole chunk frame before the unfinished one ends', (s: TestSocket, d: Uint8Array) => {
      s.nativePart(0, 0, d.subarray(0, 100));
      s.nativeChunk(1, d.subarray(CS, 2 * CS));
    }],
    ['an empty part', (s: TestSocket) => s.sendBinary(encodeFrame({ t: 'part', c: 0, o: 0 }))],
  ])('closes with 4000 on %s; the unfinished chunk is not stored and can be sent again', async (_name, send) => {
    server = await startServer();
    const data = bytesOf(2 * CS);
    const { guid } = await init(data.length, CS, 'broken.bin');
    const { s } = await open(guid);
    send(s, data);
    expect(await s.nextFrame()).toMatchObject({ t: 'error', code: 'ERR_CHUNK_HEADER_INVALID', retry: false });
    expect((await s.closed).code).toBe(4000);
    expect(await status(guid)).toMatchObject({ uploadStatus: 'active', receivedChunks: 0, missingChunks: [0, 1] });
    // The half-received chunk's claim is gone: a PUT of it is written at once.
    expect((await putChunk(server.base, guid, 0, slice(data, CS, 0))).status).toBe(200);
    const again = await open(guid);
    const r = await sendWindowed(again.s, data, CS, [1], 8, true, true, 5000);
    expectCompleteTail(r.tail, 'broken.bin', data.length, 2);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'broken.bin')), data)).toBe(0);
  });

  it('counts the window slots of a client that sends parts at half a chunk: twice the window of one sending whole chunks', async () => {
    // Windows share half of maxInFlightBytes: 128 KiB, two 64 KiB chunks sent whole, four sent as parts.
    server = await startServer({ maxInFlightBytes: 256 * 1024, batchSize: 64 * 1024 });
    const data = bytesOf(16 * CS);
    const whole = await init(data.length, CS, 'whole.bin');
    const w = await open(whole.guid);
    const rw = await sendWindowed(w.s, data, CS, [...Array(16).keys()], 8);
    expect(Math.max(...rw.windows)).toBe(2);
    expectCompleteTail(rw.tail, 'whole.bin', data.length, 16);
    const parts = await init(data.length, CS, 'parts.bin');
    const p = await open(parts.guid);
    const rp = await sendWindowed(p.s, data, CS, [...Array(16).keys()], 8, true, true, 20_000);
    expect(Math.max(...rp.windows)).toBe(4);
    expect(rp.maxInFlight).toBe(4);
    expectCompleteTail(rp.tail, 'parts.bin', data.length, 16);
    for (const name of ['whole.bin', 'parts.bin']) expect(Buffer.compare(await fsp.readFile(path.join(server.dir, name)), data)).toBe(0);
  });

  it('a client that sends whole chunks as single parts after a chunk in small parts gets the whole-chunk window back', async () => {
    server = await startServer({ maxInFlightBytes: 256 * 1024, batchSize: 64 * 1024 });
    const data = bytesOf(16 * CS);
    const { guid } = await init(data.length, CS, 'big-parts.bin');
    const { s } = await open(guid);
    const small = await sendWindowed(s, data, CS, [...Array(8).keys()], 8, false, true, 20_000);
    expect(Math.max(...small.windows)).toBe(4);
    // A part of a whole chunk is one whole chunk in uWS's buffer: its slots count whole again (window 2).
    const big = await sendWindowed(s, data, CS, [...Array(8).keys()].map((i) => 8 + i), 8, true, true, CS);
    expect(big.windows).toContain(2);
    expect(big.windows.at(-1)).toBe(2);
    expect(big.errors).toEqual([]);
    expectCompleteTail(big.tail, 'big-parts.bin', data.length, 16);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'big-parts.bin')), data)).toBe(0);
  });

  it('a client that sends parts keeps its half-weight window when its short last chunk, over half a chunk, comes whole', async () => {
    // docs/PROTOCOL.md, Parts count half: a frame of the last chunk may be short and go whole without making the
    // slots count whole again. Windows share 128 KiB: 4 chunks of 64 KiB as parts, 2 whole.
    server = await startServer({ maxInFlightBytes: 256 * 1024, batchSize: 64 * 1024 });
    const data = bytesOf(15 * CS + 40_000);
    const { guid } = await init(data.length, CS, 'last-whole.bin');
    const { s } = await open(guid);
    const parts = await sendWindowed(s, data, CS, [...Array(15).keys()], 8, false, true, 20_000);
    expect(parts.errors).toEqual([]);
    expect(Math.max(...parts.windows)).toBe(4);
    const last = await sendWindowed(s, data, CS, [15], 8);
    expect(last.errors).toEqual([]);
    expect(last.windows).toEqual([]);
    expect(s.windows.at(-1)).toBe(4);
    expectCompleteTail(last.tail, 'last-whole.bin', data.length, 16);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'last-whole.bin')), data)).toBe(0);
  });

  it('drops a chunk whose parts stop (wsPartTimeout): chunk error, claim and slot freed, sent again from 0', async () => {
    server = await startServer({ wsPartTimeout: 300, batchSize: 64 * 1024 });
    const cs = 256 * 1024;
    const data = bytesOf(2 * cs);
    const { guid } = await init(data.length, cs, 'stalled.bin');
    const { s } = await open(guid);
    s.nativePart(0, 0, slice(data, cs, 0).subarray(0, 100_000));
    const t0 = performance.now();
    expect(await s.nextFrame(5000)).toMatchObject({ t: 'error', code: 'ERR_CHUNK_INCOMPLETE', c: 0, retry: true });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(250);
    // Nothing of it is stored, its slabs are back, and its claim is gone: a PUT of it is written at once.
    expect(await status(guid)).toMatchObject({ uploadStatus: 'active', receivedChunks: 0, missingChunks: [0, 1] });
    expect(await inFlightBytesSettled()).toBe(0);
    expect((await putChunk(server.base, guid, 1, slice(data, cs, 1))).status).toBe(200);
    // The rest of the dropped chunk, arriving late, is dropped without a reply; then it is sent again from 0 on the
    // same connection, which stayed open.
    s.nativePart(0, 100_000, slice(data, cs, 0).subarray(100_000, 120_000));
    const r = await sendWindowed(s, data, cs, [0], 8, true, true, 50_000);
    expect(r.errors).toEqual([]);
    expect(r.acks).toMatchObject([{ t: 'ack', c: 0 }]);
    expectCompleteTail(r.tail, 'stalled.bin', data.length, 2);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'stalled.bin')), data)).toBe(0);
  });

  it('while others wait for a window, a chunk whose parts trickle in (each in time) is dropped and its slot goes on', async () => {
    // 1 MiB of window budget, 1 MiB chunks: a chunk in flight on a leaves no room for b, which waits (window 0).
    server = await startServer({ maxInFlightBytes: 2 * MiB, batchSize: 64 * 1024, wsPartTimeout: 1000 });
    const dataA = bytesOf(2 * MiB);
    const fa = await init(dataA.length, MiB, 'a.bin');
    const fb = await init(MiB, MiB, 'b.bin');
    const a = await open(fa.guid);
    let off = 0;
    const trickle = (n: number): void => {
      a.s.nativePart(0, off, slice(dataA, MiB, 0).subarray(off, off + n));
      off += n;
    };
    trickle(100 * 1024);
    // Alone, a trickle of 1 KiB every 200 ms (5 KiB/s) is slow but kept: nobody waits for its slot.
    const alone = setInterval(() => trickle(1024), 200);
    await new Promise((r) => setTimeout(r, 2200));
    clearInterval(alone);
    const b = await open(fb.guid);
    expect(b.hello.window).toBe(0);
    const started = performance.now();
    const waiting = setInterval(() => trickle(1024), 200);
    try {
      expect(await a.s.nextFrame(5000)).toMatchObject({ t: 'error', code: 'ERR_CHUNK_INCOMPLETE', c: 0, retry: true, message: expect.stringContaining('while other connections wait for a window') });
    } finally {
      clearInterval(waiting);
    }
    expect(performance.now() - started).toBeLessThan(2500); // one period of 1 s (wsPartTimeout), not the trickle's length
    expect(await b.s.nextFrame(5000, true)).toEqual({ t: 'window', window: 1 });
    // b's chunk goes through; a's dropped chunk left nothing behind and is sent again whole.
    const dataB = bytesOf(MiB);
    const rb = await sendWindowed(b.s, dataB, MiB, [0], 1);
    expect(rb.errors).toEqual([]);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'b.bin')), dataB)).toBe(0);
    expect(await status(fa.guid)).toMatchObject({ receivedChunks: 0, missingChunks: [0, 1] });
    const ra = await sendWindowed(a.s, dataA, MiB, [0, 1], 1);
    expect(ra.errors).toEqual([]);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'a.bin')), dataA)).toBe(0);
  });

  it('a connection lost in the middle of a chunk leaves that chunk unset and unclaimed', async () => {
    server = await startServer({ batchSize: 64 * 1024 });
    const cs = 256 * 1024;
    const data = bytesOf(2 * cs);
    const { guid } = await init(data.length, cs, 'lost.bin');
    const { s } = await open(guid);
    s.nativePart(1, 0, slice(data, cs, 1).subarray(0, 200_000)); // three slabs handed to the writers, one filling
    s.nativeStatus();
    expect(await s.nextFrame()).toMatchObject({ t: 'progress', rc: 0 });
    s.ws.terminate();
    await s.closed;
    // Its slabs come back once the writes queued before the close have run (the pool may still be starting).
    expect(await inFlightBytesSettled()).toBe(0);
    expect(await status(guid)).toMatchObject({ receivedChunks: 0, missingChunks: [0, 1] });
    expect((await putChunk(server.base, guid, 1, slice(data, cs, 1))).status).toBe(200);
    expect((await putChunk(server.base, guid, 0, slice(data, cs, 0))).status).toBe(200);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'lost.bin')), data)).toBe(0);
  });
});

function crc(b: Uint8Array): string {
  return crc32(b).toString(16).padStart(8, '0');
}

/** A different digest of the same length. */
function flipHex(hex: string): string {
  return (hex[0] === '0' ? '1' : '0') + hex.slice(1);
}
