/**
 * The WebSocket transport, PSWebHost protocol (issue 3): a text `chunk` message, then the chunk as one binary
 * message; `progress` after every binary message; `complete` only once the file is in place; then close 1000.
 * Also the upgrade checks shared with updraft.v1 (auth, ownership, Origin, subprotocol) and the per-user cap.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { serveOptions } from '../../src/cli/main.js';
import { OptionsError, resolveOptions } from '../../src/index.js';
import { PREFIX, bytesOf, call, initUpload, putChunks, shuffled, slice, startServer } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';
import { TestSocket, UpgradeRefused } from '../fixtures/ws-client.js';
import { completionFailures } from '../fixtures/completion-failures.js';

const CS = 64 * 1024;
const ALICE = 'alice-token-0001';
const BOB = 'bob-token-000002';
const auth = (t: string) => ({ authorization: `Bearer ${t}` });

let server: TestServer | null = null;
const sockets: TestSocket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.ws.terminate();
  await server?.close();
  server = null;
});

/** What the target file held at the moment each socket's `complete` arrived (read synchronously on arrival). */
const fileAtComplete = new WeakMap<TestSocket, Buffer | null>();

async function open(guid: string, o: Parameters<typeof TestSocket.open>[2] = {}): Promise<TestSocket> {
  const s = await TestSocket.open(server!.base, guid, o);
  sockets.push(s);
  const dir = server!.dir;
  s.ws.on('message', (d: Buffer, binary: boolean) => {
    if (binary) return;
    const m = JSON.parse(d.toString());
    if (m.type === 'complete') fileAtComplete.set(s, fs.existsSync(path.join(dir, m.fileName)) ? fs.readFileSync(path.join(dir, m.fileName)) : null);
  });
  return s;
}

async function init(size: number, fileName = 'f.bin', headers: Record<string, string> = {}) {
  const r = await initUpload(server!.base, { fileName, fileSize: size, chunkSize: CS }, headers);
  expect(r.status, JSON.stringify(r.json)).toBe(200);
  return r.json.data as { guid: string; totalChunks: number };
}

async function status(guid: string, headers: Record<string, string> = {}) {
  return (await call(server!.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`, undefined, headers)).json.data!;
}

async function refused(guid: string, o: Parameters<typeof TestSocket.open>[2] = {}): Promise<UpgradeRefused> {
  const e = await TestSocket.open(server!.base, guid, o).then(
    (s) => {
      sockets.push(s);
      throw new Error('upgrade was accepted');
    },
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(UpgradeRefused);
  return e as UpgradeRefused;
}

/**
 * Waits for `complete` and checks, at the moment it arrives, that the file is in place with the right bytes; then
 * that the close (1000 "Upload complete") comes after it and nothing else does.
 */
async function expectCompletion(s: TestSocket, file: string, data: Uint8Array): Promise<void> {
  let m = await s.nextJson();
  while (m.type === 'progress' && m.complete === false) m = await s.nextJson();
  if (m.type === 'progress') {
    expect(m).toMatchObject({ complete: true, receivedChunks: Math.ceil(data.length / CS), receivedBytes: data.length });
    m = await s.nextJson();
  }
  expect(m).toEqual({ type: 'complete', fileName: path.basename(file), size: data.length });
  const atComplete = fileAtComplete.get(s);
  expect(atComplete, 'the file exists when complete arrives').toBeInstanceOf(Buffer);
  expect(Buffer.compare(atComplete!, data)).toBe(0);
  expect(await s.closed).toEqual({ code: 1000, reason: 'Upload complete' });
  const last = s.log.at(-1)!;
  expect('close' in last).toBe(true);
  expect(s.pending).toBe(0);
}

/** Sends `order` one chunk at a time, waiting for each chunk's progress (except after the last). */
async function serial(s: TestSocket, data: Uint8Array, order: number[]): Promise<Array<Record<string, any>>> {
  const replies = [];
  for (const [i, c] of order.entries()) {
    s.psChunk(c, slice(data, CS, c), Math.max(0, data.length - (c + 1) * CS));
    if (i === order.length - 1) break;
    const m = await s.nextJson();
    replies.push(m);
    expect(m, JSON.stringify(m)).toMatchObject({ type: 'progress', chunkNumber: c, complete: false, totalChunks: Math.ceil(data.length / CS) });
  }
  return replies;
}


describe('WebSocket, PSWebHost protocol', () => {
  it('uploads serially; progress after each chunk; complete only once the file is in place; then close 1000', async () => {
    server = await startServer();
    const data = bytesOf(5 * CS + 777);
    const { guid, totalChunks } = await init(data.length, 'serial.bin');
    const s = await open(guid);
    expect(s.protocol).toBe('');
    const replies = await serial(s, data, [...Array(totalChunks).keys()]);
    expect(replies.map((r) => r.receivedChunks)).toEqual([1, 2, 3, 4, 5]);
    expect(replies.map((r) => r.receivedBytes)).toEqual([1, 2, 3, 4, 5].map((n) => n * CS));
    // The last chunk's own progress carries complete:true and comes before `complete`.
    const lastProgress = await s.nextJson();
    expect(lastProgress).toMatchObject({ type: 'progress', chunkNumber: 5, receivedChunks: 6, receivedBytes: data.length, complete: true });
    await expectCompletion(s, path.join(server.dir, 'serial.bin'), data);
    expect(await status(guid)).toMatchObject({ uploadStatus: 'completed', finalName: 'serial.bin' });
  });

  it('takes 5 chunks pipelined (no waiting) and answers each one', async () => {
    server = await startServer();
    const data = bytesOf(5 * CS);
    const { guid } = await init(data.length, 'pipelined.bin');
    const s = await open(guid, { protocols: ['json'] });
    expect(s.protocol).toBe('json');
    for (let c = 0; c < 5; c++) s.psChunk(c, slice(data, CS, c));
    const progress: Array<Record<string, any>> = [];
    let m = await s.nextJson();
    while (m.type === 'progress') {
      progress.push(m);
      m = await s.nextJson();
    }
    expect(progress.map((p) => p.chunkNumber).sort()).toEqual([0, 1, 2, 3, 4]);
    expect(progress.filter((p) => p.complete)).toHaveLength(1);
    expect(progress.at(-1)).toMatchObject({ complete: true, receivedChunks: 5 });
    expect(m).toEqual({ type: 'complete', fileName: 'pipelined.bin', size: data.length });
    expect(await s.closed).toEqual({ code: 1000, reason: 'Upload complete' });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'pipelined.bin')), data)).toBe(0);
  });

  /** A PUT of chunk 0 that sends half its body: it holds chunk 0's claim, so WebSocket chunks 0 stay in flight. */
  async function holdChunk0(guid: string, data: Buffer): Promise<http.ClientRequest> {
    const url = new URL(`${server!.base}${PREFIX}/upload-chunk?guid=${guid}&chunk=0`);
    const put = http.request(url, { method: 'PUT', headers: { 'content-length': String(CS) } });
    put.on('error', () => {});
    put.write(slice(data, CS, 0).subarray(0, CS / 2));
    await new Promise((r) => setTimeout(r, 200));
    return put;
  }

  it('refuses a chunk past wsWindow with ERR_WINDOW_EXCEEDED and keeps the connection open', async () => {
    server = await startServer({ wsWindow: 2 });
    const data = bytesOf(2 * CS);
    const { guid } = await init(data.length, 'window.bin');
    const put = await holdChunk0(guid, data);
    const s = await open(guid);
    for (let i = 0; i < 3; i++) s.psChunk(0, slice(data, CS, 0));
    expect(await s.nextJson()).toMatchObject({ type: 'error', code: 'ERR_WINDOW_EXCEEDED' });
    put.destroy();
    expect([await s.nextJson(), await s.nextJson()].map((m) => [m.type, m.chunkNumber])).toEqual([['progress', 0], ['progress', 0]]);
    s.psChunk(1, slice(data, CS, 1));
    expect(await s.nextJson()).toMatchObject({ type: 'progress', chunkNumber: 1, receivedChunks: 2, complete: true });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'window.bin')), data)).toBe(0);
  });

  it('bounds the bytes of PSWebHost chunks in flight over all connections (ERR_SERVER_BUSY), never refusing a connection its first chunk', async () => {
    // PSWebHost chunk copies share half of maxInFlightBytes: 2 chunks here, whatever the window (8).
    server = await startServer({ batchSize: CS, maxInFlightBytes: 4 * CS });
    const data = bytesOf(2 * CS);
    const { guid } = await init(data.length, 'bound.bin');
    const put = await holdChunk0(guid, data);
    const a = await open(guid);
    // The first two fill the bound; the third and fourth are within the window but past the bound.
    for (let i = 0; i < 4; i++) a.psChunk(0, slice(data, CS, 0));
    // The error names the chunk (an extra field), so a pipelining client knows which one to send again.
    expect(await a.nextJson()).toMatchObject({ type: 'error', code: 'ERR_SERVER_BUSY', chunkNumber: 0 });
    expect(await a.nextJson()).toMatchObject({ type: 'error', code: 'ERR_SERVER_BUSY', chunkNumber: 0 });
    // A connection with nothing in flight gets its chunk through even past the bound (a serial client is never
    // refused); its second is refused.
    const b = await open(guid);
    b.psChunk(0, slice(data, CS, 0));
    b.psChunk(0, slice(data, CS, 0));
    expect(await b.nextJson()).toMatchObject({ type: 'error', code: 'ERR_SERVER_BUSY' });
    put.destroy();
    // Every chunk taken is answered (written once, then duplicates), and the bound is free again.
    const replies = [await a.nextJson(), await a.nextJson(), await b.nextJson()];
    expect(replies.map((m) => [m.type, m.chunkNumber])).toEqual([['progress', 0], ['progress', 0], ['progress', 0]]);
    a.psChunk(1, slice(data, CS, 1));
    a.psChunk(1, slice(data, CS, 1));
    const last = [await a.nextJson(), await a.nextJson()];
    expect(last.map((m) => [m.type, m.chunkNumber])).toEqual([['progress', 1], ['progress', 1]]);
    expect(last.at(-1)).toMatchObject({ receivedChunks: 2, complete: true });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'bound.bin')), data)).toBe(0);
  });

  it('takes chunks out of order and duplicates, answering a duplicate with progress and counting it once', async () => {
    server = await startServer();
    const data = bytesOf(6 * CS + 5);
    const { guid, totalChunks } = await init(data.length, 'ooo.bin');
    const s = await open(guid);
    const order = shuffled([...Array(totalChunks).keys()], 3);
    // Every chunk but the last of `order`, then two duplicates, then the last one.
    const replies = await serial(s, data, order.slice(0, -1).concat([order[0]!]));
    s.psChunk(order[0]!, slice(data, CS, order[0]!));
    const dup = await s.nextJson();
    expect(dup).toMatchObject({ type: 'progress', chunkNumber: order[0], receivedChunks: totalChunks - 1, complete: false });
    expect(replies.at(-1)).toMatchObject({ receivedChunks: totalChunks - 1 });
    await serial(s, data, [order.at(-1)!]);
    await expectCompletion(s, path.join(server.dir, 'ooo.bin'), data);
  });

  it('answers getProgress at any time', async () => {
    server = await startServer();
    const data = bytesOf(3 * CS);
    const { guid } = await init(data.length);
    const s = await open(guid);
    s.sendText('{"type":"getProgress"}');
    expect(await s.nextJson()).toEqual({ type: 'progress', chunkNumber: -1, receivedChunks: 0, totalChunks: 3, receivedBytes: 0, complete: false });
    await serial(s, data, [1, 0]);
    await s.nextJson();
    s.sendText('{"type":"getProgress"}');
    expect(await s.nextJson()).toEqual({ type: 'progress', chunkNumber: -1, receivedChunks: 2, totalChunks: 3, receivedBytes: 2 * CS, complete: false });
  });

  it('refuses bad messages with an error, writes nothing, and keeps the connection open', async () => {
    server = await startServer();
    const data = bytesOf(3 * CS + 10);
    const { guid } = await init(data.length, 'bad.bin');
    const s = await open(guid);
    // Binary without a chunk message before it.
    s.sendBinary(slice(data, CS, 0));
    expect(await s.nextJson()).toMatchObject({ type: 'error', code: 'ERR_CHUNK_HEADER_INVALID' });
    // Wrong length, both ways; the announcement is consumed by the refused binary.
    s.psChunk(0, slice(data, CS, 0).subarray(1));
    expect(await s.nextJson()).toMatchObject({ type: 'error', code: 'ERR_CHUNK_TOO_SMALL' });
    s.psChunk(3, slice(data, CS, 2));
    expect(await s.nextJson()).toMatchObject({ type: 'error', code: 'ERR_CHUNK_TOO_LARGE' });
    s.sendBinary(slice(data, CS, 0));
    expect(await s.nextJson()).toMatchObject({ type: 'error', code: 'ERR_CHUNK_HEADER_INVALID' });
    // Out of range.
    s.psChunk(4, slice(data, CS, 0));
    expect(await s.nextJson()).toMatchObject({ type: 'error', code: 'ERR_CHUNK_OUT_OF_RANGE' });
    // Malformed JSON, an unknown type, a negative number.
    s.sendText('{"type":"chunk",');
    expect(await s.nextJson()).toMatchObject({ type: 'error', code: 'ERR_INVALID_JSON' });
    s.sendText('{"type":"upload"}');
    expect(await s.nextJson()).toMatchObject({ type: 'error', code: 'ERR_CHUNK_HEADER_INVALID' });
    s.sendText('{"type":"chunk","chunkNumber":-1}');
    expect(await s.nextJson()).toMatchObject({ type: 'error', code: 'ERR_CHUNK_HEADER_INVALID' });
    // A refused header cancels the one before it: chunk 1's bytes must not be stored as chunk 0.
    s.sendText('{"type":"chunk","chunkNumber":0}');
    s.sendText('{"type":"chunk","chunkNumber":1,"bytesRemaining":-1}');
    s.sendBinary(slice(data, CS, 1));
    expect(await s.nextJson()).toMatchObject({ type: 'error', code: 'ERR_CHUNK_HEADER_INVALID' });
    expect(await s.nextJson()).toMatchObject({ type: 'error', code: 'ERR_CHUNK_HEADER_INVALID' });
    expect(await status(guid)).toMatchObject({ receivedChunks: 0, receivedBytes: 0, uploadStatus: 'active' });
    // The same connection then completes the upload.
    await serial(s, data, [0, 1, 2, 3]);
    await expectCompletion(s, path.join(server.dir, 'bad.bin'), data);
  });

  it('closes on a frame over maxPayloadLength without storing it; the upload goes on over PUT', async () => {
    const maxChunkSize = 128 * 1024;
    server = await startServer({ maxChunkSize });
    const data = bytesOf(2 * CS);
    const { guid } = await init(data.length, 'big.bin');
    const s = await open(guid);
    s.psChunk(0, slice(data, CS, 0));
    expect(await s.nextJson()).toMatchObject({ type: 'progress', chunkNumber: 0, receivedChunks: 1 });
    // maxPayloadLength is maxChunkSize + 2 + 4096; one byte more closes the socket without a close frame.
    s.psChunk(1, bytesOf(maxChunkSize + 2 + 4096 + 1));
    const closed = await s.closed;
    expect(closed).toEqual({ code: 1006, reason: '' });
    expect(await status(guid)).toMatchObject({ receivedChunks: 1, missingChunks: [1], uploadStatus: 'active' });
    const r = await putChunks(server.base, guid, data, CS, [1]);
    expect(r[0]!.json.data).toMatchObject({ complete: true });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'big.bin')), data)).toBe(0);
  });

  it('leaves a chunk cut off by a disconnect unset, keeps the acknowledged ones, and finishes over PUT', async () => {
    server = await startServer();
    const data = bytesOf(4 * CS + 99);
    const { guid } = await init(data.length, 'resume.bin');
    const s = await open(guid);
    await serial(s, data, [0, 3, 1]);
    expect(await s.nextJson()).toMatchObject({ type: 'progress', chunkNumber: 1, receivedChunks: 3 });
    // Chunk 2: announced, then half of it as a first fragment, then the connection dies.
    s.sendText(JSON.stringify({ type: 'chunk', chunkNumber: 2, bytesRemaining: 0 }));
    s.sendBinary(slice(data, CS, 2).subarray(0, CS / 2), false);
    await s.terminate();
    // The server may see the drop a moment later; the status must never claim chunk 2.
    await new Promise((r) => setTimeout(r, 100));
    expect(await status(guid)).toMatchObject({ receivedChunks: 3, missingChunks: [2, 4], uploadStatus: 'active' });
    const replies = await putChunks(server.base, guid, data, CS, [2, 4], 1);
    expect(replies.map((r) => r.status)).toEqual([200, 200]);
    expect(replies[1]!.json.data).toMatchObject({ complete: true });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'resume.bin')), data)).toBe(0);
  });

  it('tells a second connection of the same upload when the first one completes it', async () => {
    server = await startServer();
    const data = bytesOf(2 * CS);
    const { guid } = await init(data.length, 'two.bin');
    const a = await open(guid);
    const b = await open(guid);
    await serial(a, data, [0, 1]);
    await expectCompletion(a, path.join(server.dir, 'two.bin'), data);
    expect(await b.nextJson()).toMatchObject({ type: 'progress', chunkNumber: -1, complete: true, receivedChunks: 2 });
    expect(await b.nextJson()).toEqual({ type: 'complete', fileName: 'two.bin', size: data.length });
    expect(await b.closed).toEqual({ code: 1000, reason: 'Upload complete' });
    // A connection to a completed upload hears that at once.
    const c = await open(guid);
    expect(await c.nextJson()).toMatchObject({ type: 'progress', complete: true });
    expect(await c.nextJson()).toMatchObject({ type: 'complete', fileName: 'two.bin' });
    expect((await c.closed).code).toBe(1000);
  });

  it('queues replies behind send backpressure and closes a client that never reads them with 1008', async () => {
    server = await startServer();
    const { guid } = await init(CS);
    const s = await open(guid);
    const socket = (s.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
    // Stop reading: the replies fill the kernel buffers (about 4-10 MB on loopback), then uWS's (256 KiB, where the
    // server starts queueing), then the server's queue, whose bound closes the connection.
    socket.pause();
    const asked = 150_000; // ~100-byte replies: 15 MB, well past the buffers
    for (let i = 0; i < asked; i++) s.sendText('{"type":"getProgress"}');
    await new Promise((r) => setTimeout(r, 1500));
    socket.resume();
    let replies = 0;
    for (;;) {
      const m = await s.nextJson(15_000).catch(() => null);
      if (!m) break;
      expect(m).toEqual({ type: 'progress', chunkNumber: -1, receivedChunks: 0, totalChunks: 1, receivedBytes: 0, complete: false });
      replies++;
    }
    expect((await s.closed).code).toBe(1008);
    // What was sent arrived whole and in order; nothing was dropped silently before the close.
    expect(replies).toBeGreaterThan(1000);
    expect(replies).toBeLessThan(asked);
    expect(await status(guid)).toMatchObject({ uploadStatus: 'active' });
  });

  // A refused completion used to reach every connection as ERR_UPLOAD_FAILED with 4009, whatever refused it; a PUT
  // of the same last chunk hears the real code. The connections must hear that code, its message, and its close code.
  it.each(completionFailures)(
    'tells every connection of an upload whose completion fails the real code and its close code: %s',
    async (_label, options, prepare, code, message, close) => {
      server = await startServer(options);
      const data = bytesOf(2 * CS);
      const { guid } = await init(data.length, 'done.bin');
      await prepare(server.dir, 'done.bin');
      const a = await open(guid);
      const b = await open(guid);
      await serial(a, data, [0, 1]);
      for (const s of [a, b]) {
        expect(await s.nextJson()).toEqual({ type: 'error', code, message });
        expect(await s.closed).toEqual({ code: close, reason: message });
      }
      expect(await status(guid)).toMatchObject({ uploadStatus: 'failed' });
    },
  );

  it('sends a plain GET on the upload URL to the status route, not to the WebSocket', async () => {
    server = await startServer();
    const { guid } = await init(CS);
    const r = await call(server.base, 'GET', `${PREFIX}/upload-chunk?guid=${guid}`);
    expect(r.status).toBe(200);
    expect(r.json.data).toMatchObject({ guid, uploadStatus: 'active' });
  });
});

describe('WebSocket upgrade checks', () => {
  const tokens = { [ALICE]: 'alice', [BOB]: 'bob' };

  it('refuses an unknown guid and another user`s guid alike (404), and a missing token (401)', async () => {
    server = await startServer({ tokens });
    const { guid } = await init(CS, 'a.bin', auth(ALICE));
    const unknown = await refused('00000000-0000-4000-8000-000000000000', { headers: auth(ALICE) });
    const other = await refused(guid, { headers: auth(BOB) });
    expect(unknown.status).toBe(404);
    expect(other.status).toBe(404);
    expect(other.body).toBe(unknown.body);
    expect(other.json).toMatchObject({ status: 'fail', code: 'ERR_UPLOAD_NOT_FOUND' });
    const noToken = await refused(guid);
    expect(noToken.status).toBe(401);
    expect(noToken.json.code).toBe('ERR_UNAUTHORIZED');
    expect((await refused(guid, { query: { token: 'wrong-token-123' } })).status).toBe(401);
    expect((await refused('', { headers: auth(ALICE) })).json.code).toBe('ERR_MISSING_GUID');
  });

  it('takes the token from Authorization, ?token= or a bearer.<token> subprotocol (answering the real one)', async () => {
    server = await startServer({ tokens });
    const data = bytesOf(3 * CS);
    const { guid } = await init(data.length, 'tok.bin', auth(ALICE));
    const a = await open(guid, { headers: auth(ALICE) });
    expect(a.protocol).toBe('');
    const b = await open(guid, { query: { token: ALICE } });
    const c = await open(guid, { protocols: ['json', `bearer.${ALICE}`] });
    expect(c.protocol).toBe('json');
    const d = await open(guid, { protocols: [`bearer.${ALICE}`, 'updraft.v1'] });
    expect(d.protocol).toBe('updraft.v1');
    expect((await d.nextFrame()).t).toBe('hello');
    // A bearer entry alone cannot be answered (the client needs a protocol it offered back): refused with 400.
    const alone = await refused(guid, { protocols: [`bearer.${ALICE}`] });
    expect(alone.status).toBe(400);
    expect(alone.json.code).toBe('ERR_INVALID_FIELD');
    expect((await refused(guid, { protocols: ['chat'], headers: auth(ALICE) })).status).toBe(400);
    a.psChunk(0, slice(data, CS, 0));
    b.psChunk(1, slice(data, CS, 1));
    expect(await a.nextJson()).toMatchObject({ type: 'progress', chunkNumber: 0 });
    expect(await b.nextJson()).toMatchObject({ type: 'progress', chunkNumber: 1 });
    c.psChunk(2, slice(data, CS, 2));
    await expectCompletion(c, path.join(server.dir, 'tok.bin'), data);
  });

  it('refuses a cross-site Origin (403) and allows same-origin (by Host or Sec-Fetch-Site), listed origins and no Origin', async () => {
    server = await startServer({ allowedOrigins: ['https://app.example.com'] });
    const { guid } = await init(CS);
    const port = new URL(server.base).port;
    const cross = await refused(guid, { origin: 'https://evil.example' });
    expect(cross.status).toBe(403);
    expect(cross.json).toMatchObject({ status: 'fail', code: 'ERR_FORBIDDEN_ORIGIN' });
    expect((await refused(guid, { origin: 'null' })).status).toBe(403);
    expect((await refused(guid, { origin: `http://127.0.0.1:${Number(port) + 1}` })).status).toBe(403);
    await open(guid, { origin: `http://127.0.0.1:${port}` });
    await open(guid, { origin: 'https://app.example.com' });
    await open(guid);
    // Behind a proxy that rewrote Host: the browser's own Sec-Fetch-Site says same-origin, and that is believed.
    await open(guid, { origin: 'https://files.example.com', headers: { 'sec-fetch-site': 'same-origin' } });
    expect((await refused(guid, { origin: 'https://files.example.com', headers: { 'sec-fetch-site': 'same-site' } })).status).toBe(403);
  });

  it('closes connections past the per-user cap with 4029 and counts closed ones out', async () => {
    server = await startServer({ maxWsConnectionsPerUser: 2 });
    const { guid } = await init(CS);
    const a = await open(guid);
    await open(guid);
    const c = await open(guid);
    expect(await c.nextJson()).toMatchObject({ type: 'error', code: 'ERR_RATE_LIMITED' });
    expect((await c.closed).code).toBe(4029);
    await a.close();
    await new Promise((r) => setTimeout(r, 50));
    const d = await open(guid);
    d.sendText('{"type":"getProgress"}');
    expect(await d.nextJson()).toMatchObject({ type: 'progress' });
  });

  it('counts the cap per user: one user at the cap leaves another user\'s connections open', async () => {
    server = await startServer({ tokens, maxWsConnectionsPerUser: 2 });
    const a = await init(CS, 'a.bin', auth(ALICE));
    const b = await init(CS, 'b.bin', auth(BOB));
    await open(a.guid, { headers: auth(ALICE) });
    await open(a.guid, { headers: auth(ALICE) });
    for (let i = 0; i < 2; i++) {
      const s = await open(b.guid, { headers: auth(BOB) });
      s.sendText('{"type":"getProgress"}');
      expect(await s.nextJson()).toMatchObject({ type: 'progress' });
    }
    const third = await open(b.guid, { headers: auth(BOB) });
    expect(await third.nextJson()).toMatchObject({ type: 'error', code: 'ERR_RATE_LIMITED' });
    expect((await third.closed).code).toBe(4029);
  });

  it('closes open connections with 1001 when the engine stops, and the upload resumes after a restart', async () => {
    server = await startServer();
    const data = bytesOf(2 * CS);
    const { guid } = await init(data.length, 'restart.bin');
    const s = await open(guid);
    await serial(s, data, [0, 1]);
    await server.close();
    const dir = server.dir;
    server = null;
    // The chunk sent last may or may not have been written before the stop; the progress for chunk 1 was lost.
    let m = await s.nextJson().catch(() => null);
    while (m && m.type === 'progress') m = await s.nextJson().catch(() => null);
    if (m) expect(m).toMatchObject({ type: 'error', code: 'ERR_SHUTTING_DOWN' });
    expect((await s.closed).code).toBe(1001);
    server = await startServer({ dir });
    const st = await status(guid);
    const r = await putChunks(server.base, guid, data, CS, st.missingChunks as number[]);
    if (r.length > 0) expect(r.at(-1)!.json.data).toMatchObject({ complete: true });
    for (let i = 0; i < 50 && !fs.existsSync(path.join(dir, 'restart.bin')); i++) await new Promise((res) => setTimeout(res, 20));
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'restart.bin')), data)).toBe(0);
  });
});

describe('WebSocket options', () => {
  it('has defaults and validates each option, naming it', () => {
    const d = resolveOptions({});
    expect(d).toMatchObject({ allowedOrigins: [], wsIdleTimeout: 32, maxWsConnectionsPerUser: 8, wsWindow: 8 });
    expect(resolveOptions({ allowedOrigins: ['*', 'HTTPS://App.Example.com:443', 'http://localhost:5173/'] }).allowedOrigins).toEqual([
      '*',
      'https://app.example.com',
      'http://localhost:5173',
    ]);
    for (const bad of [['https://a.example/path'], ['ftp://a.example'], ['a.example'], [5], 'https://a.example']) {
      expect(() => resolveOptions({ allowedOrigins: bad as never })).toThrow(OptionsError);
      expect(() => resolveOptions({ allowedOrigins: bad as never })).toThrow(/allowedOrigins/);
    }
    expect(resolveOptions({ wsIdleTimeout: 0 }).wsIdleTimeout).toBe(0);
    for (const bad of [4, 10, 964, -4]) expect(() => resolveOptions({ wsIdleTimeout: bad })).toThrow(/wsIdleTimeout/);
    expect(() => resolveOptions({ wsWindow: 0 })).toThrow(/wsWindow/);
    expect(() => resolveOptions({ wsWindow: 65 })).toThrow(/wsWindow/);
    expect(() => resolveOptions({ maxWsConnectionsPerUser: 0 })).toThrow(/maxWsConnectionsPerUser/);
  });

  it('takes --allowed-origin (repeatable) and UPDRAFT_ALLOWED_ORIGINS', () => {
    expect(serveOptions(['--allowed-origin', 'https://a.example', '--allowed-origin', '*'], {})).toMatchObject({
      allowedOrigins: ['https://a.example', '*'],
    });
    expect(serveOptions([], { UPDRAFT_ALLOWED_ORIGINS: 'https://a.example, https://b.example' })).toMatchObject({
      allowedOrigins: ['https://a.example', 'https://b.example'],
    });
    expect(serveOptions([], {})).not.toHaveProperty('allowedOrigins');
  });
});
