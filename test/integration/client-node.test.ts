/**
 * The Node client (src/client) against a real engine on 127.0.0.1: every transport and source kind, the WebSocket
 * dropped mid-upload (finishing over PUT, or over a reconnect), a WebSocket refused at the upgrade, resume with a
 * guid, cancel, pause, retries through injected 503s, and the errors a caller sees. Every file is compared byte
 * for byte with its source.
 */
import { execFileSync } from 'node:child_process';
import { getEventListeners } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CLIENT_ERROR_CODES, ClientError, ERROR_CODES, upload } from '../../src/client/index.js';
import { listResumable } from '../../src/client/resume-store.js';
import { ERROR_CODES as SERVER_ERROR_CODES } from '../../src/protocol/errors.js';
import type { RetryEvent, TransportEvent, UploadOptions } from '../../src/client/index.js';
import { PREFIX, bytesOf, call, initUpload, startServer, tempDir } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';
import { TestSocket } from '../fixtures/ws-client.js';
import { startProxy } from './client-fixtures.js';
import { completionFailures } from '../fixtures/completion-failures.js';
import type { TestProxy } from './client-fixtures.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let server: TestServer | null = null;
let proxy: TestProxy | null = null;
afterEach(async () => {
  await proxy?.close();
  proxy = null;
  await server?.close();
  server = null;
});

const endpoint = (base: string): string => `${base}${PREFIX}`;

async function expectStored(s: TestServer, name: string, data: Uint8Array): Promise<void> {
  const got = await fsp.readFile(path.join(s.dir, name));
  expect(got.length).toBe(data.length);
  expect(Buffer.compare(got, data)).toBe(0);
}

async function writeTemp(data: Uint8Array, name = 'source.bin'): Promise<string> {
  const p = path.join(await tempDir('updraft-client-src-'), name);
  await fsp.writeFile(p, data);
  return p;
}

/** A server whose chunk PUTs take `ms` longer (in its auth hook): slow enough to act mid-upload, deterministically. */
function slowPuts(ms: number): UploadOptionsForServer {
  return {
    authenticate: async (req) => {
      if (req.method === 'PUT') await new Promise((r) => setTimeout(r, ms));
      return 'anonymous';
    },
  };
}
type UploadOptionsForServer = Parameters<typeof startServer>[0];

/** Resolves once `loaded` has reached `bytes`. */
function whenLoaded(h: ReturnType<typeof upload>, bytes: number): Promise<void> {
  return new Promise((resolve) => {
    const off = h.on('progress', (p) => {
      if (p.loaded >= bytes) {
        off();
        resolve();
      }
    });
  });
}

describe('client: transports and sources', () => {
  it.each([
    ['auto', 'websocket'],
    ['websocket', 'websocket'],
    ['http', 'http'],
  ] as const)('transport %s uploads a Buffer over %s, byte for byte', async (transport, carrier) => {
    server = await startServer();
    const data = bytesOf(3 * MiB + 12345);
    const transports: TransportEvent[] = [];
    const h = upload(data, { endpoint: endpoint(server.base), fileName: `${transport}.bin`, chunkSize: 256 * KiB, transport });
    h.on('transport', (t) => transports.push(t));
    const r = await h.done;
    expect(r).toMatchObject({ fileName: `${transport}.bin`, size: data.length, resumedBytes: 0 });
    expect(r.bytesByTransport[carrier]).toBe(data.length);
    expect(r.bytesByTransport[carrier === 'http' ? 'websocket' : 'http']).toBe(0);
    expect(transports.map((t) => t.transport)).toEqual([carrier]);
    expect(h.state).toBe('done');
    await expectStored(server, `${transport}.bin`, data);
  });

  it('behind a proxy that serves the engine under a path prefix, the WebSocket goes through the prefix too', async () => {
    server = await startServer();
    proxy = await startProxy(server.base, { mount: '/updraft' });
    for (const transport of ['auto', 'websocket'] as const) {
      const data = bytesOf(MiB + 77);
      const h = upload(data, { endpoint: `${proxy.base}/updraft${PREFIX}`, fileName: `mounted-${transport}.bin`, chunkSize: 256 * KiB, transport, retry: { attempts: 1, baseDelayMs: 10 } });
      const r = await h.done;
      expect(r.bytesByTransport).toEqual({ websocket: data.length, http: 0 });
      await expectStored(server, `mounted-${transport}.bin`, data);
    }
    expect(proxy.stats.wsConnections).toBe(2);
  });

  it('takes turns over the WebSocket when the server has fewer window slots than connections (window 0, then 1)', async () => {
    // Windows share half of maxInFlightBytes: 512 KiB of 256 KiB chunks is 2 slots for 5 connections.
    server = await startServer({ maxInFlightBytes: 1 * MiB, batchSize: 256 * KiB });
    const files = Array.from({ length: 5 }, (_, i) => ({ name: `turn${i}.bin`, data: bytesOf(2 * MiB + i * 1001) }));
    const results = await Promise.all(
      files.map((f) => upload(f.data, { endpoint: endpoint(server!.base), fileName: f.name, chunkSize: 256 * KiB, transport: 'websocket' }).done),
    );
    results.forEach((r, i) => expect(r.bytesByTransport).toEqual({ websocket: files[i]!.data.length, http: 0 }));
    for (const f of files) await expectStored(server, f.name, f.data);
  });

  it('reads a file path lazily, chunk by chunk, with sha256 checksums on the WebSocket', async () => {
    server = await startServer();
    const data = bytesOf(5 * MiB + 1);
    const file = await writeTemp(data, 'lazy.bin');
    const r = await upload(file, { endpoint: endpoint(server.base), chunkSize: 512 * KiB, checksum: 'sha256', window: 4 }).done;
    expect(r).toMatchObject({ fileName: 'lazy.bin', size: data.length, bytesByTransport: { websocket: data.length, http: 0 } });
    await expectStored(server, 'lazy.bin', data);
  });

  it('uploads a Node Blob, a target folder, and a 0-byte file', async () => {
    server = await startServer();
    const data = bytesOf(700 * KiB);
    const r = await upload(new Blob([new Uint8Array(data)]), { endpoint: endpoint(server.base), fileName: 'blob.bin', targetPath: 'in/here', chunkSize: 64 * KiB }).done;
    expect(r.fileName).toBe('blob.bin');
    await expectStored(server, 'in/here/blob.bin', data);
    const empty = await upload(new Uint8Array(0), { endpoint: endpoint(server.base), fileName: 'empty.bin' }).done;
    expect(empty).toMatchObject({ fileName: 'empty.bin', size: 0 });
    expect((await fsp.stat(path.join(server.dir, 'empty.bin'))).size).toBe(0);
  });

  it('reports acknowledged bytes, a rate and an ETA while it runs', async () => {
    server = await startServer(slowPuts(20));
    const data = bytesOf(2 * MiB);
    const seen: Array<{ loaded: number; rate: number; eta: number | null }> = [];
    const h = upload(data, { endpoint: endpoint(server.base), fileName: 'p.bin', chunkSize: 64 * KiB, transport: 'http', parallel: 2 });
    h.on('progress', (p) => seen.push({ loaded: p.loaded, rate: p.bytesPerSecond, eta: p.etaSeconds }));
    await h.done;
    const loaded = seen.map((s) => s.loaded);
    expect(loaded).toEqual([...loaded].sort((a, b) => a - b)); // never goes backwards
    expect(loaded.at(-1)).toBe(data.length);
    expect(loaded.every((l) => l % (64 * KiB) === 0 || l === data.length)).toBe(true); // whole acknowledged chunks
    expect(seen.some((s) => s.rate > 0 && s.eta !== null && s.eta > 0)).toBe(true);
    expect(h.progress).toMatchObject({ state: 'done', fraction: 1, etaSeconds: 0 });
  });

  it.each([
    [
      'written over in place',
      async (p: string) => {
        const fh = await fsp.open(p, 'r+'); // no truncation: same size, other bytes
        await fh.write(bytesOf(2 * MiB), 0, 2 * MiB, 0);
        await fh.close();
      },
    ],
    ['grown', async (p: string) => fsp.appendFile(p, bytesOf(1000))],
  ])('fails a file path %s while it uploads with ERR_SOURCE instead of storing a mix of versions', async (_label, change) => {
    server = await startServer(slowPuts(20));
    const file = await writeTemp(bytesOf(2 * MiB), 'changing.bin');
    const h = upload(file, { endpoint: endpoint(server.base), chunkSize: 64 * KiB, transport: 'http', parallel: 2 });
    await whenLoaded(h, 256 * KiB);
    await change(file);
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_SOURCE', message: expect.stringMatching(/^The file changed while uploading/) });
    expect(fs.existsSync(path.join(server.dir, 'changing.bin'))).toBe(false);
    // The chunks stored are of a version that is gone: the client deleted the upload rather than leave it to expire.
    await expect(h.done).rejects.toMatchObject({ message: expect.stringMatching(new RegExp(`; upload ${h.guid} was deleted on the server$`)) });
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${h.guid}`);
    expect(st.json.data).toMatchObject({ uploadStatus: 'cancelled' });
  });

  it('refuses a FIFO path at once, even one nobody writes to (opening it would block for good)', async () => {
    server = await startServer();
    const fifo = path.join(await tempDir('updraft-client-src-'), 'pipe');
    execFileSync('mkfifo', [fifo]);
    const started = Date.now();
    await expect(upload(fifo, { endpoint: endpoint(server.base) }).done).rejects.toMatchObject({ code: 'ERR_SOURCE', message: `${fifo} is not a regular file` });
    expect(Date.now() - started).toBeLessThan(5000);
  });
});

describe('client: WebSocket failures', () => {
  it('finishes over PUT when the server drops the WebSocket mid-upload and the reconnect fails', async () => {
    server = await startServer();
    proxy = await startProxy(server.base, { dropWsAfterBytes: 1 * MiB, allowWsConnections: 1 });
    const data = bytesOf(4 * MiB + 777);
    const transports: TransportEvent[] = [];
    const h = upload(data, { endpoint: endpoint(proxy.base), fileName: 'dropped.bin', chunkSize: 128 * KiB, window: 2, retry: { baseDelayMs: 10 } });
    h.on('transport', (t) => transports.push(t));
    const r = await h.done;
    expect(proxy.stats).toMatchObject({ wsConnections: 2, wsDropped: 1, wsRefused: 1 });
    expect(transports.map((t) => t.transport)).toEqual(['websocket', 'http']);
    expect(r.bytesByTransport.websocket).toBeGreaterThan(0);
    expect(r.bytesByTransport.http).toBeGreaterThan(0);
    expect(r.bytesByTransport.websocket + r.bytesByTransport.http).toBe(data.length);
    expect(proxy.stats.puts).toBeLessThan(Math.ceil(data.length / (128 * KiB))); // only the missing chunks went by PUT
    await expectStored(server, 'dropped.bin', data);
  });

  it('survives a server restart: the server closes the WebSocket, the reconnect fails, PUTs finish after the restart', async () => {
    server = await startServer();
    const { dir } = server;
    // The proxy only keeps one address for the client while the engine behind it restarts on another port.
    proxy = await startProxy(server.base, {});
    const data = bytesOf(8 * MiB);
    const transports: TransportEvent[] = [];
    const h = upload(data, { endpoint: endpoint(proxy.base), fileName: 'restart.bin', chunkSize: 64 * KiB, window: 1, retry: { baseDelayMs: 100 } });
    h.on('transport', (t) => transports.push(t));
    await whenLoaded(h, 1 * MiB);
    await server.close(); // a real server-side drop: the engine closes every upload WebSocket (1001) and stops
    await new Promise((r) => setTimeout(r, 300)); // the reconnect is refused meanwhile (nothing listens)
    server = await startServer({ dir });
    proxy.setTarget(server.base);
    const r = await h.done;
    expect(transports.map((t) => t.transport)).toEqual(['websocket', 'http']);
    expect(r.bytesByTransport.websocket).toBeGreaterThanOrEqual(1 * MiB);
    expect(r.bytesByTransport.http).toBeGreaterThan(0);
    expect(r.bytesByTransport.websocket + r.bytesByTransport.http).toBe(data.length);
    await expectStored(server, 'restart.bin', data);
  });

  it('an init whose reply is lost is retried with its Idempotency-Key: one upload on the server, not an orphan holding space', async () => {
    server = await startServer({ maxUploadsPerUser: 1 });
    proxy = await startProxy(server.base, { loseReplies: 2 });
    const data = bytesOf(1 * MiB + 5);
    const retries: RetryEvent[] = [];
    const h = upload(data, { endpoint: endpoint(proxy.base), fileName: 'lost-reply.bin', chunkSize: 256 * KiB, transport: 'http', retry: { baseDelayMs: 10 } });
    h.on('retry', (e) => retries.push(e));
    const r = await h.done;
    // Both lost replies were of inits the server carried out; the third attempt got the upload they made (with
    // maxUploadsPerUser 1, a second upload would have been refused 429).
    expect(proxy.stats.repliesLost).toBe(2);
    expect(retries.filter((e) => e.operation === 'init').map((e) => e.error.code)).toEqual(['ERR_NETWORK', 'ERR_NETWORK']);
    expect(r.fileName).toBe('lost-reply.bin');
    await expectStored(server, 'lost-reply.bin', data);
    expect(server.engine.registry.size).toBe(1);
    expect((await fsp.readdir(path.join(server.dir, '.updraft-staging'))).filter((f) => f.endsWith('.part'))).toEqual([]);
  });

  it('stays on the WebSocket when the reconnect after a drop works', async () => {
    server = await startServer();
    proxy = await startProxy(server.base, { dropWsAfterBytes: 1 * MiB, dropConnections: 1 });
    const data = bytesOf(3 * MiB);
    const r = await upload(data, { endpoint: endpoint(proxy.base), fileName: 'reconnect.bin', chunkSize: 128 * KiB, retry: { baseDelayMs: 10 } }).done;
    expect(proxy.stats).toMatchObject({ wsConnections: 2, wsDropped: 1, puts: 0 });
    expect(r.bytesByTransport).toEqual({ websocket: data.length, http: 0 });
    await expectStored(server, 'reconnect.bin', data);
  });

  it('falls back to PUT when the server refuses the WebSocket upgrade', async () => {
    server = await startServer({ authenticate: (req) => (req.headers['upgrade']?.toLowerCase() === 'websocket' ? null : 'anonymous') });
    const data = bytesOf(1 * MiB + 5);
    const transports: TransportEvent[] = [];
    const h = upload(data, { endpoint: endpoint(server.base), fileName: 'refused.bin', chunkSize: 128 * KiB });
    h.on('transport', (t) => transports.push(t));
    const r = await h.done;
    expect(r.bytesByTransport).toEqual({ websocket: 0, http: data.length });
    expect(transports).toHaveLength(1);
    expect(transports[0]!.transport).toBe('http');
    await expectStored(server, 'refused.bin', data);
  });

  it("transport 'websocket' fails with ERR_WEBSOCKET_FAILED instead of falling back", async () => {
    server = await startServer({ authenticate: (req) => (req.headers['upgrade'] ? null : 'anonymous') });
    const h = upload(bytesOf(10 * KiB), { endpoint: endpoint(server.base), fileName: 'no.bin', transport: 'websocket', retry: { attempts: 1, baseDelayMs: 5 } });
    await expect(h.done).rejects.toMatchObject({ name: 'ClientError', code: 'ERR_WEBSOCKET_FAILED' });
    expect(h.state).toBe('failed');
  });

  it("transport 'websocket': an upgrade refused because the upload is gone reports the upload's end, not a connect failure", async () => {
    server = await startServer();
    proxy = await startProxy(server.base, { allowWsConnections: 0 }); // every upgrade refused (503)
    const h = upload(bytesOf(512 * KiB), { endpoint: endpoint(proxy.base), fileName: 'gone.bin', chunkSize: 64 * KiB, transport: 'websocket', retry: { attempts: 5, baseDelayMs: 50 } });
    // Between two connects, another party cancels the upload: the next refusal is explained by upload-status.
    h.on('retry', (e) => {
      if (e.operation === 'websocket' && e.attempt === 1) void call(server!.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${h.guid}`);
    });
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_UPLOAD_CANCELLED' });
  });

  it('after a 4029 (too many WebSockets for this user) it reconnects with backoff instead of switching to PUT', async () => {
    server = await startServer({ maxWsConnectionsPerUser: 1 });
    const other = await initUpload(server.base, { fileName: 'x.bin', fileSize: 2 * MiB, chunkSize: MiB });
    expect(other.status).toBe(200);
    const busy = await TestSocket.open(server.base, other.json.data!.guid as string, { protocols: ['updraft.v1'] }); // the one slot
    const data = bytesOf(512 * KiB);
    const h = upload(data, { endpoint: endpoint(server.base), fileName: 'limited.bin', chunkSize: 64 * KiB, retry: { attempts: 5, baseDelayMs: 50 } });
    const retries: string[] = [];
    h.on('retry', (e) => {
      retries.push(`${e.operation} ${e.error.code}`);
      if (retries.length === 1) busy.ws.terminate();
    });
    const r = await h.done;
    expect(retries[0]).toBe('websocket ERR_RATE_LIMITED');
    expect(r.bytesByTransport).toEqual({ websocket: data.length, http: 0 });
    await expectStored(server, 'limited.bin', data);
  });

  it('authenticates the WebSocket and the PUTs with the token', async () => {
    server = await startServer({ tokens: { 'secret-token-1': 'alice' } });
    const data = bytesOf(600 * KiB);
    for (const transport of ['websocket', 'http'] as const) {
      const r = await upload(data, { endpoint: endpoint(server.base), token: 'secret-token-1', fileName: `t-${transport}.bin`, chunkSize: 64 * KiB, transport }).done;
      expect(r.bytesByTransport[transport]).toBe(data.length);
      await expectStored(server, `t-${transport}.bin`, data);
    }
    const bad = upload(data, { endpoint: endpoint(server.base), token: 'wrong-token-1', fileName: 'x.bin' });
    await expect(bad.done).rejects.toMatchObject({ code: 'ERR_UNAUTHORIZED', status: 401 });
  });

  it('a WebSocket dropped while a chunk is being read sends each chunk once: the reading session gives it back only once', async () => {
    const puts = new Map<string, number>();
    server = await startServer({
      authenticate: (req) => {
        if (req.method === 'PUT') puts.set(req.query.get('chunk')!, (puts.get(req.query.get('chunk')!) ?? 0) + 1);
        return 'anonymous';
      },
    });
    // A source whose reads take 300 ms (a file on a network drive): the drop lands while a chunk is being read.
    class SlowBlob extends Blob {
      override slice(start?: number, end?: number): Blob {
        const part = super.slice(start, end);
        return { arrayBuffer: () => new Promise((r) => setTimeout(r, 300)).then(() => part.arrayBuffer()) } as Blob;
      }
    }
    const data = bytesOf(2 * MiB);
    proxy = await startProxy(server.base, { dropWsAfterBytes: 300 * KiB, allowWsConnections: 1 });
    const r = await upload(new SlowBlob([new Uint8Array(data)]), { endpoint: endpoint(proxy.base), fileName: 'slow-read.bin', chunkSize: 64 * KiB, transport: 'auto', retry: { baseDelayMs: 1 } }).done;
    expect(r.bytesByTransport.http + r.bytesByTransport.websocket).toBe(data.length);
    expect(r.bytesByTransport.http).toBeGreaterThan(0);
    expect([...puts].filter(([, n]) => n > 1)).toEqual([]);
    await expectStored(server, 'slow-read.bin', data);
  });
});

describe('client: resume, cancel, pause', () => {
  it('resumes an upload whose process was killed, from its guid, sending only the rest', async () => {
    server = await startServer(slowPuts(15));
    const data = bytesOf(2 * MiB);
    const file = await writeTemp(data, 'resume.bin');
    const opts: UploadOptions = { endpoint: endpoint(server.base), chunkSize: 64 * KiB, transport: 'http', parallel: 2 };
    // "Killed": the first run is stopped through its signal once a third is stored; nothing is cleaned up.
    const ac = new AbortController();
    const first = upload(file, { ...opts, signal: ac.signal });
    await whenLoaded(first, data.length / 3);
    ac.abort();
    const err = await first.done.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClientError);
    expect(err).toMatchObject({ code: 'ERR_ABORTED', guid: first.guid });
    // A PUT whose body was already sent when the signal fired may still be stored: the server has at least this.
    const before = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${first.guid}`);
    const storedBefore = before.json.data!.receivedBytes as number;
    expect(storedBefore).toBeGreaterThanOrEqual(data.length / 3);
    expect(storedBefore).toBeLessThan(data.length);

    const second = upload(file, { ...opts, guid: first.guid!, transport: 'auto' });
    const r = await second.done;
    expect(r.guid).toBe(first.guid);
    expect(r.resumedBytes).toBeGreaterThanOrEqual(storedBefore);
    expect(r.bytesByTransport.websocket + r.bytesByTransport.http).toBe(data.length - r.resumedBytes);
    expect(r.bytesByTransport.websocket + r.bytesByTransport.http).toBeLessThan(data.length);
    await expectStored(server, 'resume.bin', data);
  });

  it("resumes over 'http' alone (no WebSocket hello to learn from): PUTs only the chunks the server is missing", async () => {
    const CS = 64 * KiB;
    // The second session sends a token of its own, so its PUTs are told apart from late ones of the first.
    const secondPuts: number[] = [];
    server = await startServer({
      authenticate: async (req) => {
        if (req.method === 'PUT') {
          if (req.headers.authorization === 'Bearer second') secondPuts.push(Number(req.query.get('chunk')));
          await new Promise((r) => setTimeout(r, 15));
        }
        return 'anonymous';
      },
    });
    const data = bytesOf(2 * MiB);
    const file = await writeTemp(data, 'resume-http.bin');
    const opts: UploadOptions = { endpoint: endpoint(server.base), chunkSize: CS, transport: 'http', parallel: 2 };
    const ac = new AbortController();
    const first = upload(file, { ...opts, signal: ac.signal });
    await whenLoaded(first, data.length / 3);
    ac.abort();
    await expect(first.done).rejects.toMatchObject({ code: 'ERR_ABORTED', guid: first.guid });
    const before = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${first.guid}`);
    const storedBefore = before.json.data!.receivedBytes as number;
    expect(storedBefore).toBeGreaterThanOrEqual(data.length / 3);

    const r = await upload(file, { ...opts, guid: first.guid!, token: 'second' }).done;
    expect(r.guid).toBe(first.guid);
    // The plan starts from upload-status: what the server had counts as resumed and is not sent again.
    expect(r.resumedBytes).toBeGreaterThanOrEqual(storedBefore);
    expect(r.bytesByTransport).toEqual({ websocket: 0, http: data.length - r.resumedBytes });
    expect(new Set(secondPuts).size).toBe(secondPuts.length);
    expect(secondPuts.length * CS).toBe(data.length - r.resumedBytes);
    await expectStored(server, 'resume-http.bin', data);
  });

  it('a browser File whose upload fails with a retryable error keeps its remembered guid: picked again, it continues', async () => {
    // The browser's localStorage, in memory (Node has none): what upload() remembers per File.
    const store = new Map<string, string>();
    const g = globalThis as { localStorage?: unknown };
    g.localStorage = {
      get length() {
        return store.size;
      },
      key: (i: number) => [...store.keys()][i] ?? null,
      getItem: (k: string) => store.get(k) ?? null,
      setItem: (k: string, v: string) => void store.set(k, v),
      removeItem: (k: string) => void store.delete(k),
    };
    try {
      server = await startServer(slowPuts(15));
      proxy = await startProxy(server.base, {});
      const data = bytesOf(1 * MiB);
      const file = new File([new Uint8Array(data)], 'remembered.bin', { lastModified: 1_700_000_000_000 });
      const opts: UploadOptions = { endpoint: endpoint(proxy.base), chunkSize: 64 * KiB, transport: 'http', parallel: 1 };
      const first = upload(file, { ...opts, retry: { attempts: 0 } });
      await whenLoaded(first, 256 * KiB);
      proxy.setTarget('http://127.0.0.1:9'); // the network goes: the next PUT gets no reply
      await expect(first.done).rejects.toMatchObject({ code: 'ERR_NETWORK', retryable: true, guid: first.guid });
      expect(listResumable(endpoint(proxy.base)).map((u) => u.guid)).toEqual([first.guid]);

      proxy.setTarget(server.base);
      const r = await upload(file, opts).done;
      expect(r.guid).toBe(first.guid);
      expect(r.resumedBytes).toBeGreaterThanOrEqual(256 * KiB);
      expect(r.bytesByTransport.http).toBe(data.length - r.resumedBytes);
      await expectStored(server, 'remembered.bin', data);
      expect(listResumable(endpoint(proxy.base))).toEqual([]); // done: forgotten
    } finally {
      delete g.localStorage;
    }
  });

  it('refuses to resume a guid with a source of another size', async () => {
    server = await startServer();
    const init = await upload(bytesOf(10), { endpoint: endpoint(server.base), fileName: 'm.bin', chunkSize: 4 * KiB });
    const { guid } = await init.done;
    // A completed upload of another size: mismatch comes first.
    await expect(upload(bytesOf(11), { endpoint: endpoint(server.base), guid }).done).rejects.toMatchObject({ code: 'ERR_RESUME_MISMATCH', guid });
    // The same size in other chunks: the message says which chunk size each side has.
    await expect(upload(bytesOf(10), { endpoint: endpoint(server.base), guid, chunkSize: 2 * KiB }).done).rejects.toMatchObject({
      code: 'ERR_RESUME_MISMATCH',
      message: `Upload ${guid} is 10 bytes in 4096-byte chunks; the source is 10 bytes in 2048-byte chunks`,
    });
    await expect(upload(bytesOf(11), { endpoint: endpoint(server.base), guid: 'no-such-guid' }).done).rejects.toMatchObject({ code: 'ERR_UPLOAD_NOT_FOUND', status: 404 });
  });

  it('refuses to resume a guid from a file of the same size that is another file, or the same one modified since', async () => {
    server = await startServer(slowPuts(15));
    const data = bytesOf(1 * MiB);
    const file = await writeTemp(data, 'fp.bin');
    const T = 1_700_000_000; // whole seconds: utimes() keeps them exact, so the ms below are exact too
    await fsp.utimes(file, T, T);
    const opts: UploadOptions = { endpoint: endpoint(server.base), chunkSize: 64 * KiB, transport: 'http', parallel: 2 };
    const ac = new AbortController();
    const first = upload(file, { ...opts, signal: ac.signal });
    await whenLoaded(first, 256 * KiB);
    ac.abort();
    await expect(first.done).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    const guid = first.guid!;
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(st.json.data).toMatchObject({ fingerprint: `${data.length}:${T * 1000}` });

    // Another file of the same size (other bytes, another mtime): resuming would store a mix of the two.
    const other = await writeTemp(bytesOf(1 * MiB), 'other.bin');
    await fsp.utimes(other, T - 60, T - 60);
    await expect(upload(other, { ...opts, guid }).done).rejects.toMatchObject({
      code: 'ERR_RESUME_MISMATCH',
      guid,
      message: `Upload ${guid} was started from another file, or from this one before it was last modified (fingerprint ${data.length}:${T * 1000}; the source's is ${data.length}:${(T - 60) * 1000})`,
    });
    // The same file written to since (same size): refused too.
    await fsp.writeFile(file, bytesOf(1 * MiB));
    await fsp.utimes(file, T + 5, T + 5);
    await expect(upload(file, { ...opts, guid }).done).rejects.toMatchObject({ code: 'ERR_RESUME_MISMATCH', guid });
    // Neither refusal touched the upload: the original file, back as it was, finishes it.
    await fsp.writeFile(file, data);
    await fsp.utimes(file, T, T);
    const r = await upload(file, { ...opts, guid }).done;
    expect(r.resumedBytes).toBeGreaterThanOrEqual(256 * KiB);
    await expectStored(server, 'fp.bin', data);
  });

  it('a pause while the last chunks are on the wire does not hold back done (over PUT, as over the WebSocket)', async () => {
    server = await startServer(slowPuts(500));
    const data = bytesOf(4 * 64 * KiB);
    const h = upload(data, { endpoint: endpoint(server.base), fileName: 'paused-last.bin', chunkSize: 64 * KiB, transport: 'http', parallel: 4 });
    await new Promise<void>((resolve) => {
      const off = h.on('state', (s) => {
        if (s === 'uploading') {
          off();
          resolve();
        }
      });
    });
    await new Promise((r) => setTimeout(r, 200)); // every chunk is on the wire now
    h.pause();
    const settled = await Promise.race([h.done.then(() => 'done'), new Promise((r) => setTimeout(() => r('still pending'), 5000))]);
    expect(settled).toBe('done');
    expect(h.progress.state).toBe('done');
    await expectStored(server, 'paused-last.bin', data);
  });

  it('cancel() after the upload stopped deletes it if the signal stopped it, and says ERR_UPLOAD_FINALIZING if it completed', async () => {
    server = await startServer(slowPuts(15));
    const ac = new AbortController();
    const h = upload(bytesOf(1 * MiB), { endpoint: endpoint(server.base), fileName: 'stopped.bin', chunkSize: 64 * KiB, transport: 'http', signal: ac.signal });
    await whenLoaded(h, 128 * KiB);
    ac.abort();
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    await h.cancel(); // was left on the server to be resumed; now it goes
    expect((await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${h.guid}`)).json.data).toMatchObject({ uploadStatus: 'cancelled' });
    await h.cancel(); // twice is fine

    const done = upload(bytesOf(10), { endpoint: endpoint(server.base), fileName: 'kept.bin' });
    await done.done;
    await expect(done.cancel()).rejects.toMatchObject({ code: 'ERR_UPLOAD_FINALIZING' });
    expect(fs.existsSync(path.join(server.dir, 'kept.bin'))).toBe(true);
  });

  it('cancel() stops sending, deletes the upload on the server and rejects with ERR_UPLOAD_CANCELLED', async () => {
    server = await startServer(slowPuts(15));
    const data = bytesOf(2 * MiB);
    const h = upload(data, { endpoint: endpoint(server.base), fileName: 'cancel.bin', chunkSize: 64 * KiB, transport: 'http' });
    await whenLoaded(h, 256 * KiB);
    await h.cancel();
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_UPLOAD_CANCELLED', guid: h.guid });
    expect(h.state).toBe('cancelled');
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${h.guid}`);
    expect(st.status === 410 || st.json.data?.uploadStatus === 'cancelled').toBe(true);
    await expect(fsp.access(path.join(server.dir, 'cancel.bin'))).rejects.toThrow();
  });

  it('cancel() sends no new chunk while the server decides on the delete', async () => {
    // The DELETE is held in the auth hook until the test lets it go: cancel() is then waiting for the server's answer.
    let deleteArrived: () => void = () => {};
    const arrived = new Promise<void>((r) => (deleteArrived = r));
    let releaseDelete: () => void = () => {};
    const held = new Promise<void>((r) => (releaseDelete = r));
    let puts = 0;
    server = await startServer({
      authenticate: async (req) => {
        if (req.method === 'PUT') {
          puts++;
          await new Promise((r) => setTimeout(r, 10));
        }
        if (req.method === 'DELETE') {
          deleteArrived();
          await held;
        }
        return 'anonymous';
      },
    });
    const h = upload(bytesOf(4 * MiB), { endpoint: endpoint(server.base), fileName: 'held-cancel.bin', chunkSize: 64 * KiB, transport: 'http', parallel: 2 });
    await whenLoaded(h, 128 * KiB);
    const cancelling = h.cancel();
    try {
      await arrived;
      const atDelete = puts;
      await new Promise((r) => setTimeout(r, 300)); // chunks already taken (at most `parallel`) finish; none may start
      expect(puts - atDelete).toBeLessThanOrEqual(2);
    } finally {
      releaseDelete();
    }
    await cancelling;
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_UPLOAD_CANCELLED', guid: h.guid });
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${h.guid}`);
    expect(st.status === 410 || st.json.data?.uploadStatus === 'cancelled').toBe(true);
    await expect(fsp.access(path.join(server.dir, 'held-cancel.bin'))).rejects.toThrow();
  });

  it('cancel() during the init of a 0-byte file, which completes at init, says ERR_UPLOAD_FINALIZING and the upload is done', async () => {
    server = await startServer({
      authenticate: async (req) => {
        if (req.method === 'POST') await new Promise((r) => setTimeout(r, 300));
        return 'anonymous';
      },
    });
    const h = upload(new Uint8Array(0), { endpoint: endpoint(server.base), fileName: 'empty.bin', transport: 'http' });
    await new Promise((r) => setTimeout(r, 50));
    await expect(h.cancel()).rejects.toMatchObject({ code: 'ERR_UPLOAD_FINALIZING' });
    await expect(h.done).resolves.toMatchObject({ fileName: 'empty.bin', size: 0 });
    expect(h.state).toBe('done');
    await expectStored(server, 'empty.bin', new Uint8Array(0));
  });

  it('cancel() while resuming by guid (its status still on the way) deletes the upload, and the error names the guid', async () => {
    server = await startServer({
      authenticate: async (req) => {
        if (req.method === 'GET') await new Promise((r) => setTimeout(r, 300));
        return 'anonymous';
      },
    });
    const data = bytesOf(256 * KiB);
    const init = await initUpload(server.base, { fileName: 'resumed.bin', fileSize: data.length, chunkSize: 64 * KiB });
    const guid = init.json.data!.guid as string;
    const h = upload(data, { endpoint: endpoint(server.base), guid, chunkSize: 64 * KiB, transport: 'http' });
    await new Promise((r) => setTimeout(r, 50));
    await h.cancel();
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_UPLOAD_CANCELLED', guid });
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(st.status === 410 || st.json.data?.uploadStatus === 'cancelled').toBe(true);
  });

  it('cancel() while the init is on its way deletes the upload the server creates: no orphan left counting against the user', async () => {
    // The auth hook holds the init 300 ms, so cancel() lands before the reply.
    server = await startServer({
      authenticate: async (req) => {
        if (req.method === 'POST') await new Promise((r) => setTimeout(r, 300));
        return 'anonymous';
      },
    });
    const created: string[] = [];
    const cancelled: string[] = [];
    server.engine.on('created', (u) => created.push(u.guid));
    server.engine.on('cancelled', (u) => cancelled.push(u.guid));
    const h = upload(bytesOf(256 * KiB), { endpoint: endpoint(server.base), fileName: 'early.bin', chunkSize: 64 * KiB, transport: 'http' });
    await new Promise((r) => setTimeout(r, 50));
    expect(h.state).toBe('starting');
    await h.cancel();
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_UPLOAD_CANCELLED' });
    await new Promise((r) => setTimeout(r, 400)); // past the hook: an init the server still ran has been created
    expect(created).toHaveLength(1);
    expect(h.guid).toBe(created[0]);
    expect(cancelled).toEqual(created);
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${created[0]}`);
    expect(st.status === 410 || st.json.data?.uploadStatus === 'cancelled').toBe(true);
    await expect(fsp.access(path.join(server.dir, 'early.bin'))).rejects.toThrow();
  });

  it('cancel() during a WebSocket upload also deletes it', async () => {
    server = await startServer();
    proxy = await startProxy(server.base, {});
    const h = upload(bytesOf(8 * MiB), { endpoint: endpoint(server.base), fileName: 'wscancel.bin', chunkSize: 64 * KiB, window: 1 });
    await whenLoaded(h, 64 * KiB);
    await h.cancel();
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_UPLOAD_CANCELLED' });
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${h.guid}`);
    expect(st.status === 410 || st.json.data?.uploadStatus === 'cancelled').toBe(true);
  });

  it('cancel() once every chunk is in: the server is placing the file, so cancel() rejects ERR_UPLOAD_FINALIZING and the upload completes', async () => {
    // The hook holds the completion, so the cancel arrives while the server is finalizing.
    server = await startServer({ onUploadComplete: () => new Promise((r) => setTimeout(r, 300)) });
    const data = bytesOf(256 * KiB);
    for (const transport of ['http', 'websocket'] as const) {
      const h = upload(data, { endpoint: endpoint(server.base), fileName: `late-${transport}.bin`, chunkSize: 64 * KiB, transport });
      await whenLoaded(h, data.length);
      await expect(h.cancel()).rejects.toMatchObject({ code: 'ERR_UPLOAD_FINALIZING' });
      const r = await h.done;
      expect(r.fileName).toBe(`late-${transport}.bin`);
      expect(h.state).toBe('done');
      await expectStored(server, `late-${transport}.bin`, data);
    }
  });

  it('polls for the file to be placed no longer than finalizeTimeoutMs (ERR_FINALIZE_TIMEOUT, guid kept); sent again with the guid, it gets the completion', async () => {
    // The hook holds the completion until released: the server stays 'finalizing'. The last chunk's own PUT or
    // WebSocket ack waits for the placement (bounded by that transport's timeouts), so the first upload is stopped
    // once the server has every chunk; resumed with its guid, the client finds every chunk stored and polls.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    server = await startServer({ onUploadComplete: () => held });
    try {
      const data = bytesOf(200 * KiB);
      const base = { endpoint: endpoint(server.base), fileName: 'held.bin', chunkSize: 64 * KiB, finalizeTimeoutMs: 400 } as const;
      const ac = new AbortController();
      const first = upload(data, { ...base, transport: 'http', signal: ac.signal });
      // Whichever chunk completes the set is the one held (its size, and so the bytes acknowledged before it, vary):
      // ask the server instead.
      let stored = 0;
      for (let i = 0; i < 800 && stored < 4; i++) {
        await new Promise((r) => setTimeout(r, 25));
        if (first.guid === undefined) continue;
        const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${first.guid}`);
        stored = (st.json.data?.receivedChunks as number | undefined) ?? 0;
      }
      expect(stored).toBe(4);
      ac.abort();
      await expect(first.done).rejects.toMatchObject({ code: 'ERR_ABORTED' });
      const guid = first.guid!;
      for (const transport of ['http', 'websocket'] as const) {
        const started = Date.now();
        const h = upload(data, { ...base, transport, guid });
        const err = await h.done.then(() => null, (e: unknown) => e);
        expect(err).toBeInstanceOf(ClientError);
        expect(err).toMatchObject({ code: 'ERR_FINALIZE_TIMEOUT', retryable: true, guid });
        expect(Date.now() - started).toBeGreaterThanOrEqual(400);
        expect(h.state).toBe('failed');
      }
      release();
      const r = await upload(data, { ...base, transport: 'http', guid }).done;
      expect(r).toMatchObject({ guid, fileName: 'held.bin', size: data.length });
      await expectStored(server, 'held.bin', data);
    } finally {
      release();
    }
    expect(() => upload(bytesOf(1), { endpoint: 'http://127.0.0.1:1/api', finalizeTimeoutMs: 2 ** 31 })).toThrow('finalizeTimeoutMs must be at most');
    expect(() => upload(bytesOf(1), { endpoint: 'http://127.0.0.1:1/api', finalizeTimeoutMs: 0 })).toThrow('finalizeTimeoutMs must be an integer >= 1');
  });

  it('leaves no listener on a signal shared by uploads that have finished', async () => {
    server = await startServer();
    const ac = new AbortController();
    for (const name of ['s1.bin', 's2.bin']) {
      await upload(bytesOf(100 * KiB), { endpoint: endpoint(server.base), fileName: name, chunkSize: 64 * KiB, signal: ac.signal }).done;
    }
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
  });

  it('pause() sends no new chunk until resume()', async () => {
    server = await startServer(slowPuts(10));
    proxy = await startProxy(server.base, {}); // counts the PUTs that reach the server
    const data = bytesOf(1 * MiB);
    const h = upload(data, { endpoint: endpoint(proxy.base), fileName: 'pause.bin', chunkSize: 64 * KiB, transport: 'http', parallel: 2 });
    await whenLoaded(h, 128 * KiB);
    h.pause();
    expect(h.state).toBe('paused');
    const atPause = proxy.stats.puts;
    await new Promise((r) => setTimeout(r, 400)); // chunks already taken (at most `parallel`) finish
    const settled = proxy.stats.puts;
    expect(settled - atPause).toBeLessThanOrEqual(2);
    await new Promise((r) => setTimeout(r, 400));
    expect(proxy.stats.puts).toBe(settled);
    expect(h.progress.loaded).toBeLessThan(data.length);
    expect(h.progress).toMatchObject({ state: 'paused', bytesPerSecond: 0, etaSeconds: null });
    h.resume();
    const r = await h.done;
    expect(r.bytesByTransport.http).toBe(data.length);
    await expectStored(server, 'pause.bin', data);
  });

  it('a paused WebSocket upload closes its connection (freeing the per-user slot for another upload) and reconnects on resume()', async () => {
    server = await startServer({ maxWsConnectionsPerUser: 1 });
    const wsOpen = async (): Promise<number> => Number(/updraft_websocket_connections (\d+)/.exec(await (await fetch(`${server!.base}/metrics`)).text())![1]);
    const a = bytesOf(32 * MiB);
    const ha = upload(a, { endpoint: endpoint(server.base), fileName: 'parked.bin', chunkSize: 64 * KiB, transport: 'websocket' });
    await whenLoaded(ha, 64 * KiB);
    ha.pause(); // mid-upload: the chunks in flight are answered, then the connection idles paused
    expect(await wsOpen()).toBe(1);
    const end = Date.now() + 10_000;
    while (Date.now() < end && (await wsOpen()) > 0) await new Promise((r) => setTimeout(r, 100));
    expect(await wsOpen()).toBe(0);
    expect(ha.state).toBe('paused');
    // The slot is free: another upload of the same user connects at once (a refusal would fail it: one attempt).
    const b = bytesOf(300 * KiB);
    const rb = await upload(b, { endpoint: endpoint(server.base), fileName: 'other.bin', chunkSize: 64 * KiB, transport: 'websocket', retry: { attempts: 1, baseDelayMs: 50, maxDelayMs: 100 } }).done;
    expect(rb.bytesByTransport).toEqual({ websocket: b.length, http: 0 });
    ha.resume();
    const ra = await ha.done;
    expect(ra.bytesByTransport).toEqual({ websocket: a.length, http: 0 });
    await expectStored(server, 'parked.bin', a);
    await expectStored(server, 'other.bin', b);
  });

  it('a resumed WebSocket upload whose slot another took meanwhile waits for one (retrying past retry.attempts) instead of failing', async () => {
    server = await startServer({ maxWsConnectionsPerUser: 1 });
    const a = bytesOf(16 * MiB);
    const ha = upload(a, { endpoint: endpoint(server.base), fileName: 'waits.bin', chunkSize: 64 * KiB, transport: 'websocket', retry: { attempts: 2, baseDelayMs: 20, maxDelayMs: 50 } });
    await whenLoaded(ha, 64 * KiB);
    ha.pause();
    const wsOpen = async (): Promise<number> => Number(/updraft_websocket_connections (\d+)/.exec(await (await fetch(`${server!.base}/metrics`)).text())![1]);
    const end = Date.now() + 10_000;
    while (Date.now() < end && (await wsOpen()) > 0) await new Promise((r) => setTimeout(r, 100));
    // Parked: another connection of the same user takes the only slot.
    const other = await initUpload(server.base, { fileName: 'x.bin', fileSize: 2 * MiB, chunkSize: MiB });
    const busy = await TestSocket.open(server.base, other.json.data!.guid as string, { protocols: ['updraft.v1'] });
    const retries: string[] = [];
    const delays: number[] = [];
    ha.on('retry', (e) => {
      retries.push(`${e.operation} ${e.error.code}`);
      delays.push(e.delayMs);
      if (retries.length === 4) busy.ws.terminate(); // twice the attempts allowed, then the slot frees
    });
    ha.resume();
    const r = await ha.done;
    expect(retries.slice(0, 4)).toEqual(Array(4).fill('websocket ERR_RATE_LIMITED'));
    // A wait with no end of its own goes at most once a second, whatever the policy's delays (20-50 ms here).
    expect(Math.min(...delays.slice(0, 4))).toBeGreaterThanOrEqual(1000);
    expect(r.bytesByTransport).toEqual({ websocket: a.length, http: 0 });
    await expectStored(server, 'waits.bin', a);
  });

  it('a chunk refused for good while paused ends the upload at once: done does not wait for a resume() that may never come', async () => {
    // Chunk 1 is held until the cancel below, the others take 30 ms: when pause() comes, chunk 1 is still in flight
    // and the other workers, done with theirs, wait for resume(). (A fixed delay for chunk 1 could run out before the
    // pause on a busy machine, leaving nothing in flight to hear of the cancel.)
    let releaseChunk1: () => void = () => {};
    const chunk1 = new Promise<void>((r) => (releaseChunk1 = r));
    server = await startServer({
      authenticate: async (req) => {
        if (req.method === 'PUT') await (req.query.get('chunk') === '1' ? chunk1 : new Promise((r) => setTimeout(r, 30)));
        return 'anonymous';
      },
    });
    const h = upload(bytesOf(1 * MiB), { endpoint: endpoint(server.base), fileName: 'paused-gone.bin', chunkSize: 64 * KiB, transport: 'http', parallel: 3 });
    await whenLoaded(h, 128 * KiB);
    h.pause();
    await new Promise((r) => setTimeout(r, 200));
    // Another party cancels it: chunk 1's PUT is answered 410, while the other workers wait for resume().
    expect((await call(server.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${h.guid}`)).status).toBe(200);
    releaseChunk1();
    const outcome = await Promise.race([
      h.done.then(
        () => 'resolved',
        (e: unknown) => (e as ClientError).code,
      ),
      new Promise((r) => setTimeout(() => r('still waiting'), 5000)),
    ]);
    expect(outcome).toBe('ERR_UPLOAD_CANCELLED');
    expect(h.state).toBe('cancelled');
  });
});

describe('client: retries and errors', () => {
  it('retries PUTs answered 503, honouring Retry-After, and completes', async () => {
    server = await startServer();
    proxy = await startProxy(server.base, { failPuts: 3, retryAfter: '1' });
    const data = bytesOf(1 * MiB + 3);
    const retries: RetryEvent[] = [];
    const h = upload(data, { endpoint: endpoint(proxy.base), fileName: 'retry.bin', chunkSize: 128 * KiB, transport: 'http', retry: { baseDelayMs: 10 } });
    h.on('retry', (e) => retries.push(e));
    const r = await h.done;
    expect(proxy.stats.injected503).toBe(3);
    expect(retries).toHaveLength(3);
    for (const e of retries) {
      expect(e.error).toMatchObject({ code: 'ERR_SERVER_BUSY', status: 503 });
      expect(e.delayMs).toBeGreaterThanOrEqual(1000); // Retry-After: 1 beats the 10 ms backoff
    }
    expect(r.bytesByTransport.http).toBe(data.length);
    await expectStored(server, 'retry.bin', data);
  });

  it.each(completionFailures)('a completion the server refuses fails at once with its code over PUT, without a retry: %s', async (_label, options, prepare, code) => {
    // A 5xx the server marks retryable:false was retried, and the retry heard only ERR_UPLOAD_FAILED.
    server = await startServer(options);
    const data = bytesOf(256 * KiB + 5);
    const retries: RetryEvent[] = [];
    await prepare(server.dir, 'refused.bin');
    const h = upload(data, { endpoint: endpoint(server.base), fileName: 'refused.bin', chunkSize: 64 * KiB, transport: 'http', parallel: 1, retry: { baseDelayMs: 5 } });
    h.on('retry', (e) => retries.push(e));
    // ...and the caller is told so (the server's retryable: false, not the catalogue's default for the code).
    await expect(h.done).rejects.toMatchObject({ code, retryable: false });
    expect(retries).toEqual([]);
  });

  it('retries an init answered 429 (too many open uploads for this user) until the other upload finishes', async () => {
    // The first upload's PUTs wait for the test, so it stays open while the second one's init is refused.
    let releasePuts: () => void = () => {};
    const puts = new Promise<void>((r) => (releasePuts = r));
    server = await startServer({
      maxUploadsPerUser: 1,
      authenticate: async (req) => {
        if (req.method === 'PUT') await puts;
        return 'anonymous';
      },
    });
    const a = bytesOf(200 * KiB);
    const b = bytesOf(300 * KiB + 1);
    const first = upload(a, { endpoint: endpoint(server.base), fileName: 'first.bin', chunkSize: 64 * KiB, transport: 'http' });
    await new Promise<void>((resolve) => {
      const off = first.on('state', (s) => {
        if (s === 'uploading') {
          off();
          resolve();
        }
      });
    });
    const retries: RetryEvent[] = [];
    const second = upload(b, { endpoint: endpoint(server.base), fileName: 'second.bin', chunkSize: 64 * KiB, transport: 'http', retry: { attempts: 100, baseDelayMs: 10, maxDelayMs: 50 } });
    second.on('retry', (e) => {
      retries.push(e);
      releasePuts();
    });
    second.done.then(releasePuts, releasePuts); // a second that fails at once must not leave the first held
    const r = await second.done;
    await first.done;
    expect(retries[0]).toMatchObject({ operation: 'init', error: { code: 'ERR_RATE_LIMITED', status: 429 } });
    expect(r.bytesByTransport.http).toBe(b.length);
    await expectStored(server, 'first.bin', a);
    await expectStored(server, 'second.bin', b);
  });

  it('gives up after the configured attempts with the server code', async () => {
    server = await startServer();
    proxy = await startProxy(server.base, { failPuts: 1000 });
    const h = upload(bytesOf(100 * KiB), { endpoint: endpoint(proxy.base), fileName: 'never.bin', transport: 'http', retry: { attempts: 2, baseDelayMs: 5 } });
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_SERVER_BUSY', status: 503 });
    expect(proxy.stats.injected503).toBeGreaterThanOrEqual(3);
  });

  it('counts no byte of a chunk whose PUT failed: progress shows only what the server acknowledged', async () => {
    server = await startServer();
    proxy = await startProxy(server.base, { failPuts: 1 });
    const loaded: number[] = [];
    const h = upload(bytesOf(256 * KiB), { endpoint: endpoint(proxy.base), fileName: 'unacked.bin', chunkSize: 64 * KiB, transport: 'http', parallel: 1, retry: { attempts: 0 } });
    h.on('progress', (p) => loaded.push(p.loaded));
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_SERVER_BUSY', status: 503 });
    expect(proxy.stats.injected503).toBe(1);
    expect(loaded.every((l) => l === 0)).toBe(true);
    expect(h.progress).toMatchObject({ loaded: 0, state: 'failed' });
  });

  it('makes exactly the configured attempts: the first try and `attempts` retries, no more', async () => {
    server = await startServer();
    proxy = await startProxy(server.base, { failPuts: 1000 });
    // One chunk, one PUT at a time: every 503 the proxy counts is a try of the same request.
    const retries: RetryEvent[] = [];
    const h = upload(bytesOf(100 * KiB), {
      endpoint: endpoint(proxy.base),
      fileName: 'never-once.bin',
      transport: 'http',
      parallel: 1,
      retry: { attempts: 2, baseDelayMs: 5 },
    });
    h.on('retry', (e) => retries.push(e));
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_SERVER_BUSY', status: 503 });
    expect(proxy.stats.injected503).toBe(3);
    expect(retries.map((e) => e.attempt)).toEqual([1, 2]);
  });

  it('fails at once on a 4xx with the server code and message', async () => {
    server = await startServer();
    const retries: RetryEvent[] = [];
    const h = upload(bytesOf(10), { endpoint: endpoint(server.base), fileName: '../evil' });
    h.on('retry', (e) => retries.push(e));
    const err = (await h.done.catch((e: unknown) => e)) as ClientError;
    expect(err).toBeInstanceOf(ClientError);
    expect(err.code).toBe('ERR_INVALID_FILE_NAME');
    expect(err.status).toBe(400);
    expect(err.message).toMatch(/name/i);
    expect(retries).toHaveLength(0);
  });

  it("fails at once on a 4xx that carries no envelope (a proxy's bare 404): only 5xx, 429 and the transient 409s are retried", async () => {
    server = await startServer();
    proxy = await startProxy(server.base, { mount: '/updraft' }); // the endpoint below is outside the mount: 404, no body
    const retries: RetryEvent[] = [];
    const h = upload(bytesOf(10), { endpoint: endpoint(proxy.base), fileName: 'unmounted.bin', transport: 'http', retry: { attempts: 3, baseDelayMs: 5 } });
    h.on('retry', (e) => retries.push(e));
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_PROTOCOL', status: 404, retryable: false });
    expect(retries).toEqual([]);
  });

  it('never waits longer than retry.maxDelayMs between tries when the server sends no Retry-After', async () => {
    server = await startServer();
    proxy = await startProxy(server.base, { failPuts: 8 });
    const data = bytesOf(100 * KiB);
    const retries: RetryEvent[] = [];
    // Uncapped, the 8th retry of a 10 ms base would wait 640-1280 ms.
    const h = upload(data, { endpoint: endpoint(proxy.base), fileName: 'capped.bin', transport: 'http', parallel: 1, retry: { attempts: 8, baseDelayMs: 10, maxDelayMs: 40 } });
    h.on('retry', (e) => retries.push(e));
    const r = await h.done;
    expect(retries.map((e) => e.attempt)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    for (const e of retries) expect(e.delayMs).toBeLessThanOrEqual(40);
    expect(Math.min(...retries.slice(3).map((e) => e.delayMs))).toBeGreaterThanOrEqual(20); // at the cap: its upper half
    expect(r.bytesByTransport.http).toBe(data.length);
    await expectStored(server, 'capped.bin', data);
  });

  it('reports an unreachable server as ERR_NETWORK after its retries', async () => {
    const h = upload(bytesOf(10), { endpoint: 'http://127.0.0.1:9/api/v1/files', fileName: 'x', retry: { attempts: 1, baseDelayMs: 1 } });
    await expect(h.done).rejects.toMatchObject({ code: 'ERR_NETWORK' });
  });
});

describe('client: exports', () => {
  it("re-exports the server's catalogue, and its own codes do not collide with it", () => {
    expect(ERROR_CODES).toEqual(SERVER_ERROR_CODES);
    for (const code of CLIENT_ERROR_CODES) {
      expect(code).toMatch(/^ERR_[A-Z0-9_]+$/);
      expect(SERVER_ERROR_CODES).not.toContain(code);
    }
    const e = new ClientError('ERR_CHUNK_BUSY');
    expect(e).toMatchObject({ name: 'ClientError', code: 'ERR_CHUNK_BUSY', retryable: true });
    expect(new ClientError('ERR_ABORTED')).toMatchObject({ retryable: true });
  });
});
