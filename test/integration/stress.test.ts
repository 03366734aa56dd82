/**
 * The stress harness in CI (a short run, about ten seconds: 100 uploads, faults, both transports, one SIGKILL +
 * restart; STRESS_SEED=N replays another seed), a run against a server that corrupts (the harness must fail it),
 * regression tests for what it found, and tests of the sync points a mutation check found unguarded (a sync skipped,
 * shared too widely, or failed and ignored).
 *
 * The regression tests need a disk whose syncs can be held open, to stand still inside the window between a write
 * and its durability, or made to fail. `fs.fdatasync` (staging files) is wrapped before the engine is imported (its
 * modules capture the function when they load), so the engine and fixtures are imported dynamically below, never
 * statically; FileHandle.datasync (records and journals) is wrapped on the prototype.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULTS, MiB } from '../../bench/stress/plan.js';
import { runStress } from '../../bench/stress/run.js';

// --- an fdatasync that can be held ------------------------------------------------------------------------------------

const realFdatasync = fs.fdatasync;
let gate: Promise<void> | null = null;
let openGate: () => void = () => {};
/** fdatasync calls waiting at the gate. */
let heldSyncs = 0;
/**
 * The next `failNext` fdatasync calls answer EIO, each once, without syncing; later ones succeed. Linux may do the
 * same: a failed writeback drops its dirty pages, and the next fdatasync reports clean (durability.md invariant 7).
 */
let failNext = 0;
/** fdatasync calls answered EIO since the last failSyncs. */
let failedSyncs = 0;

function failSyncs(n: number): void {
  failNext = n;
  failedSyncs = 0;
}

function holdSyncs(): void {
  heldSyncs = 0;
  gate = new Promise<void>((resolve) => {
    openGate = resolve;
  });
}

function releaseSyncs(): void {
  gate = null;
  openGate();
}

// The same for FileHandle.datasync, which the state store uses for upload records and journals.
type Datasync = (this: fsp.FileHandle) => Promise<void>;
let fileHandleProto: { datasync: Datasync } | null = null;
let realDatasync: Datasync | null = null;
let metaGate: Promise<void> | null = null;
let openMetaGate: () => void = () => {};
let heldMetaSyncs = 0;

function holdMetaSyncs(): void {
  heldMetaSyncs = 0;
  metaGate = new Promise<void>((resolve) => {
    openMetaGate = resolve;
  });
}

function releaseMetaSyncs(): void {
  metaGate = null;
  openMetaGate();
}

beforeAll(() => {
  (fs as { fdatasync: typeof fs.fdatasync }).fdatasync = ((fd: number, cb: (err: NodeJS.ErrnoException | null) => void) => {
    const run = (): void => {
      if (failNext === 0) return realFdatasync(fd, cb);
      failNext--;
      failedSyncs++;
      const err: NodeJS.ErrnoException = Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO', errno: -5, syscall: 'fdatasync' });
      process.nextTick(cb, err);
    };
    const g = gate;
    if (g === null) return run();
    heldSyncs++;
    void g.then(run);
  }) as typeof fs.fdatasync;
});

beforeAll(async () => {
  const fh = await fsp.open(fileURLToPath(import.meta.url), 'r');
  fileHandleProto = Object.getPrototypeOf(fh) as { datasync: Datasync };
  await fh.close();
  realDatasync = fileHandleProto.datasync;
  const real = realDatasync;
  fileHandleProto.datasync = async function (this: fsp.FileHandle): Promise<void> {
    const g = metaGate;
    if (g !== null) {
      heldMetaSyncs++;
      await g;
    }
    return real.call(this);
  };
});

afterAll(() => {
  releaseSyncs();
  releaseMetaSyncs();
  (fs as { fdatasync: typeof fs.fdatasync }).fdatasync = realFdatasync;
  if (fileHandleProto && realDatasync) fileHandleProto.datasync = realDatasync;
});

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Resolves with the promise's value, or 'pending' if it has not settled after `ms`. */
async function settledWithin<T>(p: Promise<T>, ms: number): Promise<T | 'pending'> {
  return Promise.race([p, new Promise<'pending'>((r) => setTimeout(() => r('pending'), ms))]);
}

type Fixtures = typeof import('../fixtures/server.js');
let fx: Fixtures;
let server: Awaited<ReturnType<Fixtures['startServer']>> | null = null;
let engineUpload: typeof import('../../src/main/upload.js');
let engineStore: typeof import('../../src/main/state-store.js');

beforeAll(async () => {
  fx = await import('../fixtures/server.js');
  engineUpload = await import('../../src/main/upload.js');
  engineStore = await import('../../src/main/state-store.js');
});

afterEach(async () => {
  failSyncs(0);
  releaseSyncs();
  releaseMetaSyncs();
  await server?.close();
  server = null;
});

describe('regressions found by the stress harness', () => {
  const CS = 4096;

  it('does not answer a duplicate chunk "already received" before the first copy is durable (chunk durability)', async () => {
    server = await fx.startServer({ durability: 'chunk', chunkSize: CS });
    const data = fx.bytesOf(2 * CS);
    const init = await fx.initUpload(server.base, { fileName: 'dup.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    holdSyncs();
    const first = fx.putChunk(server.base, guid, 0, fx.slice(data, CS, 0));
    // The first copy is written and its bit set; its fdatasync (the durability of the ack) is held.
    await until(() => heldSyncs > 0, 'the first copy to reach its fdatasync');
    // The journal lists a chunk only once its bytes are durable: while the .part's fdatasync is held, the journal is
    // still its 4-byte header alone. A record written first would name a chunk a crash can take away (state-store.ts).
    const journalPath = path.join(server.dir, '.updraft-staging', `${guid}.journal`);
    expect((await fsp.readFile(journalPath)).length, 'journal bytes before the data sync').toBe(4);
    const dup = fx.putChunk(server.base, guid, 0, fx.slice(data, CS, 0));
    // A "Chunk already received" now would acknowledge bytes a crash can still take away (durability.md 4).
    expect(await settledWithin(dup, 300)).toBe('pending');
    releaseSyncs();
    expect((await first).json.message).toBe('Chunk received');
    expect((await dup).json.message).toBe('Chunk already received');
    const journal = await fsp.readFile(journalPath);
    expect(journal.readUInt32LE(4)).toBe(0); // the first record, after the journal's 4-byte header: chunk 0
  });

  it('keeps a chunk claimed until its commit ends when the first writer disconnects after sending it whole', async () => {
    server = await fx.startServer({ durability: 'chunk', chunkSize: CS });
    const data = fx.bytesOf(2 * CS);
    const init = await fx.initUpload(server.base, { fileName: 'gone.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    holdSyncs();
    // The first writer sends the whole chunk and hangs up before its reply (a proxy cut after the body).
    const port = Number(new URL(server.base).port);
    const s = net.connect(port, '127.0.0.1');
    await new Promise((r) => s.once('connect', r));
    s.write(`PUT ${fx.PREFIX}/upload-chunk?guid=${guid}&chunk=0 HTTP/1.1\r\nHost: x\r\nContent-Length: ${CS}\r\n\r\n`);
    s.write(fx.slice(data, CS, 0));
    await until(() => heldSyncs > 0, 'the chunk to reach its fdatasync');
    s.destroy();
    await new Promise((r) => setTimeout(r, 100)); // the server sees the abort
    const dup = fx.putChunk(server.base, guid, 0, fx.slice(data, CS, 0));
    expect(await settledWithin(dup, 300)).toBe('pending');
    releaseSyncs();
    expect((await dup).json.message).toBe('Chunk already received');
    const status = await fx.call(server.base, 'GET', `${fx.PREFIX}/upload-status?guid=${guid}`);
    expect(status.json.data).toMatchObject({ receivedChunks: 1, missingChunks: [1] });
  });

  it('a cancel that lands while the last chunk commits wins: no completion, no failure, the chunk gets 410', async () => {
    server = await fx.startServer({ durability: 'chunk', chunkSize: CS });
    const data = fx.bytesOf(2 * CS);
    const init = await fx.initUpload(server.base, { fileName: 'raced.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    await fx.putChunk(server.base, guid, 0, fx.slice(data, CS, 0));
    holdSyncs();
    // The last chunk is written and has won completion; its commit (and so its finalization) waits at the gate.
    const last = fx.putChunk(server.base, guid, 1, fx.slice(data, CS, 1));
    await until(() => heldSyncs > 0, 'the last chunk to reach its fdatasync');
    // The upload is still active, so the cancel is accepted; it waits for the commit before removing the files.
    const cancel = fx.call(server.base, 'DELETE', `${fx.PREFIX}/upload-chunk?guid=${guid}`);
    await new Promise((r) => setTimeout(r, 100));
    releaseSyncs();
    const [c, l] = await Promise.all([cancel, last]);
    expect(c.status, JSON.stringify(c.json)).toBe(200);
    expect(c.json.message).toBe('Upload cancelled');
    // The client was told "cancelled": the upload must stay cancelled, and nothing may complete it afterwards.
    expect(l.status, JSON.stringify(l.json)).toBe(410);
    expect(l.json.code).toBe('ERR_UPLOAD_CANCELLED');
    const status = await fx.call(server.base, 'GET', `${fx.PREFIX}/upload-status?guid=${guid}`);
    expect(status.json.data?.uploadStatus).toBe('cancelled');
    const later = await fx.putChunk(server.base, guid, 1, fx.slice(data, CS, 1));
    expect(later.json.code).toBe('ERR_UPLOAD_CANCELLED');
    expect(await fx.listFiles(server.dir)).toEqual([]);
    await server.close();
    server = await fx.startServer({ dir: server.dir, durability: 'chunk', chunkSize: CS });
    const after = await fx.call(server.base, 'GET', `${fx.PREFIX}/upload-status?guid=${guid}`);
    expect(after.json.data?.uploadStatus).toBe('cancelled');
  });

  // What a SIGKILL at some moment leaves is exactly what is on disk at that moment, so copying the folder and starting
  // a second engine on the copy is a crash at that moment, deterministically ("crash image").
  async function crashImageStatus(dir: string, guid: string): Promise<{ status: number; code?: string; data?: Record<string, unknown> }> {
    const snapshot = `${dir}-crash-image-${Date.now()}`;
    await fsp.cp(dir, snapshot, { recursive: true });
    // The image's engine syncs freely; the server under test keeps waiting at the gates it already reached.
    const saved = { gate, metaGate };
    gate = null;
    metaGate = null;
    const image = await fx.startServer({ dir: snapshot, durability: 'chunk', chunkSize: CS });
    try {
      const r = await fx.call(image.base, 'GET', `${fx.PREFIX}/upload-status?guid=${guid}`);
      return { status: r.status, ...(r.json.code ? { code: r.json.code } : {}), ...(r.json.data ? { data: r.json.data } : {}) };
    } finally {
      await image.close();
      await fsp.rm(snapshot, { recursive: true, force: true });
      gate = saved.gate;
      metaGate = saved.metaGate;
    }
  }

  it('announces a cancel only once it is durable: a crash image agrees with what clients were told', async () => {
    server = await fx.startServer({ durability: 'chunk', chunkSize: CS });
    const data = fx.bytesOf(2 * CS);
    const init = await fx.initUpload(server.base, { fileName: 'told.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    await fx.putChunk(server.base, guid, 0, fx.slice(data, CS, 0));
    // The cancel's record waits at its sync: nobody may hear "cancelled" yet, and a crash now keeps the upload.
    holdMetaSyncs();
    const cancel = fx.call(server.base, 'DELETE', `${fx.PREFIX}/upload-chunk?guid=${guid}`);
    await until(() => heldMetaSyncs > 0, 'the cancel record to reach its sync');
    const during = await fx.call(server.base, 'GET', `${fx.PREFIX}/upload-status?guid=${guid}`);
    expect(during.status, JSON.stringify(during.json)).toBe(200);
    expect(during.json.data).toMatchObject({ uploadStatus: 'active', receivedChunks: 1 });
    expect(await crashImageStatus(server.dir, guid)).toMatchObject({ status: 200, data: { uploadStatus: 'active' } });
    releaseMetaSyncs();
    expect((await cancel).json.message).toBe('Upload cancelled');
    expect((await fx.call(server.base, 'GET', `${fx.PREFIX}/upload-status?guid=${guid}`)).json.data?.uploadStatus).toBe('cancelled');
    expect(await crashImageStatus(server.dir, guid)).toMatchObject({ status: 200, data: { uploadStatus: 'cancelled' } });
  });

  it('announces an expiry only once it is durable: a crash image agrees with what clients were told', async () => {
    server = await fx.startServer({ durability: 'chunk', chunkSize: CS, uploadTtl: 300, reapInterval: 50 });
    const data = fx.bytesOf(2 * CS);
    const init = await fx.initUpload(server.base, { fileName: 'idle.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    await fx.putChunk(server.base, guid, 0, fx.slice(data, CS, 0));
    // The expiry's record waits at its sync: nobody may hear "expired" yet, and a crash now keeps the upload.
    holdMetaSyncs();
    await until(() => heldMetaSyncs > 0, 'the expiry record to reach its sync');
    const during = await fx.call(server.base, 'GET', `${fx.PREFIX}/upload-status?guid=${guid}`);
    expect(during.status, JSON.stringify(during.json)).toBe(200);
    expect(during.json.data).toMatchObject({ uploadStatus: 'active', receivedChunks: 1 });
    expect(await crashImageStatus(server.dir, guid)).toMatchObject({ status: 200, data: { uploadStatus: 'active' } });
    releaseMetaSyncs();
    let after = during;
    for (let i = 0; i < 100 && after.status === 200; i++) {
      await new Promise((r) => setTimeout(r, 20));
      after = await fx.call(server.base, 'GET', `${fx.PREFIX}/upload-status?guid=${guid}`);
    }
    expect(after.json.code).toBe('ERR_UPLOAD_EXPIRED');
    expect(await crashImageStatus(server.dir, guid)).toMatchObject({ status: 410, code: 'ERR_UPLOAD_EXPIRED' });
    // A cancel now answers with the expiry, not "cancelled".
    expect((await fx.call(server.base, 'DELETE', `${fx.PREFIX}/upload-chunk?guid=${guid}`)).json.code).toBe('ERR_UPLOAD_EXPIRED');
  });

  it('a cancel announced while a chunk commits survives a crash, and the chunk cannot complete it', async () => {
    // Found by `npm run stress -- --seed 23 --uploads 250 --chunk-size 65536 --max-size 4194304 --concurrency 24
    // --faults 3 --crash --crash-every 0.5-2`: a client told "cancelled" (4001) found the upload active after a
    // SIGKILL, or even completed (every chunk was durable, so the restart finalized it).
    server = await fx.startServer({ durability: 'chunk', chunkSize: CS });
    const data = fx.bytesOf(2 * CS);
    const init = await fx.initUpload(server.base, { fileName: 'resurrected.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    await fx.putChunk(server.base, guid, 0, fx.slice(data, CS, 0));
    holdSyncs();
    // The last chunk's commit is in flight when the cancel comes; the cancel waits for it before removing files.
    const chunk = fx.putChunk(server.base, guid, 1, fx.slice(data, CS, 1));
    await until(() => heldSyncs > 0, 'the chunk to reach its fdatasync');
    const cancel = fx.call(server.base, 'DELETE', `${fx.PREFIX}/upload-chunk?guid=${guid}`);
    await new Promise((r) => setTimeout(r, 100));
    const told = await fx.call(server.base, 'GET', `${fx.PREFIX}/upload-status?guid=${guid}`);
    const image = await crashImageStatus(server.dir, guid);
    if (told.json.data?.uploadStatus === 'cancelled') expect(image, JSON.stringify(image)).toMatchObject({ status: 200, data: { uploadStatus: 'cancelled' } });
    releaseSyncs();
    const [c, l] = await Promise.all([cancel, chunk]);
    expect(c.json.message).toBe('Upload cancelled');
    expect(l.json.code).toBe('ERR_UPLOAD_CANCELLED');
    expect(await fx.listFiles(server.dir)).toEqual([]);
    expect(await crashImageStatus(server.dir, guid)).toMatchObject({ status: 200, data: { uploadStatus: 'cancelled' } });
  });

  it('removes the journal a crash left next to a completed upload when it restarts', async () => {
    server = await fx.startServer({ durability: 'chunk', chunkSize: CS });
    const dir = server.dir;
    const data = fx.bytesOf(CS + 1);
    const init = await fx.initUpload(server.base, { fileName: 'done.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    await fx.putChunks(server.base, guid, data, CS, [0, 1]);
    await server.close();
    // A SIGKILL between "record completed" and "remove the journal" leaves the journal (invariant 6's last steps).
    const staging = path.join(dir, '.updraft-staging');
    const journal = Buffer.alloc(8);
    journal.writeUInt32LE(1, 4);
    await fsp.writeFile(path.join(staging, `${guid}.journal`), journal);
    server = await fx.startServer({ dir, durability: 'chunk', chunkSize: CS });
    expect((await fsp.readdir(staging)).filter((f) => f.startsWith(guid))).toEqual([`${guid}.meta`]);
    const status = await fx.call(server.base, 'GET', `${fx.PREFIX}/upload-status?guid=${guid}`);
    expect(status.json.data).toMatchObject({ uploadStatus: 'completed', finalName: 'done.bin' });
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'done.bin')), data)).toBe(0);
  });
});

describe('durability: an acknowledgement waits for its syncs, and a failed sync fails the upload', () => {
  const CS = 4096;

  /** The upload's status as a client sees it. */
  async function statusOf(guid: string): Promise<{ status: number; code?: string; uploadStatus?: string }> {
    const r = await fx.call(server!.base, 'GET', `${fx.PREFIX}/upload-status?guid=${guid}`);
    return { status: r.status, ...(r.json.code ? { code: r.json.code } : {}), ...(r.json.data ? { uploadStatus: r.json.data.uploadStatus as string } : {}) };
  }

  /**
   * Waits until a sync is held at the gate (`held`) or `p` has settled, whichever comes first (at most 5 s: a worker
   * may still be starting on a busy machine), then gives `p` 300 ms more: resolves with its value, or 'pending'.
   */
  async function afterHeld<T>(p: Promise<T>, held: () => boolean): Promise<T | 'pending'> {
    let settled = false;
    void p.then(
      () => (settled = true),
      () => (settled = true),
    );
    await until(() => held() || settled, 'a sync to be held or the reply to arrive');
    return settledWithin(p, 300);
  }

  /** Polls the upload's status until it reads `want` (or 5 s pass); returns the last one seen. */
  async function statusBecomes(guid: string, want: string): Promise<string | undefined> {
    let s = await statusOf(guid);
    for (let i = 0; i < 250 && s.uploadStatus !== want; i++) {
      await new Promise((r) => setTimeout(r, 20));
      s = await statusOf(guid);
    }
    return s.uploadStatus;
  }

  it('acknowledges a chunk committed while an fdatasync runs only by a sync that began after it (group commit)', async () => {
    const dir = await fx.tempDir('updraft-group-commit-');
    const guid = '00000000-0000-4000-8000-000000000001';
    const now = Date.now();
    const u = new engineUpload.Upload(
      { v: 1, guid, user: 'u', fileName: 'g.bin', fileSize: 2 * CS, chunkSize: CS, totalChunks: 2, targetPath: [], startTime: now, lastActivityTime: now, status: 'active' },
      null,
    );
    const part = await fsp.open(path.join(dir, `${guid}.part`), 'w+');
    const journalPath = path.join(dir, `${guid}.journal`);
    u.fd = part.fd;
    u.journal = await engineStore.Journal.open(journalPath);
    const journaled = async (): Promise<number[]> => engineStore.parseJournal(await fsp.readFile(journalPath), crc32(guid)).chunks;
    try {
      holdSyncs();
      const first = u.commit([0]);
      // Chunk 0's fdatasync is held; chunk 1 is written now, after that sync began, so that sync cannot cover it.
      await until(() => heldSyncs === 1, 'the first round to reach its fdatasync');
      const second = u.commit([1]);
      releaseSyncs();
      holdSyncs();
      expect(await settledWithin(first, 2000)).toBe(true);
      // Acknowledging chunk 1 now would claim bytes that no finished sync covers (durability.md invariant 4).
      expect(await settledWithin(second, 200)).toBe('pending');
      expect(await journaled()).toEqual([0]);
      await until(() => heldSyncs === 1, 'a second round to reach its own fdatasync');
      expect(await journaled()).toEqual([0]);
      releaseSyncs();
      expect(await settledWithin(second, 2000)).toBe(true);
      expect(await journaled()).toEqual([0, 1]);
    } finally {
      releaseSyncs();
      await u.commitsIdle();
      await u.journal.close();
      await part.close();
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it('does not acknowledge a chunk before its journal record is synced (chunk durability)', async () => {
    server = await fx.startServer({ durability: 'chunk', chunkSize: CS });
    const data = fx.bytesOf(2 * CS);
    const init = await fx.initUpload(server.base, { fileName: 'journaled.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    // The journal's datasync (FileHandle.datasync) is held: the chunk's record is written but could still be lost,
    // and a crash would ask for the chunk again after the client was told it is safe.
    holdMetaSyncs();
    const put = fx.putChunk(server.base, guid, 0, fx.slice(data, CS, 0));
    expect(await afterHeld(put, () => heldMetaSyncs > 0)).toBe('pending');
    expect(heldMetaSyncs).toBeGreaterThan(0);
    releaseMetaSyncs();
    const r = await put;
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(r.json.message).toBe('Chunk received');
    const last = await fx.putChunk(server.base, guid, 1, fx.slice(data, CS, 1));
    expect(last.status, JSON.stringify(last.json)).toBe(200);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'journaled.bin')), data)).toBe(0);
  });

  it('does not complete an upload before its staging file is synced (upload durability)', async () => {
    server = await fx.startServer({ durability: 'upload', chunkSize: CS, checkpointInterval: 600_000 });
    const data = fx.bytesOf(2 * CS + 7);
    const init = await fx.initUpload(server.base, { fileName: 'synced.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    for (const c of [0, 1]) expect((await fx.putChunk(server.base, guid, c, fx.slice(data, CS, c))).status).toBe(200);
    // The completion's fdatasync of the staging file is held: until it ends, the file's bytes may still be lost, so
    // nothing may appear under the final name and nobody may hear "complete" (durability.md invariant 6).
    holdSyncs();
    const last = fx.putChunk(server.base, guid, 2, fx.slice(data, CS, 2));
    expect(await afterHeld(last, () => heldSyncs > 0)).toBe('pending');
    expect(heldSyncs).toBeGreaterThan(0);
    expect(await fx.listFiles(server.dir)).toEqual([]);
    releaseSyncs();
    const r = await last;
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(await fx.listFiles(server.dir)).toEqual(['synced.bin']);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'synced.bin')), data)).toBe(0);
  });

  it('fails the upload when a chunk\'s fdatasync fails, and accepts no chunk of it afterwards (chunk durability)', async () => {
    server = await fx.startServer({ durability: 'chunk', chunkSize: CS });
    const data = fx.bytesOf(3 * CS);
    const init = await fx.initUpload(server.base, { fileName: 'eio.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    // Chunk 0's fdatasync answers EIO once; a second sync would report clean over pages the kernel dropped.
    failSyncs(1);
    const r = await fx.putChunk(server.base, guid, 0, fx.slice(data, CS, 0));
    expect(failedSyncs).toBe(1);
    expect(r.status, JSON.stringify(r.json)).toBe(500);
    expect(r.json.code).toBe('ERR_STORAGE_FAILED');
    // No later reply may claim those bytes, nor take new ones for this upload (durability.md invariant 7).
    for (const c of [0, 1]) {
      const again = await fx.putChunk(server.base, guid, c, fx.slice(data, CS, c));
      expect(again.status, JSON.stringify(again.json)).toBe(409);
      expect(again.json.code).toBe('ERR_UPLOAD_FAILED');
    }
    expect(await statusOf(guid)).toMatchObject({ status: 200, uploadStatus: 'failed' });
    expect(await fx.listFiles(server.dir)).toEqual([]);
  });

  it('fails the upload when the completion\'s fdatasync fails: no file under the final name (upload durability)', async () => {
    server = await fx.startServer({ durability: 'upload', chunkSize: CS, checkpointInterval: 600_000 });
    const data = fx.bytesOf(2 * CS);
    const init = await fx.initUpload(server.base, { fileName: 'unsynced.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    expect((await fx.putChunk(server.base, guid, 0, fx.slice(data, CS, 0))).status).toBe(200);
    // The completion's fdatasync of the staging file answers EIO once: the file's bytes may be gone.
    failSyncs(1);
    const r = await fx.putChunk(server.base, guid, 1, fx.slice(data, CS, 1));
    expect(failedSyncs).toBe(1);
    expect(r.status, JSON.stringify(r.json)).toBe(500);
    expect(r.json.code).toBe('ERR_STORAGE_FAILED');
    expect(await fx.listFiles(server.dir)).toEqual([]);
    expect(await statusOf(guid)).toMatchObject({ status: 200, uploadStatus: 'failed' });
    const again = await fx.putChunk(server.base, guid, 1, fx.slice(data, CS, 1));
    expect(again.status, JSON.stringify(again.json)).toBe(409);
    expect(again.json.code).toBe('ERR_UPLOAD_FAILED');
    expect(await fx.listFiles(server.dir)).toEqual([]);
  });

  it('fails the upload when a periodic checkpoint\'s fdatasync fails, and accepts no chunk of it afterwards (upload durability)', async () => {
    server = await fx.startServer({ durability: 'upload', chunkSize: CS, checkpointInterval: 50 });
    const data = fx.bytesOf(3 * CS);
    const init = await fx.initUpload(server.base, { fileName: 'checkpoint.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    // The first checkpoint after chunk 0 (the only fdatasync this upload makes before its completion) answers EIO.
    failSyncs(1);
    const r = await fx.putChunk(server.base, guid, 0, fx.slice(data, CS, 0));
    expect(r.status, JSON.stringify(r.json)).toBe(200); // upload durability: acknowledged before any sync
    await until(() => failedSyncs === 1, 'the checkpoint to reach its fdatasync');
    // Chunk 0 was acknowledged and can no longer be resumed truthfully: the upload fails, and says so.
    expect(await statusBecomes(guid, 'failed')).toBe('failed');
    for (const c of [1, 2]) {
      const again = await fx.putChunk(server.base, guid, c, fx.slice(data, CS, c));
      expect(again.status, JSON.stringify(again.json)).toBe(409);
      expect(again.json.code).toBe('ERR_UPLOAD_FAILED');
    }
    expect(await fx.listFiles(server.dir)).toEqual([]);
  });
});

describe('the harness fails a server that corrupts', () => {
  it('reports a completed file with a flipped byte as corrupted and a file nobody uploaded as stray, and the run fails', async () => {
    let completions = 0;
    let flipped = 0;
    // A server that breaks its promise after the fact: every third non-empty completed file gets one byte changed,
    // and the first completion leaves a file nobody uploaded beside it.
    server = await fx.startServer({
      chunkSize: 64 * 1024,
      onUploadComplete: async (info) => {
        if (completions++ === 0) await fsp.writeFile(path.join(path.dirname(info.path), 'stray.bin'), 'not uploaded');
        if (info.size === 0 || completions % 3 !== 1) return;
        const fh = await fsp.open(info.path, 'r+');
        try {
          const b = Buffer.alloc(1);
          const at = Math.floor(info.size / 2);
          await fh.read(b, 0, 1, at);
          b[0] = b[0]! ^ 0xff;
          await fh.write(b, 0, 1, at);
        } finally {
          await fh.close();
        }
        flipped++;
      },
    });
    const result = await runStress(
      {
        ...DEFAULTS,
        seed: 7,
        url: server.base,
        dir: server.dir,
        uploads: 15,
        concurrency: 4,
        chunkSize: 64 * 1024,
        maxSize: 512 * 1024,
        faultScale: 0,
        durationMs: 30_000,
        requestTimeoutMs: 10_000,
        progress: false,
      },
      () => {},
    );
    const detail = JSON.stringify({ counts: result.counts, corrupted: result.corrupted, stray: result.strayFiles, flipped }, null, 2);
    expect(flipped, detail).toBeGreaterThan(0);
    expect(result.counts.corrupted, detail).toBe(flipped);
    expect(result.strayFiles, detail).toEqual([expect.stringMatching(/\/stray\.bin$/)]);
    expect(result.ok, detail).toBe(false);
  }, 60_000);
});

describe('the harness fails a server that announces a completion too early', () => {
  it('counts a "complete" whose file is not in its place when the reply arrives (completed before placed), and the run fails', async () => {
    const away = await fx.tempDir('updraft-stress-away-');
    let moved = 0;
    let completions = 0;
    // Every second non-empty completion's file leaves its place before the reply (as if the move came after it).
    server = await fx.startServer({
      chunkSize: 64 * 1024,
      onUploadComplete: async (info) => {
        if (info.size === 0 || completions++ % 2 !== 0) return;
        await fsp.rename(info.path, path.join(away, `${moved}.bin`));
        moved++;
      },
    });
    const result = await runStress(
      { ...DEFAULTS, seed: 8, url: server.base, dir: server.dir, uploads: 12, concurrency: 4, chunkSize: 64 * 1024, maxSize: 512 * 1024, faultScale: 0, durationMs: 30_000, requestTimeoutMs: 10_000, progress: false },
      () => {},
    );
    const detail = JSON.stringify({ counts: result.counts, violations: result.violations, moved }, null, 2);
    expect(moved, detail).toBeGreaterThan(0);
    expect(result.counts.completedBeforePlaced, detail).toBe(moved);
    expect(result.violations.filter((v) => v.includes('before the file was in place')), detail).toHaveLength(moved);
    expect(result.ok, detail).toBe(false);
    await fsp.rm(away, { recursive: true, force: true });
  }, 60_000);
});

describe('stress (short run)', () => {
  it(
    'completes or cleanly ends 100 uploads under faults and a SIGKILL + restart: nothing corrupted, lost or left over',
    async () => {
      const seed = Number(process.env.STRESS_SEED ?? 20_240_605) >>> 0;
      const result = await runStress(
        {
          ...DEFAULTS,
          seed,
          uploads: 100,
          concurrency: 8,
          chunkSize: 256 * 1024,
          maxSize: 8 * MiB,
          crash: true,
          maxCrashes: 1,
          crashEveryMs: [2000, 4000],
          durationMs: 75_000,
          requestTimeoutMs: 15_000,
          progress: false,
        },
        () => {},
      );
      const detail = JSON.stringify(
        { seed, counts: result.counts, corrupted: result.corrupted, violations: result.violations, leftover: result.leftoverStaging, stray: result.strayFiles, kept: result.dirKept },
        null,
        2,
      );
      expect(result.crashes, detail).toBe(1);
      // Both transports ran (updraft.v1 is skipped only when the server does not speak it).
      expect(result.transports.used, JSON.stringify(result.transports)).toEqual(['put', 'ws']);
      expect(result.counts.corrupted, detail).toBe(0);
      expect(result.counts.strayFiles, detail).toBe(0);
      expect(result.counts.ackedChunksLost, detail).toBe(0);
      expect(result.counts.acksNotDurable, detail).toBe(0);
      expect(result.counts.completedBeforePlaced, detail).toBe(0);
      expect(result.counts.completionsLost, detail).toBe(0);
      expect(result.counts.leftoverStaging, detail).toBe(0);
      expect(result.counts.violations, detail).toBe(0);
      expect(result.counts.gaveUp, detail).toBe(0);
      expect(result.counts.unfinished, detail).toBe(0);
      // The run did something: most uploads completed and the faults fired.
      expect(result.counts.completed, detail).toBeGreaterThan(70);
      expect(result.proxy.cuts + result.proxy.resets, detail).toBeGreaterThan(5);
      // Keyed inits lost replies and were answered with the upload they made: no orphan among them (a violation).
      expect(result.proxy.repliesLost, detail).toBeGreaterThan(0);
      expect(result.ok, detail).toBe(true);
    },
    120_000,
  );
});
