/**
 * Races between a chunk and the end of its upload, on the registry with real worker threads: a graceful stop that
 * comes while a body is still arriving, an expiry being recorded while a client resumes, and a process that dies
 * inside onUploadComplete. Each was found by review and reproduced by a script before it was fixed.
 */
import { randomBytes } from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ChunkReceiver, claimChunk, nextWriterId, writeWholeChunk } from '../../src/main/chunk-ingest.js';
import type { IngestContext } from '../../src/main/chunk-ingest.js';
import { resolveOptions } from '../../src/main/options.js';
import type { UploadEngineOptions } from '../../src/main/options.js';
import { SlabPool } from '../../src/main/slab-pool.js';
import { UploadRegistry } from '../../src/main/upload-registry.js';
import type { WritePool } from '../../src/main/write-pool.js';
import { UploadError } from '../../src/protocol/errors.js';
import { H_TASKS_IN_FLIGHT } from '../../src/workers/shared-layout.js';
import type { WriteTask } from '../../src/workers/task-types.js';
import { registryHarness } from '../fixtures/registry-harness.js';

const CS = 256 * 1024;
const SLAB = 64 * 1024;
const { log, pool, rootDir } = registryHarness('lifecycle');

async function setUp(extra: UploadEngineOptions = {}) {
  const dir = await rootDir();
  const options = resolveOptions({ dir, chunkSize: CS, batchSize: SLAB, logLevel: 'silent', ...extra });
  const registry = new UploadRegistry(options, log);
  await registry.start();
  const slabs = new SlabPool({ slabSize: SLAB, maxBytes: options.maxInFlightBytes, maxFilling: options.maxReadingBodies });
  const ctx: IngestContext = { options, pool, slabs, registry };
  const data = randomBytes(3 * CS);
  const u = await registry.create('anonymous', { fileName: 'f.bin', fileSize: data.length, chunkSize: CS, totalChunks: 3, targetPath: [] });
  return { dir, options, registry, ctx, data, u };
}

const chunkOf = (data: Uint8Array, c: number): Uint8Array => data.subarray(c * CS, (c + 1) * CS);

describe.each(['chunk', 'upload'] as const)('upload lifecycle races (durability %s)', (durability) => {
  it('a graceful stop while a body is still arriving: that chunk gets 503, the upload does not fail, and resumes', async () => {
    const { options, registry, ctx, data, u } = await setUp({ durability });
    expect((await writeWholeChunk(ctx, u, 0, chunkOf(data, 0))).duplicate).toBe(false);
    // Chunk 1 as a streamed body: all but its last slab arrive (and are written) before the stop.
    const writer = nextWriterId();
    expect(await claimChunk(ctx, u, 1, writer)).toBeNull();
    const body = new ChunkReceiver(ctx, u, 1, writer, () => {}, () => {});
    const last = CS - SLAB;
    body.push(chunkOf(data, 1).subarray(0, last));
    // The rest arrives while the stop is recording the upload (it waited graceMs for bodies in vain).
    let finished: Promise<unknown> | null = null;
    const writeMeta = registry.store.writeMeta.bind(registry.store);
    registry.store.writeMeta = (meta) => {
      if (finished === null && meta.status === 'active') {
        body.push(chunkOf(data, 1).subarray(last));
        finished = body.finish();
        finished.catch(() => {});
      }
      return writeMeta(meta);
    };
    await registry.close();
    expect(finished).not.toBeNull();
    await expect(finished).rejects.toMatchObject({ code: 'ERR_SHUTTING_DOWN' });
    expect(u.status).toBe('active');
    expect(u.failure).toBeUndefined();

    // After the restart: active, chunk 0 kept (it was acknowledged), chunk 1 asked for again; then it completes.
    const again = new UploadRegistry(options, log);
    await again.start();
    const v = [...again.uploads()][0]!;
    expect(v.status).toBe('active');
    expect(v.statusData().missingChunks).toEqual([1, 2]);
    const ctx2: IngestContext = { ...ctx, registry: again };
    await writeWholeChunk(ctx2, v, 2, chunkOf(data, 2));
    const done = await writeWholeChunk(ctx2, v, 1, chunkOf(data, 1));
    expect(done.completion?.fileName).toBe('f.bin');
    expect(Buffer.compare(await fsp.readFile(path.join(options.dir, 'f.bin')), data)).toBe(0);
    await again.close();
  });
});

describe('upload lifecycle races', () => {
  it('a chunk that arrives while an expiry is being recorded is answered 410, not stored and then removed', async () => {
    const { registry, ctx, data, u } = await setUp({ uploadTtl: 1000, reapInterval: 3_600_000 });
    await writeWholeChunk(ctx, u, 0, chunkOf(data, 0));
    let late: Promise<unknown> | null = null;
    const writeMeta = registry.store.writeMeta.bind(registry.store);
    registry.store.writeMeta = (meta) => {
      // The client resumes just as the reaper starts recording the expiry.
      if (meta.status === 'expired' && late === null) {
        late = writeWholeChunk(ctx, u, 1, chunkOf(data, 1));
        late.catch(() => {});
      }
      return writeMeta(meta);
    };
    await registry.reap(Date.now() + 5000);
    expect(u.status).toBe('expired');
    expect(late).not.toBeNull();
    await expect(late).rejects.toMatchObject({ code: 'ERR_UPLOAD_EXPIRED' });
    await registry.close();
  });

  it('runs onUploadComplete again after a process died inside it, and removes the file if it now refuses it', async () => {
    for (const verdict of ['accept', 'refuse'] as const) {
      // The first process reaches the hook (the file is linked into place, `completed` not yet recorded) and is
      // never heard of again: its registry is abandoned as a SIGKILL would leave it.
      let entered!: () => void;
      const inHook = new Promise<void>((resolve) => (entered = resolve));
      const { options, ctx, data, u } = await setUp({
        onUploadComplete: () => {
          entered();
          return new Promise<void>(() => {});
        },
      });
      for (const c of [0, 1]) await writeWholeChunk(ctx, u, c, chunkOf(data, c));
      void writeWholeChunk(ctx, u, 2, chunkOf(data, 2)).catch(() => {});
      await inHook;
      const file = path.join(options.dir, 'f.bin');
      expect(Buffer.compare(await fsp.readFile(file), data)).toBe(0);

      const calls: string[] = [];
      const next = new UploadRegistry(
        {
          ...options,
          onUploadComplete: (info) => {
            calls.push(`${info.fileName} ${info.size}`);
            if (verdict === 'refuse') throw new UploadError('ERR_UPLOAD_REFUSED', 'Not after a second look');
          },
        },
        log,
      );
      await next.start();
      expect(calls).toEqual([`f.bin ${data.length}`]);
      const v = [...next.uploads()][0]!;
      if (verdict === 'accept') {
        expect(v.status).toBe('completed');
        expect(Buffer.compare(await fsp.readFile(file), data)).toBe(0);
      } else {
        expect(v.status).toBe('failed');
        expect(v.failure).toMatchObject({ code: 'ERR_UPLOAD_REFUSED' });
        await expect(fsp.stat(file)).rejects.toMatchObject({ code: 'ENOENT' });
      }
      await next.close();
    }
  });

  it('a name taken between the free-name check and the link is not replaced: the upload takes the next free name', async () => {
    const { options, registry, ctx, data, u } = await setUp();
    const taken = path.join(options.dir, 'f.bin');
    const theirs = Buffer.from('another upload or user put this here first\n');
    const writeMeta = registry.store.writeMeta.bind(registry.store);
    let raced = false;
    registry.store.writeMeta = async (meta) => {
      // f.bin was free when the name was chosen; it appears once 'finalizing' names it, before the link.
      if (!raced && meta.status === 'finalizing' && meta.finalName === 'f.bin') {
        raced = true;
        await fsp.writeFile(taken, theirs, { flag: 'wx' });
      }
      return writeMeta(meta);
    };
    for (const c of [0, 1]) await writeWholeChunk(ctx, u, c, chunkOf(data, c));
    const done = await writeWholeChunk(ctx, u, 2, chunkOf(data, 2));
    expect(raced).toBe(true);
    // onConflict 'rename' (the default): a link fails with EEXIST and the next name is tried; a rename would have
    // replaced the other file silently.
    expect(done.completion?.fileName).toBe('f (1).bin');
    expect(u.status).toBe('completed');
    expect(Buffer.compare(await fsp.readFile(taken), theirs)).toBe(0);
    expect(Buffer.compare(await fsp.readFile(path.join(options.dir, 'f (1).bin')), data)).toBe(0);
    await registry.close();
  });

  it('the reaper does not expire an idle upload while a chunk is claimed and its body is still arriving', async () => {
    const { options, registry, ctx, data, u } = await setUp({ uploadTtl: 1000, reapInterval: 3_600_000 });
    const writer = nextWriterId();
    expect(await claimChunk(ctx, u, 1, writer)).toBeNull();
    const body = new ChunkReceiver(ctx, u, 1, writer, () => {}, () => {});
    body.push(chunkOf(data, 1).subarray(0, CS / 2));
    // Long past the TTL by the clock, but a writer holds chunk 1 (and half of it may be in a worker): not idle.
    await registry.reap(Date.now() + options.uploadTtl + 60_000);
    expect(u.status).toBe('active');
    body.push(chunkOf(data, 1).subarray(CS / 2));
    expect((await body.finish()).duplicate).toBe(false);
    await writeWholeChunk(ctx, u, 0, chunkOf(data, 0));
    const done = await writeWholeChunk(ctx, u, 2, chunkOf(data, 2));
    expect(done.completion?.fileName).toBe('f.bin');
    expect(Buffer.compare(await fsp.readFile(path.join(options.dir, 'f.bin')), data)).toBe(0);
    await registry.close();
  });

  it('the reaper does not expire an idle upload while a write task is in flight, even one no claim accounts for', async () => {
    const { options, registry, u } = await setUp({ uploadTtl: 1000, reapInterval: 3_600_000 });
    const part = registry.store.partPath(u.guid);
    // A task in a worker, counted in the shared header only. Should the reaper expire anyway, its end waits for the
    // task: shortened here from 30 s so that such a run fails quickly instead of timing out.
    const waitMs = UploadRegistry.workersLeftMs;
    UploadRegistry.workersLeftMs = 50;
    Atomics.add(u.shared!.header, H_TASKS_IN_FLIGHT, 1);
    try {
      await registry.reap(Date.now() + options.uploadTtl + 60_000);
      expect(u.status).toBe('active');
      expect((await fsp.stat(part)).isFile()).toBe(true);
    } finally {
      Atomics.sub(u.shared!.header, H_TASKS_IN_FLIGHT, 1);
      UploadRegistry.workersLeftMs = waitMs;
    }
    // Once the task has returned, the same round expires it.
    await registry.reap(Date.now() + options.uploadTtl + 60_000);
    expect(u.status).toBe('expired');
    await expect(fsp.stat(part)).rejects.toMatchObject({ code: 'ENOENT' });
    await registry.close();
  });

  it('a cancel removes the staging file only once the write tasks in flight have returned', async () => {
    const { registry, u } = await setUp();
    const part = registry.store.partPath(u.guid);
    // A task still in a worker (the full 30 s wait of workersLeft applies).
    Atomics.add(u.shared!.header, H_TASKS_IN_FLIGHT, 1);
    let settled = false;
    const cancelled = registry.cancel(u).finally(() => (settled = true));
    try {
      await new Promise((r) => setTimeout(r, 200));
      expect(settled).toBe(false);
      expect((await fsp.stat(part)).isFile()).toBe(true);
    } finally {
      Atomics.sub(u.shared!.header, H_TASKS_IN_FLIGHT, 1);
    }
    await cancelled;
    expect(u.status).toBe('cancelled');
    await expect(fsp.stat(part)).rejects.toMatchObject({ code: 'ENOENT' });
    await registry.close();
  });

  it('an aborted body keeps its claim until its queued write tasks return: the next writer never overlaps them', async () => {
    const { options, registry, ctx, data, u } = await setUp();
    // The pool as the receivers see it: writer A's tasks wait behind a gate (a worker still writing them), and every
    // task's owner is recorded when it is handed over.
    const a = nextWriterId();
    const started: number[] = [];
    let reached!: () => void;
    const aReached = new Promise<void>((resolve) => (reached = resolve));
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const write = async (task: WriteTask) => {
      started.push(task.ownerId);
      if (task.ownerId === a) {
        reached();
        await gate;
      }
      return pool.write(task);
    };
    const gated: IngestContext = { ...ctx, pool: { write } as Pick<WritePool, 'write'> as WritePool };

    // A sends one full slab of chunk 0 (bytes that differ from the file's, as from a client that changed it), which
    // goes to the pool; then its request goes away.
    expect(await claimChunk(gated, u, 0, a)).toBeNull();
    const body = new ChunkReceiver(gated, u, 0, a, () => {}, () => {});
    body.push(randomBytes(SLAB));
    await aReached;
    body.abort();

    // B resends chunk 0 whole. It must not start while A's task may still write.
    const b = writeWholeChunk(gated, u, 0, chunkOf(data, 0));
    await new Promise((r) => setTimeout(r, 200));
    expect(started.filter((id) => id !== a)).toEqual([]);
    open();
    expect((await b).duplicate).toBe(false);
    expect(started[0]).toBe(a);
    expect(started.slice(1).every((id) => id !== a)).toBe(true);

    for (const c of [1, 2]) await writeWholeChunk(ctx, u, c, chunkOf(data, c));
    expect(u.status).toBe('completed');
    expect(Buffer.compare(await fsp.readFile(path.join(options.dir, 'f.bin')), data)).toBe(0);
    await registry.close();
  });

  it('a chunk restarts the idle clock: the reaper measures the TTL from the last chunk, not from the init', async () => {
    const { options, registry, ctx, data, u } = await setUp({ uploadTtl: 1000, reapInterval: 3_600_000 });
    const t0 = Date.now(); // after the init, which started the clock
    await new Promise((r) => setTimeout(r, 50));
    await writeWholeChunk(ctx, u, 0, chunkOf(data, 0)); // at t0 + 50 ms or later
    // TTL + 20 ms after the init, but at most TTL - 30 ms after the chunk.
    await registry.reap(t0 + options.uploadTtl + 20);
    expect(u.status).toBe('active');
    expect(u.statusData().missingChunks).toEqual([1, 2]);
    await registry.close();
  });

  it('restarts the idle clock of a reloaded upload: a crash does not expire an upload that was busy until then', async () => {
    const { options, registry, ctx, data, u } = await setUp({ uploadTtl: 60_000, reapInterval: 3_600_000 });
    await writeWholeChunk(ctx, u, 0, chunkOf(data, 0));
    // lastActivityTime is recorded at init and at a graceful stop only: after a crash it can be a day old.
    await registry.store.writeMeta({ ...u.toMeta(), lastActivityTime: Date.now() - 86_400_000 });
    const again = new UploadRegistry(options, log); // the first one is abandoned, as a SIGKILL leaves it
    await again.start();
    await again.reap();
    const v = [...again.uploads()][0]!;
    expect(v.status).toBe('active');
    expect(v.statusData().missingChunks).toEqual([1, 2]);
    await again.close();
  });

  it('a sync that fails in the stop\'s own checkpoint (upload durability) records the upload failed, not active', async () => {
    const { options, registry, ctx, data, u } = await setUp({ durability: 'upload', checkpointInterval: 3_600_000 });
    await writeWholeChunk(ctx, u, 0, chunkOf(data, 0)); // acknowledged, waiting for a checkpoint
    u.journal!.append = () => Promise.reject(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }));
    await registry.close();
    expect(u.status).toBe('failed');
    const again = new UploadRegistry(options, log);
    await again.start();
    expect([...again.uploads()][0]!.status).toBe('failed');
    await again.close();
  });

  it('a completion that fails after the file was placed removes it again: a failed upload leaves no file', async () => {
    const { options, registry, ctx, data, u } = await setUp();
    const syncDir = registry.store.syncDir.bind(registry.store);
    registry.store.syncDir = (dir?: string) => (dir === options.dir ? Promise.reject(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' })) : syncDir(dir));
    for (const c of [0, 1]) await writeWholeChunk(ctx, u, c, chunkOf(data, c));
    await expect(writeWholeChunk(ctx, u, 2, chunkOf(data, 2))).rejects.toMatchObject({ code: 'ERR_STORAGE_FAILED' });
    expect(u.status).toBe('failed');
    await expect(fsp.stat(path.join(options.dir, 'f.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
    await registry.close();
  });

  it('after a crash, a file the hook had moved away completes, and one it had refused ends failed and removed', async () => {
    for (const hook of ['moves', 'refuses'] as const) {
      let stopped!: () => void;
      const crashed = new Promise<void>((resolve) => (stopped = resolve));
      const { options, registry, ctx, data, u } = await setUp({
        onUploadComplete: async (info) => {
          if (hook === 'moves') {
            await fsp.mkdir(path.join(options.dir, 'delivered'), { recursive: true });
            await fsp.rename(info.path, path.join(options.dir, 'delivered', info.fileName));
            stopped();
            return new Promise<void>(() => {}); // the process dies here
          }
          throw new UploadError('ERR_UPLOAD_REFUSED', 'No');
        },
      });
      if (hook === 'refuses') {
        // The process dies once the refusal is recorded, before the file is removed.
        const writeMeta = registry.store.writeMeta.bind(registry.store);
        registry.store.writeMeta = async (meta) => {
          await writeMeta(meta);
          if (meta.hookRefused === true) {
            stopped();
            await new Promise<void>(() => {});
          }
        };
      }
      for (const c of [0, 1]) await writeWholeChunk(ctx, u, c, chunkOf(data, c));
      void writeWholeChunk(ctx, u, 2, chunkOf(data, 2)).catch(() => {});
      await crashed;

      const calls: string[] = [];
      const next = new UploadRegistry({ ...options, onUploadComplete: (info) => void calls.push(info.fileName) }, log);
      await next.start();
      const v = [...next.uploads()][0]!;
      expect(calls).toEqual([]); // no file for the hook either way
      if (hook === 'moves') {
        expect(v.status).toBe('completed');
        expect(Buffer.compare(await fsp.readFile(path.join(options.dir, 'delivered', 'f.bin')), data)).toBe(0);
      } else {
        expect(v.status).toBe('failed');
        expect(v.failure).toMatchObject({ code: 'ERR_HOOK_FAILED' });
        await expect(fsp.stat(path.join(options.dir, 'f.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
      }
      await next.close();
    }
  });
});
