/**
 * Upload.commit (chunk durability): a chunk whose commit runs after completion has synced and closed the staging
 * file is on disk but not in the journal. commit says so (false), so the chunk's writer waits for the completion
 * before acknowledging (chunk-ingest.ts settle): a crash before the completion is durable would otherwise ask for an
 * acknowledged chunk again. Found by the stress harness's journal oracle.
 */
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { crc32 } from 'node:zlib';
import { Journal, parseJournal } from '../../src/main/state-store.js';
import type { UploadMeta } from '../../src/main/state-store.js';
import { Upload } from '../../src/main/upload.js';

function meta(status: UploadMeta['status']): UploadMeta {
  const now = Date.now();
  return { v: 1, guid: '00000000-0000-4000-8000-000000000000', user: 'u', fileName: 'f.bin', fileSize: 30, chunkSize: 10, totalChunks: 3, targetPath: [], startTime: now, lastActivityTime: now, status };
}

describe('Upload.commit', () => {
  it('journals the chunks (true) while the upload is active, and says false once completion has begun', async () => {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'updraft-commit-'));
    try {
      const u = new Upload(meta('active'), null);
      const fh = await fsp.open(path.join(dir, 'f.part'), 'w+');
      u.fd = fh.fd;
      u.journal = await Journal.open(path.join(dir, 'f.journal'));
      expect(await u.commit([2])).toBe(true);
      const journal = await fsp.readFile(path.join(dir, 'f.journal'));
      expect(parseJournal(journal, crc32('f')).chunks).toEqual([2]);

      // Completion has begun (its fdatasync covers every written chunk) but not yet closed the files: a round now
      // must leave the journal alone, since completion closes it once the rounds it waited for have ended, and
      // it could do so under a round that started after it.
      u.status = 'finalizing';
      expect(await u.commit([1])).toBe(false);
      const unchanged = await fsp.readFile(path.join(dir, 'f.journal'));
      expect(unchanged).toEqual(journal);

      // Completion synced and closed the files; a chunk committed now is covered by that sync, not by the journal.
      await u.journal.close();
      await fh.close();
      u.fd = null;
      u.journal = null;
      expect(await u.commit([1])).toBe(false);
      u.status = 'completed';
      expect(await u.commit([0])).toBe(true); // the completion is durable: nothing left to fear
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses a commit with the files closed while the upload is neither completing nor complete, and stays usable', async () => {
    const u = new Upload(meta('active'), null);
    await expect(u.commit([0])).rejects.toMatchObject({ code: 'ERR_UPLOAD_FAILED' });
    // A run that ended without awaiting anything must not leave a settled run behind: the next commit starts a new
    // run (it used to hang), and commitsIdle returns (it used to spin on the settled promise forever).
    await expect(u.commit([1])).rejects.toMatchObject({ code: 'ERR_UPLOAD_FAILED' });
    await u.commitsIdle();
  });
});
