/**
 * The journal of durable chunks (state-store.ts): what a crash can leave at its end must never claim a chunk. After
 * a power loss some filesystems show a zero-filled or stale tail, which bare chunk numbers read as real ones (a
 * zeroed record was "chunk 0 received", and the completed file kept zeros there; found by review). And the meta
 * record beside it, whose replacement is durable only once its folder is synced.
 */
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Journal, StateStore, journalRecord } from '../../src/main/state-store.js';
import type { UploadMeta } from '../../src/main/state-store.js';

const GUID = '00000000-0000-4000-8000-000000000001';
const OTHER = '00000000-0000-4000-8000-000000000002';
const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await fsp.rm(d, { recursive: true, force: true });
});

async function store(): Promise<StateStore> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'updraft-journal-'));
  dirs.push(dir);
  const s = new StateStore(dir);
  await s.init();
  return s;
}

describe('journal', () => {
  it('reads back what was appended, and ignores a zero-filled, a stale or a torn tail; appends overwrite it', async () => {
    const s = await store();
    const file = s.journalPath(GUID);
    const j = await Journal.open(file);
    await j.append([3, 0]);
    await j.append([5]);
    await j.close();
    expect(await s.readJournal(GUID, 10)).toEqual([3, 0, 5]);

    // A crash left the file longer than its last record: zeros, a record of another upload's journal, half a record.
    await fsp.appendFile(file, Buffer.alloc(16));
    expect(await s.readJournal(GUID, 10)).toEqual([3, 0, 5]);
    await fsp.truncate(file, 4 + 3 * 8);
    await fsp.appendFile(file, Buffer.concat([journalRecord(OTHER, 7), journalRecord(GUID, 8)]));
    expect(await s.readJournal(GUID, 10)).toEqual([3, 0, 5]); // the records end at the first bad one
    await fsp.truncate(file, 4 + 3 * 8);
    await fsp.appendFile(file, journalRecord(GUID, 6).subarray(0, 5));
    expect(await s.readJournal(GUID, 10)).toEqual([3, 0, 5]);

    // Reopened, the journal appends right after the last valid record, over the torn bytes.
    const again = await Journal.open(file);
    await again.append([9]);
    await again.close();
    expect(await s.readJournal(GUID, 10)).toEqual([3, 0, 5, 9]);
    expect((await fsp.stat(file)).size).toBe(4 + 4 * 8);
  });

  it('reads (and appends to) a journal of an earlier version: bare uint32 records without the header', async () => {
    const s = await store();
    const file = s.journalPath(GUID);
    await fsp.writeFile(file, Buffer.from([2, 0, 0, 0, 1, 0, 0, 0, 9]));
    expect(await s.readJournal(GUID, 5)).toEqual([2, 1]);
    const j = await Journal.open(file);
    await j.append([4]);
    await j.close();
    expect(await s.readJournal(GUID, 5)).toEqual([2, 1, 4]);
  });
});

describe('meta records', () => {
  it('syncs the staging folder once after the rename, so the record\'s new name survives a power loss', async () => {
    const s = await store();
    const meta: UploadMeta = {
      v: 1, guid: GUID, user: 'anonymous', fileName: 'f.bin', fileSize: 10, chunkSize: 10, totalChunks: 1, targetPath: [],
      startTime: Date.now(), lastActivityTime: Date.now(), status: 'active',
    };
    const final = s.metaPath(GUID);
    const seen = async (p: string): Promise<boolean> => fsp.stat(p).then(() => true, () => false);
    const calls: Array<{ dir: string; meta: boolean; tmp: boolean }> = [];
    const syncDir = s.syncDir.bind(s);
    s.syncDir = async (dir?: string) => {
      calls.push({ dir: dir ?? s.dir, meta: await seen(final), tmp: await seen(`${final}.tmp`) });
      return syncDir(dir);
    };
    await s.writeMeta(meta);
    // The rename is durable only once the folder holding both names is synced (durability.md invariant 5).
    expect(calls).toEqual([{ dir: s.dir, meta: true, tmp: false }]);
  });
});
