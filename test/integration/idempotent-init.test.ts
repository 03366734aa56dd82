/**
 * Inits repeated with their `Idempotency-Key` (a reply lost on its way back, the client tries again): the same key
 * from the same user with the same request gets the upload the first one made, also while that one is still being
 * created and after a restart; the same key with another request is refused; other users and ended uploads do not
 * share it. Every file is compared byte for byte.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PREFIX, bytesOf, call, initUpload, listFiles, putChunks, startServer, tempDir } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';

const CS = 64 * 1024;
let server: TestServer | null = null;
afterEach(async () => {
  await server?.close();
  server = null;
});

const key = (k: string): Record<string, string> => ({ 'idempotency-key': k });

async function stagingParts(dir: string): Promise<string[]> {
  return (await fsp.readdir(path.join(dir, '.updraft-staging'))).filter((f) => f.endsWith('.part'));
}

describe('init with Idempotency-Key', () => {
  it('the same init again gets the same upload (one staging file); the upload then completes byte for byte', async () => {
    server = await startServer();
    const data = bytesOf(3 * CS + 11);
    const fields = { fileName: 'again.bin', fileSize: data.length, chunkSize: CS, targetPath: 'in', fingerprint: 'f1' };
    const first = await initUpload(server.base, fields, key('k-1'));
    expect(first.status, JSON.stringify(first.json)).toBe(200);
    const second = await initUpload(server.base, fields, key('k-1'));
    expect(second.status).toBe(200);
    expect(second.json).toEqual(first.json);
    // The quoted form of the IETF draft names the same key.
    expect((await initUpload(server.base, fields, key('"k-1"'))).json.data!.guid).toBe(first.json.data!.guid);
    expect(server.engine.registry.size).toBe(1);
    expect(await stagingParts(server.dir)).toHaveLength(1);
    const guid = first.json.data!.guid as string;
    for (const r of await putChunks(server.base, guid, data, CS, [3, 1, 0, 2])) expect(r.status).toBe(200);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'in', 'again.bin')), data)).toBe(0);
    // Repeated after the completion (within the record's time), it says so, with the final name.
    const late = await initUpload(server.base, fields, key('k-1'));
    expect(late.json).toMatchObject({ message: 'Upload completed successfully', data: { guid, complete: true, finalName: 'again.bin', size: data.length } });
    expect(await listFiles(server.dir)).toEqual(['in/again.bin']);
  });

  it('the same key with a different request is refused 422 ERR_IDEMPOTENCY_KEY_REUSED and creates nothing', async () => {
    server = await startServer();
    const fields = { fileName: 'a.bin', fileSize: 100, chunkSize: CS };
    expect((await initUpload(server.base, fields, key('k-2'))).status).toBe(200);
    for (const other of [{ fileName: 'b.bin' }, { fileSize: 101 }, { chunkSize: CS * 2 }, { targetPath: 'sub' }, { fingerprint: 'x' }]) {
      const r = await initUpload(server.base, { ...fields, ...other }, key('k-2'));
      expect(r.status, JSON.stringify(other)).toBe(422);
      expect(r.json).toMatchObject({ status: 'fail', code: 'ERR_IDEMPOTENCY_KEY_REUSED' });
    }
    expect(server.engine.registry.size).toBe(1);
    expect(await listFiles(server.dir)).toEqual([]);
  });

  it('repeats arriving while the first is still being created wait for it: one upload, the hook called once', async () => {
    let hookCalls = 0;
    server = await startServer({
      onUploadCreate: async () => {
        hookCalls++;
        await new Promise((r) => setTimeout(r, 150));
      },
    });
    const fields = { fileName: 'burst.bin', fileSize: 5 * CS, chunkSize: CS };
    const replies = await Promise.all(Array.from({ length: 5 }, () => initUpload(server!.base, fields, key('k-3'))));
    for (const r of replies) expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(new Set(replies.map((r) => r.json.data!.guid)).size).toBe(1);
    expect(hookCalls).toBe(1);
    expect(server.engine.registry.size).toBe(1);
  });

  it('a repeat is not counted against the limits the first init passed (maxUploadsPerUser 1)', async () => {
    server = await startServer({ maxUploadsPerUser: 1 });
    const fields = { fileName: 'one.bin', fileSize: 2 * CS, chunkSize: CS };
    const first = await initUpload(server.base, fields, key('k-4'));
    const again = await initUpload(server.base, fields, key('k-4'));
    expect(again.status, JSON.stringify(again.json)).toBe(200);
    expect(again.json.data!.guid).toBe(first.json.data!.guid);
    // Without the key it is a second upload, which the limit refuses.
    expect((await initUpload(server.base, fields)).status).toBe(429);
  });

  it('keys are per user: another user sending the same key gets an upload of its own', async () => {
    server = await startServer({ tokens: { 'token-alice': 'alice', 'token-bob': 'bob' } });
    const fields = { fileName: 'same.bin', fileSize: 10, chunkSize: CS };
    const a = await initUpload(server.base, fields, { ...key('shared'), authorization: 'Bearer token-alice' });
    const b = await initUpload(server.base, fields, { ...key('shared'), authorization: 'Bearer token-bob' });
    expect(a.status).toBe(200);
    expect(b.status).toBe(200);
    expect(b.json.data!.guid).not.toBe(a.json.data!.guid);
  });

  it('a cancelled upload frees its key: the same init then makes a new upload, which keeps the key across a restart', async () => {
    server = await startServer();
    const { dir } = server;
    const fields = { fileName: 'c.bin', fileSize: 10, chunkSize: CS };
    // Five cancelled uploads made with the key, then the one that holds it: whatever order the restart reads their
    // records in, the key is the open upload's.
    const cancelled: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await initUpload(server.base, fields, key('k-5'));
      const guid = r.json.data!.guid as string;
      expect(cancelled).not.toContain(guid);
      cancelled.push(guid);
      expect((await call(server.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${guid}`)).status).toBe(200);
    }
    const next = await initUpload(server.base, fields, key('k-5'));
    expect(next.status).toBe(200);
    const guid = next.json.data!.guid as string;
    expect(cancelled).not.toContain(guid);
    expect((await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`)).json.data).toMatchObject({ uploadStatus: 'active' });
    await server.close();
    server = await startServer({ dir });
    expect((await initUpload(server.base, fields, key('k-5'))).json.data!.guid).toBe(guid);
  });

  it('a freed key takes a different request too: the ended upload no longer answers for it', async () => {
    server = await startServer();
    const first = await initUpload(server.base, { fileName: 'one.bin', fileSize: 10, chunkSize: CS }, key('k-8'));
    expect((await call(server.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${first.json.data!.guid as string}`)).status).toBe(200);
    const other = await initUpload(server.base, { fileName: 'two.bin', fileSize: 20, chunkSize: CS }, key('k-8'));
    expect(other.status, JSON.stringify(other.json)).toBe(200);
    expect(other.json.data).toMatchObject({ fileName: 'two.bin', fileSize: 20 });
  });

  it('an init that left chunkSize to the server is the same request after a restart with another default', async () => {
    const dir = await tempDir();
    server = await startServer({ dir, chunkSize: CS });
    const fields = { fileName: 'default-cs.bin', fileSize: 3 * CS };
    const first = await initUpload(server.base, fields, key('k-9'));
    expect(first.json.data).toMatchObject({ chunkSize: CS, totalChunks: 3 });
    await server.close();
    server = await startServer({ dir, chunkSize: 2 * CS });
    const again = await initUpload(server.base, fields, key('k-9'));
    expect(again.status, JSON.stringify(again.json)).toBe(200);
    // The upload the first init made, with the chunk size it was made with.
    expect(again.json.data).toMatchObject({ guid: first.json.data!.guid, chunkSize: CS, totalChunks: 3 });
    // Sending the chunk size explicitly is a different request from leaving it out.
    expect((await initUpload(server.base, { ...fields, chunkSize: CS }, key('k-9'))).json.code).toBe('ERR_IDEMPOTENCY_KEY_REUSED');
  });

  it('a 0-byte file (complete at init) repeated gets the same completion, not a second file "name (1)"', async () => {
    server = await startServer();
    const fields = { fileName: 'empty.txt', fileSize: 0 };
    const first = await initUpload(server.base, fields, key('k-6'));
    const again = await initUpload(server.base, fields, key('k-6'));
    expect(first.json.data).toMatchObject({ complete: true, finalName: 'empty.txt' });
    expect(again.json.data).toMatchObject({ guid: first.json.data!.guid, complete: true, finalName: 'empty.txt', size: 0 });
    expect(await listFiles(server.dir)).toEqual(['empty.txt']);
  });

  it('the key is kept with the upload across a restart', async () => {
    const dir = await tempDir();
    server = await startServer({ dir });
    const data = bytesOf(2 * CS);
    const fields = { fileName: 'restart.bin', fileSize: data.length, chunkSize: CS };
    const guid = (await initUpload(server.base, fields, key('k-7'))).json.data!.guid as string;
    expect((await putChunks(server.base, guid, data, CS, [1]))[0]!.status).toBe(200);
    await server.close();
    server = await startServer({ dir });
    const again = await initUpload(server.base, fields, key('k-7'));
    expect(again.json.data!.guid).toBe(guid);
    expect((await initUpload(server.base, { ...fields, fileName: 'other.bin' }, key('k-7'))).json.code).toBe('ERR_IDEMPOTENCY_KEY_REUSED');
    expect((await putChunks(server.base, guid, data, CS, [0]))[0]!.json.data).toMatchObject({ complete: true });
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'restart.bin')), data)).toBe(0);
  });

  it('refuses a key that is empty, too long or not printable ASCII (400 ERR_INVALID_FIELD), creating nothing', async () => {
    server = await startServer();
    const fields = { fileName: 'bad-key.bin', fileSize: 10, chunkSize: CS };
    // (fetch refuses to send other control characters, and uWS drops bytes above 0x7e from a header before the
    // engine sees it; validate.test.ts tries those on parseIdempotencyKey.)
    for (const bad of ['', '""', 'k'.repeat(129), 'tab\there']) {
      const r = await initUpload(server.base, fields, key(bad));
      expect(r.status, JSON.stringify(bad)).toBe(400);
      expect(r.json).toMatchObject({ code: 'ERR_INVALID_FIELD', data: { field: 'Idempotency-Key' } });
    }
    expect((await initUpload(server.base, fields, key('k'.repeat(128)))).status).toBe(200);
    expect(server.engine.registry.size).toBe(1);
  });

  it('a browser may send the header: the CORS preflight allows it', async () => {
    server = await startServer({ allowedOrigins: ['http://app.example'] });
    const r = await fetch(`${server.base}${PREFIX}/upload-chunk`, {
      method: 'OPTIONS',
      headers: { origin: 'http://app.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'idempotency-key' },
    });
    expect(r.status).toBe(204);
    expect(r.headers.get('access-control-allow-headers')?.toLowerCase().split(/,\s*/)).toContain('idempotency-key');
  });
});
