/**
 * What a completion and a reload may touch, on the registry with real worker threads: a file under an upload's final
 * name is removed only if it is that upload's own (another upload may have completed under the name once it left),
 * a damaged or foreign record neither stops the start nor names a file outside the root, a record that cannot be
 * read leaves its upload on disk, a stop waits for inits under way, and new target folders are synced into their
 * parents. Each was found by review and reproduced by a script before it was fixed.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { writeWholeChunk } from '../../src/main/chunk-ingest.js';
import type { IngestContext } from '../../src/main/chunk-ingest.js';
import { resolveOptions } from '../../src/main/options.js';
import type { ResolvedOptions, UploadEngineOptions } from '../../src/main/options.js';
import { SlabPool } from '../../src/main/slab-pool.js';
import type { UploadMeta } from '../../src/main/state-store.js';
import { UploadRegistry } from '../../src/main/upload-registry.js';
import { H_TASKS_IN_FLIGHT } from '../../src/workers/shared-layout.js';
import { registryHarness } from '../fixtures/registry-harness.js';

const CS = 64 * 1024;
const { log, pool, rootDir } = registryHarness('reload');

async function open(
  dir: string,
  extra: UploadEngineOptions = {},
  beforeStart?: (registry: UploadRegistry) => void,
): Promise<{ options: ResolvedOptions; registry: UploadRegistry; ctx: IngestContext }> {
  const options = resolveOptions({ dir, chunkSize: CS, batchSize: CS, logLevel: 'silent', ...extra });
  const registry = new UploadRegistry(options, log);
  beforeStart?.(registry);
  await registry.start();
  const slabs = new SlabPool({ slabSize: CS, maxBytes: options.maxInFlightBytes, maxFilling: options.maxReadingBodies });
  return { options, registry, ctx: { options, pool, slabs, registry } };
}

/** Uploads `data` as `fileName` in CS-sized chunks; resolves with the completion (or rejects with its error). */
async function uploadAll(ctx: IngestContext, fileName: string, data: Buffer, targetPath: string[] = []): Promise<unknown> {
  const totalChunks = Math.ceil(data.length / CS);
  const u = await ctx.registry.create('anonymous', { fileName, fileSize: data.length, chunkSize: CS, totalChunks, targetPath });
  for (let c = 0; c < totalChunks; c++) await writeWholeChunk(ctx, u, c, data.subarray(c * CS, (c + 1) * CS));
  return ctx.registry.finalize(u);
}

/** A record as the engine writes it, for an upload of `fileName` that was finalizing when the process died. */
function finalizingMeta(fileName: string, extra: Partial<UploadMeta>): UploadMeta {
  const now = Date.now();
  return {
    v: 1,
    guid: randomUUID(),
    user: 'anonymous',
    fileName,
    fileSize: 3,
    chunkSize: CS,
    totalChunks: 1,
    targetPath: [],
    startTime: now,
    lastActivityTime: now,
    status: 'finalizing',
    finalName: fileName,
    fileId: '1:1', // not the identity of any file the test makes
    ...extra,
  };
}

const eio = (): NodeJS.ErrnoException => Object.assign(new Error('EIO: i/o error'), { code: 'EIO' });

describe('a completion and a reload touch only what is theirs', () => {
  it('a refused file is removed once: another upload completing under the same name meanwhile keeps its file', async () => {
    const dir = await rootDir();
    const x = randomBytes(3);
    const y = randomBytes(5);
    let refusedX!: () => void;
    const xRemoved = new Promise<void>((resolve) => (refusedX = resolve));
    const { registry, ctx } = await open(dir, {
      onUploadComplete: (info) => {
        if (info.size === x.length) throw new Error('refused');
      },
    });
    // The removal of X's refused file is synced slowly (a slow disk): Y completes under the freed name meanwhile.
    const syncDir = registry.store.syncDir.bind(registry.store);
    let slow = true;
    registry.store.syncDir = async (d?: string) => {
      if (d === dir && slow && !fs.existsSync(path.join(dir, 'same.bin'))) {
        slow = false;
        refusedX();
        await new Promise((r) => setTimeout(r, 500));
      }
      return syncDir(d);
    };
    const xDone = uploadAll(ctx, 'same.bin', x);
    await xRemoved;
    expect(await uploadAll(ctx, 'same.bin', y)).toMatchObject({ fileName: 'same.bin', size: y.length });
    await expect(xDone).rejects.toMatchObject({ code: 'ERR_HOOK_FAILED' });
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'same.bin')), y)).toBe(0);
    await registry.close();
  });

  it('a staging name that cannot be unlinked after the link fails the upload and leaves no file under its final name', async () => {
    const dir = await rootDir();
    const { registry, ctx } = await open(dir);
    const rm = fsp.rm;
    const unlink = fsp.unlink;
    const refuse = (p: unknown): boolean => String(p).endsWith('.part') && fs.existsSync(path.join(dir, 'f.bin'));
    fsp.rm = ((p: fs.PathLike, o?: fs.RmOptions) => (refuse(p) ? Promise.reject(eio()) : rm(p, o))) as typeof fsp.rm;
    fsp.unlink = ((p: fs.PathLike) => (refuse(p) ? Promise.reject(eio()) : unlink(p))) as typeof fsp.unlink;
    try {
      await expect(uploadAll(ctx, 'f.bin', randomBytes(2 * CS))).rejects.toMatchObject({ code: 'ERR_STORAGE_FAILED' });
    } finally {
      fsp.rm = rm;
      fsp.unlink = unlink;
    }
    await expect(fsp.stat(path.join(dir, 'f.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect([...registry.uploads()][0]!.status).toBe('failed');
    await registry.close();
  });

  it('after a crash, a refused or moved file\'s name that holds another upload\'s file now is left alone', async () => {
    for (const crashed of ['refusal recorded', 'hook had moved it'] as const) {
      const dir = await rootDir();
      const first = await open(dir);
      const y = randomBytes(5);
      await uploadAll(first.ctx, 'same.bin', y);
      const meta = finalizingMeta('same.bin', { hookStarted: true, ...(crashed === 'refusal recorded' ? { hookRefused: true } : {}) });
      await first.registry.store.writeMeta(meta);
      await first.registry.close();

      const calls: string[] = [];
      const next = await open(dir, { onUploadComplete: (info) => void calls.push(info.fileName) });
      const x = next.registry.find(meta.guid, 'anonymous');
      expect(calls, crashed).toEqual([]); // the hook never sees another upload's file as this one's
      expect(x.status, crashed).toBe(crashed === 'refusal recorded' ? 'failed' : 'completed');
      expect(Buffer.compare(await fsp.readFile(path.join(dir, 'same.bin')), y), crashed).toBe(0);
      await next.registry.close();
    }
  });

  it('damaged or foreign records are dropped without stopping the start or touching anything outside the root', async () => {
    const dir = await rootDir();
    const outside = path.join(path.dirname(dir), `${path.basename(dir)}-outside.txt`);
    await fsp.writeFile(outside, 'keep me');
    try {
      const first = await open(dir);
      const data = randomBytes(3 * CS);
      const good = await first.registry.create('anonymous', { fileName: 'good.bin', fileSize: data.length, chunkSize: CS, totalChunks: 3, targetPath: [] });
      await writeWholeChunk(first.ctx, good, 1, data.subarray(CS, 2 * CS));
      const bad: Array<Partial<UploadMeta>> = [
        { status: 'active', fileSize: -1, chunkSize: 1, totalChunks: -1 },
        { status: 'active', fileSize: 2 ** 52, chunkSize: 1, totalChunks: 2 ** 52 },
        { hookStarted: true, hookRefused: true, finalName: `../${path.basename(outside)}` },
        { targetPath: ['..'] },
        { fileName: 'a/b' },
        { status: 'active', fileSize: 3, chunkSize: CS, totalChunks: 2 }, // totalChunks is not ceil(fileSize / chunkSize)
        { status: 'bogus' as UploadMeta['status'] },
      ];
      const guids: string[] = [];
      for (const b of bad) {
        const meta = finalizingMeta('x.bin', b);
        guids.push(meta.guid);
        await first.registry.store.writeMeta(meta);
        await fsp.writeFile(first.registry.store.partPath(meta.guid), 'xyz');
      }
      await first.registry.close();

      const next = await open(dir);
      expect(next.registry.find(good.guid, 'anonymous').statusData()).toMatchObject({ uploadStatus: 'active', receivedChunks: 1, missingChunks: [0, 2] });
      expect(await fsp.readFile(outside, 'utf8')).toBe('keep me');
      const left = await fsp.readdir(next.options.stagingDir);
      for (const g of guids) expect(left.filter((n) => n.startsWith(g))).toEqual([]);
      await next.registry.close();
    } finally {
      await fsp.rm(outside, { force: true });
    }
  });

  it('a record that cannot be read (EIO) leaves its upload on disk, and a later start resumes it', async () => {
    const dir = await rootDir();
    const first = await open(dir);
    const data = randomBytes(2 * CS);
    const u = await first.registry.create('anonymous', { fileName: 'f.bin', fileSize: data.length, chunkSize: CS, totalChunks: 2, targetPath: [] });
    await writeWholeChunk(first.ctx, u, 0, data.subarray(0, CS));
    await first.registry.close();

    const readFile = fsp.readFile;
    fsp.readFile = ((p: fs.PathLike, o?: unknown) => (String(p).endsWith('.meta') ? Promise.reject(eio()) : readFile(p, o as never))) as typeof fsp.readFile;
    let blind: Awaited<ReturnType<typeof open>>;
    try {
      blind = await open(dir);
    } finally {
      fsp.readFile = readFile;
    }
    expect(() => blind.registry.find(u.guid, 'anonymous')).toThrow(expect.objectContaining({ code: 'ERR_UPLOAD_NOT_FOUND' }));
    await blind.registry.close();

    const next = await open(dir);
    const v = next.registry.find(u.guid, 'anonymous');
    expect(v.statusData()).toMatchObject({ uploadStatus: 'active', missingChunks: [1] });
    await writeWholeChunk(next.ctx, v, 1, data.subarray(CS));
    await next.registry.finalize(v);
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'f.bin')), data)).toBe(0);
    await next.registry.close();
  });

  it('reloads a record whose names older rules allowed (a right-to-left mark), instead of deleting the upload', async () => {
    const dir = await rootDir();
    const first = await open(dir);
    const data = randomBytes(2 * CS);
    const u = await first.registry.create('anonymous', { fileName: 'a.bin', fileSize: data.length, chunkSize: CS, totalChunks: 2, targetPath: [] });
    await writeWholeChunk(first.ctx, u, 0, data.subarray(0, CS));
    await first.registry.close();
    // As an earlier version recorded it: its init rules allowed U+200F, today's refuse it at init.
    await first.registry.store.writeMeta({ ...u.toMeta(), fileName: 'report\u200F.bin', targetPath: ['\u200Fdocs'] });

    const next = await open(dir);
    const v = next.registry.find(u.guid, 'anonymous');
    expect(v.statusData()).toMatchObject({ uploadStatus: 'active', missingChunks: [1] });
    await writeWholeChunk(next.ctx, v, 1, data.subarray(CS));
    await next.registry.finalize(v);
    expect(Buffer.compare(await fsp.readFile(path.join(dir, '\u200Fdocs', 'report\u200F.bin')), data)).toBe(0);
    await next.registry.close();
  });

  it('a placed file is recognized after a crash by inode and birth time, not the device number (it may change at a reboot)', async () => {
    const dir = await rootDir();
    const first = await open(dir);
    const data = randomBytes(CS + 3);
    const u = await first.registry.create('anonymous', { fileName: 'f.bin', fileSize: data.length, chunkSize: CS, totalChunks: 2, targetPath: [] });
    for (const c of [0, 1]) await writeWholeChunk(first.ctx, u, c, data.subarray(c * CS, (c + 1) * CS));
    await first.registry.finalize(u);
    const st = await fsp.stat(path.join(dir, 'f.bin'), { bigint: true });
    // The process died after the move, before `completed` was recorded; the id is the file's, the device aside.
    await first.registry.store.writeMeta({ ...u.toMeta(), status: 'finalizing', finalName: 'f.bin', fileId: `${st.ino}:${st.birthtimeNs}` });
    await first.registry.close();

    const next = await open(dir);
    expect(next.registry.find(u.guid, 'anonymous').status).toBe('completed');
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'f.bin')), data)).toBe(0);
    await next.registry.close();
  });

  it('a record from before fileId: the hook run again at restart can still refuse, and its file is removed', async () => {
    const dir = await rootDir();
    const first = await open(dir);
    const data = randomBytes(CS + 3);
    const u = await first.registry.create('anonymous', { fileName: 'old.bin', fileSize: data.length, chunkSize: CS, totalChunks: 2, targetPath: [] });
    for (const c of [0, 1]) await writeWholeChunk(first.ctx, u, c, data.subarray(c * CS, (c + 1) * CS));
    await first.registry.finalize(u);
    await first.registry.close();
    // Died after the move, before `completed`, under a version that recorded no fileId.
    const { fileId: _none, ...old } = { ...u.toMeta(), status: 'finalizing' as const, finalName: 'old.bin', hookStarted: true };
    void _none;
    await first.registry.store.writeMeta(old);

    const next = await open(dir, { onUploadComplete: () => { throw new Error('refused now'); } });
    expect(next.registry.find(u.guid, 'anonymous', true).status).toBe('failed');
    await expect(fsp.stat(path.join(dir, 'old.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
    await next.registry.close();
  });

  it('a staging file cut short while the server was down fails its upload instead of completing it with zeros', async () => {
    const dir = await rootDir();
    const first = await open(dir);
    const data = randomBytes(3 * CS);
    const u = await first.registry.create('anonymous', { fileName: 'cut.bin', fileSize: data.length, chunkSize: CS, totalChunks: 3, targetPath: [] });
    for (const c of [0, 1]) await writeWholeChunk(first.ctx, u, c, data.subarray(c * CS, (c + 1) * CS));
    await first.registry.close();
    await fsp.truncate(first.registry.store.partPath(u.guid), CS);

    // The restart's log says so like any failure: `upload.failed` at warn, with the code (docs/OPERATIONS.md).
    const lines: string[] = [];
    const next = { registry: new UploadRegistry(first.options, pino({ level: 'info' }, { write: (l: string) => void lines.push(l) })) };
    await next.registry.start();
    const v = next.registry.find(u.guid, 'anonymous', true);
    expect(v.status).toBe('failed');
    expect(v.failure).toMatchObject({ code: 'ERR_STORAGE_FAILED', message: 'Staging file damaged' });
    const failed = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.event === 'upload.failed');
    expect(failed).toEqual([expect.objectContaining({ level: 40, guid: u.guid, code: 'ERR_STORAGE_FAILED', reason: 'Staging file damaged' })]);
    await expect(fsp.stat(next.registry.store.partPath(u.guid))).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(fsp.stat(path.join(dir, 'cut.bin'))).rejects.toMatchObject({ code: 'ENOENT' });
    await next.registry.close();
  });

  it('a write task still running after the wait keeps the staging fd open until it returns (no fd number reused under it)', async () => {
    const dir = await rootDir();
    const { registry } = await open(dir);
    const u = await registry.create('anonymous', { fileName: 'stall.bin', fileSize: 2 * CS, chunkSize: CS, totalChunks: 2, targetPath: [] });
    const part = registry.store.partPath(u.guid);
    const openOnPart = (): number =>
      fs.readdirSync('/proc/self/fd').filter((n) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${n}`).startsWith(part);
        } catch {
          return false;
        }
      }).length;
    expect(openOnPart()).toBeGreaterThan(0);
    // A task stuck in the disk past the end's wait (shortened here from 30 s).
    const waitMs = UploadRegistry.workersLeftMs;
    UploadRegistry.workersLeftMs = 50;
    Atomics.add(u.shared!.header, H_TASKS_IN_FLIGHT, 1);
    try {
      await registry.cancel(u);
      expect(u.status).toBe('cancelled');
      expect(openOnPart()).toBeGreaterThan(0); // still open (the file itself is already unlinked)
      Atomics.sub(u.shared!.header, H_TASKS_IN_FLIGHT, 1);
      for (let i = 0; i < 50 && openOnPart() > 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(openOnPart()).toBe(0);
    } finally {
      UploadRegistry.workersLeftMs = waitMs;
    }
    await registry.close();
  });

  it('a stop waits for an init under way: it is refused, and leaves no open file and no staging files', async () => {
    const dir = await rootDir();
    const { registry } = await open(dir);
    const writeMeta = registry.store.writeMeta.bind(registry.store);
    let metaStarted!: () => void;
    const started = new Promise<void>((resolve) => (metaStarted = resolve));
    registry.store.writeMeta = async (meta) => {
      metaStarted();
      await new Promise((r) => setTimeout(r, 200));
      return writeMeta(meta);
    };
    const creating = registry.create('anonymous', { fileName: 'late.bin', fileSize: 10, chunkSize: CS, totalChunks: 1, targetPath: [] });
    let settled = false;
    creating.then(
      () => (settled = true),
      () => (settled = true),
    );
    await started;
    await registry.close();
    // close() itself waited for the init: it is settled and cleaned up by the time close() resolves.
    expect(settled).toBe(true);
    const staging = registry.options.stagingDir;
    expect(await fsp.readdir(staging)).toEqual([]);
    await expect(creating).rejects.toMatchObject({ code: 'ERR_SHUTTING_DOWN' });
    const open_ = (await fsp.readdir('/proc/self/fd')).map((fd) => {
      try {
        return fs.readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        return '';
      }
    });
    expect(open_.filter((p) => p.startsWith(staging))).toEqual([]);
  });

  it("refuses to start with its root inside another engine's staging folder (that engine would remove or reload its files)", async () => {
    const dir = path.join(await rootDir(), '.updraft-staging', 'x');
    await expect(open(dir)).rejects.toThrow(`the upload root ${dir} is inside a staging folder (.updraft-staging) of another engine`);
  });

  it('folders made for a target path are synced into their parents', async () => {
    const dir = await rootDir();
    const { registry, ctx } = await open(dir);
    const synced: string[] = [];
    const syncDir = registry.store.syncDir.bind(registry.store);
    registry.store.syncDir = (d?: string) => {
      synced.push(d ?? registry.store.dir);
      return syncDir(d);
    };
    const data = randomBytes(10);
    await uploadAll(ctx, 'f.bin', data, ['newA', 'newB']);
    expect(synced).toEqual(expect.arrayContaining([dir, path.join(dir, 'newA'), path.join(dir, 'newA', 'newB')]));
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'newA', 'newB', 'f.bin')), data)).toBe(0);
    await registry.close();
  });
});

describe("onConflict 'overwrite' never loses the file it replaces", () => {
  const staged = async (dir: string): Promise<string[]> => (await fsp.readdir(path.join(dir, '.updraft-staging'))).filter((f) => !f.endsWith('.meta'));

  it('a completion the hook refuses, or whose folder sync fails, puts the replaced file back; one that succeeds keeps no copy', async () => {
    const dir = await rootDir();
    let refuse = false;
    const { registry, ctx } = await open(dir, { onConflict: 'overwrite', onUploadComplete: () => { if (refuse) throw new Error('refused'); } });
    const v1 = randomBytes(2 * CS + 5);
    await uploadAll(ctx, 'report.bin', v1);
    refuse = true;
    await expect(uploadAll(ctx, 'report.bin', randomBytes(2 * CS + 5))).rejects.toMatchObject({ code: 'ERR_HOOK_FAILED' });
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'report.bin')), v1)).toBe(0);
    expect(await staged(dir)).toEqual([]);

    // The target folder cannot be synced once the new file is in place: the completion fails, the old file returns.
    refuse = false;
    const syncDir = registry.store.syncDir.bind(registry.store);
    registry.store.syncDir = (d?: string) => (d === dir && fs.existsSync(registry.store.prevPath([...registry.uploads()].at(-1)!.guid)) ? Promise.reject(eio()) : syncDir(d));
    try {
      await expect(uploadAll(ctx, 'report.bin', randomBytes(CS))).rejects.toMatchObject({ code: 'ERR_STORAGE_FAILED' });
    } finally {
      registry.store.syncDir = syncDir;
    }
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'report.bin')), v1)).toBe(0);
    expect(await staged(dir)).toEqual([]);

    const v4 = randomBytes(CS + 1);
    await uploadAll(ctx, 'report.bin', v4);
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'report.bin')), v4)).toBe(0);
    expect(await staged(dir)).toEqual([]);
    await registry.close();
  });

  /** v1 completed as report.bin; v2's process died right after its rename over v1, before `completed` was recorded. */
  async function crashedOverwrite(dir: string): Promise<{ v1: Buffer; v2: Buffer; guid: string }> {
    const first = await open(dir, { onConflict: 'overwrite' });
    const v1 = randomBytes(CS + 7);
    await uploadAll(first.ctx, 'report.bin', v1);
    const v2 = randomBytes(CS + 7);
    const u = await first.registry.create('anonymous', { fileName: 'report.bin', fileSize: v2.length, chunkSize: CS, totalChunks: 2, targetPath: [] });
    await writeWholeChunk(first.ctx, u, 0, v2.subarray(0, CS)); // the last chunk would complete it: written below
    await first.registry.close();
    // What #place had done: the record, the second link to v1, the rename of the staging file over it.
    const store = first.registry.store;
    const fh = await fsp.open(store.partPath(u.guid), 'r+');
    await fh.write(v2, CS, v2.length - CS, CS);
    await fh.close();
    const st = await fsp.stat(store.partPath(u.guid), { bigint: true });
    await store.writeMeta({ ...u.toMeta(), status: 'finalizing', finalName: 'report.bin', fileId: `${st.ino}:${st.birthtimeNs}`, hookStarted: true });
    await fsp.link(path.join(dir, 'report.bin'), path.join(store.dir, `${u.guid}.prev`)); // store.prevPath
    await fsp.rename(store.partPath(u.guid), path.join(dir, 'report.bin'));
    return { v1, v2, guid: u.guid };
  }

  it('after a crash mid-completion, a hook that refuses at restart gets the replaced file back; an accepted one removes the copy', async () => {
    const dir = await rootDir();
    const { v1, guid } = await crashedOverwrite(dir);
    const events: string[] = [];
    const listen = (r: UploadRegistry): void => {
      r.on('completed', (i) => events.push(`completed ${i.guid} ${i.finalName}`));
      r.on('failed', (i) => events.push(`failed ${i.guid} ${i.code}`));
    };
    const next = await open(dir, { onConflict: 'overwrite', onUploadComplete: () => { throw new Error('refused now'); } }, listen);
    expect(next.registry.find(guid, 'anonymous', true).status).toBe('failed');
    expect(events).toEqual([`failed ${guid} ERR_HOOK_FAILED`]); // the listeners hear the end a restart decided
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'report.bin')), v1)).toBe(0);
    expect(await staged(dir)).toEqual([]);
    await next.registry.close();

    const dir2 = await rootDir();
    const second = await crashedOverwrite(dir2);
    // The restart completes it, and syncs the folder the file is in before recording that (durability.md 6).
    const synced: string[] = [];
    const { StateStore } = await import('../../src/main/state-store.js');
    const syncDir = StateStore.prototype.syncDir;
    StateStore.prototype.syncDir = function (this: InstanceType<typeof StateStore>, d?: string) {
      synced.push(d ?? this.dir);
      return syncDir.call(this, d);
    };
    let again: Awaited<ReturnType<typeof open>>;
    events.length = 0;
    try {
      again = await open(dir2, { onConflict: 'overwrite' }, listen);
    } finally {
      StateStore.prototype.syncDir = syncDir;
    }
    expect(again.registry.find(second.guid, 'anonymous', true).status).toBe('completed');
    expect(events).toEqual([`completed ${second.guid} report.bin`]);
    expect(synced).toContain(dir2);
    expect(Buffer.compare(await fsp.readFile(path.join(dir2, 'report.bin')), second.v2)).toBe(0);
    expect(await staged(dir2)).toEqual([]);
    await again.registry.close();
  });

  it('a reload that cannot look at the target folder (EIO, wrapped as a storage failure) leaves the upload for the next start', async () => {
    const dir = await rootDir();
    const first = await open(dir);
    const data = randomBytes(CS + 3);
    const u = await first.registry.create('anonymous', { fileName: 'f.bin', fileSize: data.length, chunkSize: CS, totalChunks: 2, targetPath: ['docs'] });
    for (const c of [0, 1]) await writeWholeChunk(first.ctx, u, c, data.subarray(c * CS, (c + 1) * CS));
    await first.registry.finalize(u);
    const st = await fsp.stat(path.join(dir, 'docs', 'f.bin'), { bigint: true });
    // Died after the move, before `completed` was recorded.
    await first.registry.store.writeMeta({ ...u.toMeta(), status: 'finalizing', finalName: 'f.bin', fileId: `${st.ino}:${st.birthtimeNs}` });
    await first.registry.close();

    const lstat = fsp.lstat;
    fsp.lstat = ((p: fs.PathLike, o?: unknown) => (String(p).endsWith(`${path.sep}docs`) ? Promise.reject(eio()) : lstat(p, o as never))) as typeof fsp.lstat;
    let blind: Awaited<ReturnType<typeof open>>;
    try {
      blind = await open(dir);
    } finally {
      fsp.lstat = lstat;
    }
    expect(() => blind.registry.find(u.guid, 'anonymous', true)).toThrow(expect.objectContaining({ code: 'ERR_UPLOAD_NOT_FOUND' }));
    await blind.registry.close();
    const next = await open(dir);
    expect(next.registry.find(u.guid, 'anonymous', true).status).toBe('completed');
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'docs', 'f.bin')), data)).toBe(0);
    await next.registry.close();
  });

  it('a reload that cannot look at the final file (EIO) leaves the upload for the next start instead of recording it lost', async () => {
    const dir = await rootDir();
    const { v2, guid } = await crashedOverwrite(dir);
    const stat = fsp.stat;
    fsp.stat = ((p: fs.PathLike, o?: unknown) => (String(p).endsWith('report.bin') ? Promise.reject(eio()) : stat(p, o as never))) as typeof fsp.stat;
    let blind: Awaited<ReturnType<typeof open>>;
    try {
      blind = await open(dir, { onConflict: 'overwrite' });
    } finally {
      fsp.stat = stat;
    }
    expect(() => blind.registry.find(guid, 'anonymous', true)).toThrow(expect.objectContaining({ code: 'ERR_UPLOAD_NOT_FOUND' }));
    await blind.registry.close();
    const next = await open(dir, { onConflict: 'overwrite' });
    expect(next.registry.find(guid, 'anonymous', true).status).toBe('completed');
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'report.bin')), v2)).toBe(0);
    await next.registry.close();
  });
});
