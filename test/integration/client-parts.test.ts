/**
 * The client's `partSize` (docs/PROTOCOL.md, updraft.v1 `part`): which frames it really sends, seen through a `ws`
 * that records every frame, and that the server stores them byte for byte.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { upload } from '../../src/client/index.js';
import { encodeFrame } from '../../src/protocol/codec.js';
import { PREFIX, bytesOf, initUpload, startServer } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';

const sent = vi.hoisted(() => [] as Array<{ t: string; c?: number; o?: number; length: number }>);
/**
 * Bad links, per test: `delay` holds back one part frame (and, to keep the order, every frame after it) for `ms`;
 * `blackHole` makes the next connection swallow every frame the client sends after hello, as a dead route would.
 */
const link = vi.hoisted(() => ({ delay: null as null | { c: number; o: number; ms: number }, blackHole: false, deafToClose: false, terminated: 0 }));

// The client loads `ws` on Node 20; this one records each frame's header before sending it.
vi.mock('ws', async (importOriginal) => {
  const real = await importOriginal<typeof import('ws')>();
  const { decodeClientFrame: decode } = await import('../../src/protocol/codec.js');
  class RecordingWebSocket extends real.WebSocket {
    #gate: Promise<void> | null = null;
    readonly #swallow: boolean;
    constructor(...args: ConstructorParameters<typeof real.WebSocket>) {
      super(...args);
      this.#swallow = link.blackHole;
      link.blackHole = false;
    }
    /** `deafToClose`: the close handshake never completes, as with a peer that is gone. */
    override close(...args: Parameters<InstanceType<typeof real.WebSocket>['close']>): void {
      if (link.deafToClose) return;
      super.close(...args);
    }
    /** Counted: a dead connection must be terminated, not closed with a handshake that holds the process 30 s. */
    override terminate(): void {
      link.terminated++;
      super.terminate();
    }
    override send(data: unknown, ...rest: unknown[]): void {
      const go = (): void => (super.send as (...a: unknown[]) => void)(data, ...rest);
      if (!(data instanceof Uint8Array)) return go();
      const { message, payload } = decode(data);
      sent.push({ ...message, length: payload.length } as (typeof sent)[number]);
      if (this.#swallow) return;
      const d = link.delay;
      if (d !== null && message.t === 'part' && message.c === d.c && message.o === d.o) {
        link.delay = null;
        this.#gate = new Promise((resolve) => setTimeout(resolve, d.ms));
      }
      if (this.#gate === null) return go();
      this.#gate = this.#gate.then(() => {
        if (this.readyState === real.WebSocket.OPEN) go();
      });
    }
  }
  return { ...real, default: RecordingWebSocket, WebSocket: RecordingWebSocket };
});

const KiB = 1024;
const MiB = 1024 * KiB;

let server: TestServer | null = null;
afterEach(async () => {
  sent.length = 0;
  link.delay = null;
  link.blackHole = false;
  link.deafToClose = false;
  link.terminated = 0;
  await server?.close();
  server = null;
});

async function send(data: Uint8Array, fileName: string, options: { partSize?: number; checksum?: 'sha256' }): Promise<void> {
  const endpoint = `${server!.base}${PREFIX}`;
  const r = await upload(data, { endpoint, fileName, chunkSize: MiB, transport: 'websocket', ...options }).done;
  expect(r.bytesByTransport).toEqual({ websocket: data.length, http: 0 });
  expect(Buffer.compare(await fsp.readFile(path.join(server!.dir, fileName)), data)).toBe(0);
}

describe('client: updraft.v1 parts', () => {
  it('sends a chunk longer than partSize as consecutive parts, and a shorter one whole', async () => {
    server = await startServer({ batchSize: 256 * KiB });
    const data = bytesOf(2 * MiB + 100 * KiB);
    await send(data, 'parts.bin', { partSize: 400_000 });
    const frames = sent.filter((m) => m.t === 'part' || m.t === 'chunk');
    for (const c of [0, 1]) {
      expect(frames.filter((m) => m.c === c)).toEqual([0, 400_000, 800_000].map((o) => ({ t: 'part', c, o, length: Math.min(400_000, MiB - o) })));
    }
    expect(frames.filter((m) => m.c === 2)).toEqual([{ t: 'chunk', c: 2, length: 100 * KiB }]);
  });

  it('sends every chunk whole with partSize 0, and with a checksum', async () => {
    server = await startServer();
    const data = bytesOf(2 * MiB + 1);
    await send(data, 'whole.bin', { partSize: 0 });
    await send(data, 'summed.bin', { partSize: 1000, checksum: 'sha256' });
    const frames = sent.filter((m) => m.t === 'part' || m.t === 'chunk');
    expect(frames).toHaveLength(6);
    expect(frames.every((m) => m.t === 'chunk')).toBe(true);
  });

  it('sends 2 MiB parts by default', async () => {
    server = await startServer();
    const data = bytesOf(5 * MiB);
    const endpoint = `${server.base}${PREFIX}`;
    await upload(data, { endpoint, fileName: 'default.bin', chunkSize: 5 * MiB, transport: 'websocket' }).done;
    expect(sent.filter((m) => m.t === 'part').map((m) => [m.o, m.length])).toEqual([[0, 2 * MiB], [2 * MiB, 2 * MiB], [4 * MiB, MiB]]);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'default.bin')), data)).toBe(0);
  });

  it('halves its parts when the server drops a chunk whose next part came too late, and sends it again', async () => {
    server = await startServer({ wsPartTimeout: 300, batchSize: 64 * KiB });
    const data = bytesOf(2 * MiB);
    link.delay = { c: 0, o: 512 * KiB, ms: 700 };
    const endpoint = `${server.base}${PREFIX}`;
    const r = await upload(data, { endpoint, fileName: 'slow.bin', chunkSize: MiB, transport: 'websocket', partSize: 512 * KiB }).done;
    expect(r.bytesByTransport).toEqual({ websocket: data.length, http: 0 });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'slow.bin')), data)).toBe(0);
    const chunk0 = sent.filter((m) => m.t === 'part' && m.c === 0).map((m) => [m.o, m.length]);
    // 512 KiB parts (the second one late), then, after ERR_CHUNK_INCOMPLETE, the chunk again in 256 KiB parts.
    expect(chunk0.slice(0, 2)).toEqual([[0, 512 * KiB], [512 * KiB, 512 * KiB]]);
    expect(chunk0.slice(-4)).toEqual([0, 1, 2, 3].map((i) => [i * 256 * KiB, 256 * KiB]));
  });

  it('gives up on a chunk the server keeps refusing with retry: true after retry.attempts, with the server code', async () => {
    server = await startServer({ wsPartTimeout: 300, batchSize: 64 * KiB });
    link.delay = { c: 0, o: 512 * KiB, ms: 700 }; // chunk 0 is dropped ERR_CHUNK_INCOMPLETE (retry: true) once
    const endpoint = `${server.base}${PREFIX}`;
    const retries: string[] = [];
    const h = upload(bytesOf(2 * MiB), { endpoint, fileName: 'no-retry.bin', chunkSize: MiB, transport: 'websocket', partSize: 512 * KiB, retry: { attempts: 0 } });
    h.on('retry', (e) => retries.push(`${e.operation} ${e.error.code}`));
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_CHUNK_INCOMPLETE' });
    expect(retries).toEqual([]);
    expect(sent.filter((m) => m.t === 'part' && m.c === 0 && m.o === 0)).toHaveLength(1); // not sent again
  });

  it('an aborted upload whose close handshake goes unanswered drops the connection after a second, not ws\'s 30 s', async () => {
    server = await startServer();
    const data = bytesOf(8 * MiB);
    const abort = new AbortController();
    const handle = upload(data, { endpoint: `${server.base}${PREFIX}`, fileName: 'aborted.bin', chunkSize: MiB, transport: 'websocket', signal: abort.signal });
    handle.on('progress', (p) => {
      if (p.loaded === 0 || abort.signal.aborted) return; // a chunk acknowledged: the WebSocket is up
      link.deafToClose = true;
      abort.abort();
    });
    await expect(handle.done).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(link.terminated).toBe(0); // the close is tried first
    await new Promise((r) => setTimeout(r, 1500));
    expect(link.terminated).toBe(1);
  });

  it('a paused connection closed to free its slot is dropped after a second when the close goes unanswered, and the upload resumes', async () => {
    server = await startServer();
    const data = bytesOf(16 * MiB);
    const handle = upload(data, { endpoint: `${server.base}${PREFIX}`, fileName: 'parked-deaf.bin', chunkSize: 256 * 1024, transport: 'websocket' });
    await new Promise<void>((resolve) => {
      const off = handle.on('progress', (p) => {
        if (p.loaded === 0) return;
        off();
        handle.pause();
        link.deafToClose = true; // the route dies while the upload is paused
        resolve();
      });
    });
    // Parked after 2 s of idle pause (the watchdog checks every second), then terminated a second after its close.
    const end = Date.now() + 8000;
    while (Date.now() < end && link.terminated === 0) await new Promise((r) => setTimeout(r, 50));
    expect(link.terminated).toBe(1);
    link.deafToClose = false;
    handle.resume();
    const r = await handle.done;
    expect(r.bytesByTransport).toEqual({ websocket: data.length, http: 0 });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'parked-deaf.bin')), data)).toBe(0);
  });

  it('drops a connection that carries nothing while chunks are in flight (stallTimeoutMs) and finishes on a new one', async () => {
    server = await startServer();
    const data = bytesOf(3 * MiB);
    link.blackHole = true; // the first connection says hello, then nothing the client sends gets through
    const endpoint = `${server.base}${PREFIX}`;
    const retries: string[] = [];
    const handle = upload(data, { endpoint, fileName: 'stall.bin', chunkSize: MiB, transport: 'websocket', stallTimeoutMs: 400, retry: { attempts: 3, baseDelayMs: 10, maxDelayMs: 20 } });
    handle.on('retry', (e) => retries.push(`${e.operation}: ${e.error.message}`));
    const r = await handle.done;
    expect(r.bytesByTransport).toEqual({ websocket: data.length, http: 0 });
    expect(retries).toHaveLength(1);
    expect(retries[0]).toMatch(/^websocket: No answer from the server for \d+ s$/);
    expect(link.terminated).toBe(1);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'stall.bin')), data)).toBe(0);
  });

  it('checks a connection waiting for its turn (window 0) with status requests, and drops it when they go unanswered', async () => {
    // One chunk fits the WebSocket budget, and a holder takes it: the next connection waits with a window of 0.
    server = await startServer({ maxInFlightBytes: 512 * KiB, batchSize: 64 * KiB });
    const endpoint = `${server.base}${PREFIX}`;
    const held = await initUpload(server.base, { fileName: 'holder.bin', fileSize: MiB, chunkSize: 256 * KiB });
    const holder = new WebSocket(`${server.base.replace('http', 'ws')}${PREFIX}/upload-chunk?guid=${held.json.data!.guid as string}`, ['updraft.v1']);
    await new Promise((r) => holder.once('message', r)); // hello
    holder.send(encodeFrame({ t: 'part', c: 0, o: 0 }, bytesOf(64 * KiB))); // a chunk begun and not ended: the slot stays taken
    await new Promise((r) => setTimeout(r, 100));

    link.blackHole = true; // the waiter's first connection: after hello, nothing it sends gets through
    const data = bytesOf(MiB);
    const retries: string[] = [];
    const h = upload(data, { endpoint, fileName: 'waiter.bin', chunkSize: 256 * KiB, transport: 'websocket', stallTimeoutMs: 400, retry: { attempts: 3, baseDelayMs: 10, maxDelayMs: 20 } });
    h.on('retry', (e) => retries.push(`${e.operation}: ${e.error.message}`));
    await new Promise((r) => setTimeout(r, 1500));
    // Still the holder's turn, and nothing of the waiter's in flight: its status requests found the dead path.
    expect(h.progress.loaded).toBe(0);
    expect(sent.some((m) => m.t === 'status')).toBe(true);
    expect(retries[0]).toMatch(/^websocket: No answer from the server for \d+ s$/);
    holder.close();
    const r = await h.done;
    expect(r.bytesByTransport).toEqual({ websocket: data.length, http: 0 });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'waiter.bin')), data)).toBe(0);
  });
});
