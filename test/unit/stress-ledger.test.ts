/**
 * The stress harness's ledger (bench/stress/ledger.ts): an upload the server ends on its own counts its acknowledged
 * chunks as lost, so `npm run stress` fails on a server that turns lost data into "failed".
 */
import { describe, expect, it } from 'vitest';
import { UploadRecord } from '../../bench/stress/ledger.js';

describe('stress ledger', () => {
  it('an upload the server fails, expires or forgets loses its acknowledged chunks, and says so', () => {
    for (const code of ['ERR_STORAGE_FAILED', 'ERR_UPLOAD_FAILED', 'ERR_UPLOAD_EXPIRED', 'ERR_UPLOAD_NOT_FOUND', 'ERR_UPLOAD_CANCELLED']) {
      const rec = new UploadRecord(3, 4 * 1024, 1024, 'put');
      rec.guid = 'g';
      rec.acked(0, 0, true);
      rec.acked(2, 0, true);
      rec.acked(2, 0, false); // a duplicate reply: still one chunk
      rec.endedByServer(code);
      expect(rec.outcome).toBe('failed');
      expect(rec.errorCode).toBe(code);
      expect(rec.lostChunks).toBe(2);
      expect(rec.violations).toHaveLength(1);
      expect(rec.violations[0]).toMatch(/its 2 acknowledged chunk\(s\) are lost$/);
    }
  });

  it('an upload found cancelled after the client sent a cancel whose answer was lost is cancelled, not lost', () => {
    const rec = new UploadRecord(1, 4096, 1024, 'put');
    rec.acked(0, 0, true);
    rec.cancelAsked = true;
    rec.endedByServer('ERR_UPLOAD_CANCELLED');
    expect([rec.outcome, rec.lostChunks, rec.violations]).toEqual(['cancelled', 0, []]);
    rec.endedByServer('ERR_STORAGE_FAILED'); // any other end is still the server's doing
    expect([rec.outcome, rec.lostChunks, rec.violations.length]).toEqual(['failed', 1, 1]);
  });

  it('an upload ended before any chunk was acknowledged is still a violation, with nothing lost', () => {
    const rec = new UploadRecord(0, 10, 1024, 'ws');
    rec.endedByServer('ERR_STORAGE_FAILED');
    expect(rec.lostChunks).toBe(0);
    expect(rec.violations).toEqual(['upload #0 (no guid): the server ended the upload with ERR_STORAGE_FAILED, which nothing in the run calls for']);
  });
});
