import fsp from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  PREFIX,
  bytesOf,
  call,
  initUpload,
  listFiles,
  psBody,
  putChunk,
  putChunks,
  shuffled,
  slice,
  startServer,
} from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';

const CS = 64 * 1024; // small chunks keep the tests fast; the code path is the same as for 8 MiB

let server: TestServer | null = null;
afterEach(async () => {
  await server?.close();
  server = null;
});

async function uploadWhole(s: TestServer, fileName: string, data: Uint8Array, extra: Record<string, unknown> = {}, seed = 7) {
  const init = await initUpload(s.base, { fileName, fileSize: data.length, chunkSize: CS, ...extra });
  expect(init.status, JSON.stringify(init.json)).toBe(200);
  const { guid, totalChunks } = init.json.data!;
  const order = shuffled([...Array(totalChunks as number).keys()], seed);
  const replies = await putChunks(s.base, guid, data, CS, order, 4);
  return { guid, replies, init };
}

describe('HTTP uploads', () => {
  it.each([
    ['1 byte', 1],
    ['exactly one chunk', CS],
    ['an exact multiple of the chunk size', 8 * CS],
    ['a remainder', 8 * CS + 12345],
    ['one chunk plus one byte', CS + 1],
  ])('completes %s with 4 concurrent PUTs in random order, byte for byte', async (_name, size) => {
    server = await startServer();
    const data = bytesOf(size);
    const { replies } = await uploadWhole(server, 'file.bin', data);
    for (const r of replies) expect(r.status, JSON.stringify(r.json)).toBe(200);
    const completes = replies.filter((r) => r.json.data?.complete === true);
    expect(completes).toHaveLength(1);
    expect(completes[0]!.json.message).toBe('Upload completed successfully');
    expect(completes[0]!.json.data).toMatchObject({ fileName: 'file.bin', size, complete: true });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'file.bin')), data)).toBe(0);
    // Nothing left behind in staging but the completion record.
    const staging = (await listFiles(server.dir, true)).filter((f) => f.startsWith('.updraft-staging/'));
    expect(staging.every((f) => f.endsWith('.meta'))).toBe(true);
  });

  it('completes a 0-byte file at init', async () => {
    server = await startServer();
    const init = await initUpload(server.base, { fileName: 'empty.txt', fileSize: 0 });
    expect(init.status).toBe(200);
    expect(init.json.data).toMatchObject({ totalChunks: 0, complete: true });
    const st = await fsp.stat(path.join(server.dir, 'empty.txt'));
    expect(st.size).toBe(0);
    const status = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${init.json.data!.guid}`);
    expect(status.json.data).toMatchObject({ uploadStatus: 'completed', finalName: 'empty.txt' });
  });

  it('init reply carries guid, uploadUrl and the chunk layout', async () => {
    server = await startServer({ chunkSize: CS });
    const init = await initUpload(server.base, { fileName: 'a.bin', fileSize: 3 * CS + 1 });
    expect(init.json.status).toBe('success');
    const d = init.json.data!;
    expect(d.uploadUrl).toBe(`${PREFIX}/upload-chunk?guid=${d.guid}`);
    expect(d).toMatchObject({ fileName: 'a.bin', fileSize: 3 * CS + 1, chunkSize: CS, totalChunks: 4 });
  });

  it('accepts the PSWebHost body form (10-byte header) and answers duplicates idempotently', async () => {
    server = await startServer();
    const data = bytesOf(3 * CS + 100);
    const init = await initUpload(server.base, { fileName: 'ps.bin', fileSize: data.length, chunkSize: CS, totalChunks: 4 });
    const guid = init.json.data!.guid as string;
    const url = `${PREFIX}/upload-chunk?guid=${guid}`;
    const first = await call(server.base, 'PUT', url, psBody(2, data.length - 2 * CS, slice(data, CS, 2)));
    expect(first.json).toMatchObject({ status: 'success', message: 'Chunk received', data: { chunkNumber: 2, receivedChunks: 1, totalChunks: 4, complete: false } });
    const dup = await call(server.base, 'PUT', url, psBody(2, 0, slice(data, CS, 2)));
    expect(dup.status).toBe(200);
    expect(dup.json).toMatchObject({ message: 'Chunk already received', data: { chunkNumber: 2, receivedChunks: 1 } });
    for (const c of [0, 3]) expect((await call(server.base, 'PUT', url, psBody(c, 0, slice(data, CS, c)))).status).toBe(200);
    const last = await call(server.base, 'PUT', url, psBody(1, 0, slice(data, CS, 1)));
    expect(last.json).toMatchObject({ message: 'Upload completed successfully', data: { complete: true, fileName: 'ps.bin', size: data.length } });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'ps.bin')), data)).toBe(0);
    // A retried last chunk after completion answers complete:true with the final name instead of 404.
    const retry = await call(server.base, 'PUT', url, psBody(1, 0, slice(data, CS, 1)));
    expect(retry.status).toBe(200);
    expect(retry.json.data).toMatchObject({ complete: true, fileName: 'ps.bin' });
  });

  it('counts a chunk sent twice at once exactly once and keeps its bytes intact', async () => {
    server = await startServer();
    const data = bytesOf(4 * CS);
    const init = await initUpload(server.base, { fileName: 'twice.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    const replies = await Promise.all([0, 0, 0, 1, 1, 2, 3, 3].map((c) => putChunk(server!.base, guid, c, slice(data, CS, c))));
    for (const r of replies) expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(replies.filter((r) => r.json.message === 'Chunk already received').length).toBe(4);
    expect(replies.filter((r) => r.json.data?.complete === true && r.json.message === 'Upload completed successfully')).toHaveLength(1);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'twice.bin')), data)).toBe(0);
  });

  it('reports live status with the missing chunks, also on GET upload-chunk', async () => {
    server = await startServer();
    const data = bytesOf(5 * CS);
    const init = await initUpload(server.base, { fileName: 's.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    await putChunks(server.base, guid, data, CS, [1, 3]);
    for (const route of ['upload-status', 'upload-chunk']) {
      const st = await call(server.base, 'GET', `${PREFIX}/${route}?guid=${guid}`);
      expect(st.status).toBe(200);
      expect(st.json.data).toMatchObject({
        guid,
        fileName: 's.bin',
        fileSize: 5 * CS,
        chunkSize: CS,
        totalChunks: 5,
        receivedChunks: 2,
        receivedBytes: 2 * CS,
        missingChunks: [0, 2, 4],
        uploadStatus: 'active',
      });
      expect(typeof st.json.data!.startTime).toBe('number');
      expect(st.json.data!.lastActivityTime).toBeGreaterThanOrEqual(st.json.data!.startTime);
    }
  });

  it('cancels by POST and by DELETE, removing the staging file; later chunks get 410', async () => {
    server = await startServer();
    const data = bytesOf(3 * CS);
    for (const how of ['POST', 'DELETE']) {
      const init = await initUpload(server.base, { fileName: `c-${how}.bin`, fileSize: data.length, chunkSize: CS });
      const guid = init.json.data!.guid as string;
      await putChunk(server.base, guid, 0, slice(data, CS, 0));
      const r =
        how === 'POST'
          ? await call(server.base, 'POST', `${PREFIX}/upload-chunk`, { action: 'cancel', guid })
          : await call(server.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${guid}`);
      expect(r.status).toBe(200);
      expect(r.json.message).toBe('Upload cancelled');
      const later = await putChunk(server.base, guid, 1, slice(data, CS, 1));
      expect(later.status).toBe(410);
      expect(later.json.code).toBe('ERR_UPLOAD_CANCELLED');
      const files = await fsp.readdir(path.join(server.dir, '.updraft-staging'));
      expect(files.filter((f) => f.startsWith(guid) && !f.endsWith('.meta'))).toEqual([]);
    }
    expect(await listFiles(server.dir)).toEqual([]);
  });

  it('refuses to cancel an upload being placed or complete with 409 ERR_UPLOAD_FINALIZING, retryable: false (a retry never succeeds)', async () => {
    let release: () => void = () => {};
    const held = new Promise<void>((r) => (release = r));
    let placing: () => void = () => {};
    const inHook = new Promise<void>((r) => (placing = r));
    server = await startServer({
      onUploadComplete: async () => {
        placing();
        await held;
      },
    });
    const data = bytesOf(2 * CS);
    const guid = (await initUpload(server.base, { fileName: 'placed.bin', fileSize: data.length, chunkSize: CS })).json.data!.guid as string;
    expect((await putChunk(server.base, guid, 0, slice(data, CS, 0))).status).toBe(200);
    const last = putChunk(server.base, guid, 1, slice(data, CS, 1));
    await inHook;
    for (const stage of ['finalizing', 'completed']) {
      if (stage === 'completed') {
        release();
        expect((await last).json.data).toMatchObject({ complete: true });
      }
      const r = await call(server.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${guid}`);
      expect(r.status, stage).toBe(409);
      expect(r.json, stage).toMatchObject({ code: 'ERR_UPLOAD_FINALIZING', data: { retryable: false } });
    }
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'placed.bin')), data)).toBe(0);
  });

  it('keeps every byte when many uploads share a tiny in-flight budget (pause, resume, overflow)', async () => {
    // Two 64 KiB slabs for 8 uploads x 4 PUTs of 256 KiB chunks: requests pause and resume all the time, and pieces
    // that arrive after a pause take the overflow path.
    server = await startServer({ batchSize: 64 * 1024, maxInFlightBytes: 128 * 1024 });
    const big = 256 * 1024;
    const files = Array.from({ length: 8 }, (_, i) => bytesOf(5 * big + 1000 * i));
    await Promise.all(
      files.map(async (data, i) => {
        const init = await initUpload(server!.base, { fileName: `p${i}.bin`, fileSize: data.length, chunkSize: big });
        const order = shuffled([...Array(init.json.data!.totalChunks as number).keys()], i + 1);
        for (const r of await putChunks(server!.base, init.json.data!.guid, data, big, order, 4)) expect(r.status, JSON.stringify(r.json)).toBe(200);
      }),
    );
    for (let i = 0; i < files.length; i++) {
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, `p${i}.bin`)), files[i]!)).toBe(0);
    }
  });

  it('creates the target folder and places the file there', async () => {
    server = await startServer();
    const data = bytesOf(CS + 5);
    await uploadWhole(server, 'deep.bin', data, { targetPath: '/a/b c/d' });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'a', 'b c', 'd', 'deep.bin')), data)).toBe(0);
  });
});

describe('conflict policies', () => {
  it('rename (default) gives "name (1).ext" and never replaces', async () => {
    server = await startServer();
    await fsp.writeFile(path.join(server.dir, 'doc.txt'), 'original');
    const a = bytesOf(100);
    const b = bytesOf(200);
    const ra = await uploadWhole(server, 'doc.txt', a);
    const rb = await uploadWhole(server, 'doc.txt', b);
    expect(ra.replies.at(-1)!.json.data).toMatchObject({ fileName: 'doc (1).txt' });
    expect(rb.replies.at(-1)!.json.data).toMatchObject({ fileName: 'doc (2).txt' });
    expect(await fsp.readFile(path.join(server.dir, 'doc.txt'), 'utf8')).toBe('original');
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'doc (1).txt')), a)).toBe(0);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'doc (2).txt')), b)).toBe(0);
  });

  it('overwrite replaces the existing file', async () => {
    server = await startServer({ onConflict: 'overwrite' });
    await fsp.writeFile(path.join(server.dir, 'doc.txt'), 'original');
    const a = bytesOf(CS * 2 + 1);
    await uploadWhole(server, 'doc.txt', a);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'doc.txt')), a)).toBe(0);
    expect(await listFiles(server.dir)).toEqual(['doc.txt']);
  });

  it('reject answers 409 at init, and at completion if the name appeared meanwhile', async () => {
    server = await startServer({ onConflict: 'reject' });
    await fsp.writeFile(path.join(server.dir, 'doc.txt'), 'original');
    const r = await initUpload(server.base, { fileName: 'doc.txt', fileSize: 10, chunkSize: CS });
    expect(r.status).toBe(409);
    expect(r.json.code).toBe('ERR_FILE_EXISTS');
    const init = await initUpload(server.base, { fileName: 'late.txt', fileSize: 10, chunkSize: CS });
    await fsp.writeFile(path.join(server.dir, 'late.txt'), 'someone else');
    const put = await putChunk(server.base, init.json.data!.guid, 0, bytesOf(10));
    expect(put.status).toBe(409);
    expect(put.json.code).toBe('ERR_FILE_EXISTS');
    expect(await fsp.readFile(path.join(server.dir, 'late.txt'), 'utf8')).toBe('someone else');
    expect(await fsp.readFile(path.join(server.dir, 'doc.txt'), 'utf8')).toBe('original');
  });
});

describe('expiry', () => {
  it('expires idle uploads with their staging files; later calls get 410', async () => {
    server = await startServer({ uploadTtl: 150, reapInterval: 50 });
    const data = bytesOf(2 * CS);
    const init = await initUpload(server.base, { fileName: 'idle.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    await putChunk(server.base, guid, 0, slice(data, CS, 0));
    let status = 0;
    for (let i = 0; i < 100 && status !== 410; i++) {
      await new Promise((r) => setTimeout(r, 50));
      status = (await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`)).status;
    }
    expect(status).toBe(410);
    const put = await putChunk(server.base, guid, 1, slice(data, CS, 1));
    expect(put.status).toBe(410);
    expect(put.json.code).toBe('ERR_UPLOAD_EXPIRED');
    // The status flips first (so no new write starts), then the files go once writes in flight are done.
    let left: string[] = [];
    for (let i = 0; i < 100; i++) {
      left = (await fsp.readdir(path.join(server.dir, '.updraft-staging'))).filter((f) => f.startsWith(guid) && !f.endsWith('.meta'));
      if (left.length === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(left).toEqual([]);
    expect(await listFiles(server.dir)).toEqual([]);
  });
});

describe('auth', () => {
  it('maps bearer tokens to users and hides other users\' uploads behind 404', async () => {
    server = await startServer({ tokens: { 'token-alice-123': 'alice', 'token-bob-4567': 'bob' } });
    const alice = { authorization: 'Bearer token-alice-123' };
    const bob = { authorization: 'Bearer token-bob-4567' };
    const none = await initUpload(server.base, { fileName: 'x', fileSize: 1 });
    expect(none.status).toBe(401);
    expect(none.json.code).toBe('ERR_UNAUTHORIZED');
    const bad = await initUpload(server.base, { fileName: 'x', fileSize: 1 }, { authorization: 'Bearer nope-nope-nope' });
    expect(bad.status).toBe(401);
    const init = await initUpload(server.base, { fileName: 'a.bin', fileSize: 10, chunkSize: CS }, alice);
    const guid = init.json.data!.guid as string;
    const unknown = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=00000000-0000-4000-8000-000000000000`, undefined, bob);
    const other = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`, undefined, bob);
    expect(other.status).toBe(404);
    expect(other.json).toEqual(unknown.json);
    expect((await putChunk(server.base, guid, 0, bytesOf(10), bob)).status).toBe(404);
    expect((await call(server.base, 'POST', `${PREFIX}/upload-chunk`, { action: 'cancel', guid }, bob)).status).toBe(404);
    const mine = await putChunk(server.base, guid, 0, bytesOf(10), alice);
    expect(mine.json.data).toMatchObject({ complete: true });
  });

  it('refuses a request an authenticate hook names no user for: an empty name is not a user (401)', async () => {
    // A plain-JS hook that returns a missing header's '' must not make every such caller one user, "".
    server = await startServer({ authenticate: (req) => req.headers['x-user'] ?? '' });
    const none = await initUpload(server.base, { fileName: 'x.bin', fileSize: 10 });
    expect([none.status, none.json.code]).toEqual([401, 'ERR_UNAUTHORIZED']);
    expect(await listFiles(server.dir, true)).toEqual([]);
    expect((await initUpload(server.base, { fileName: 'y.bin', fileSize: 10 }, { 'x-user': 'alice' })).status).toBe(200);
  });
});

describe('event listeners', () => {
  it('a listener that throws changes nothing for the client: chunks, completion and cancel are answered and done as without it', async () => {
    server = await startServer();
    const seen: string[] = [];
    for (const event of ['created', 'chunk', 'completed', 'cancelled'] as const) {
      server.engine.on(event, () => {
        seen.push(event);
        throw new TypeError(`listener of ${event} is broken`);
      });
      server.engine.on(event, () => seen.push(`${event} (second listener)`)); // still runs
    }
    const data = bytesOf(2 * CS + 3);
    const init = await initUpload(server.base, { fileName: 'ev.bin', fileSize: data.length, chunkSize: CS });
    expect(init.status).toBe(200);
    const guid = init.json.data!.guid as string;
    const replies = await putChunks(server.base, guid, data, CS, [2, 0, 1], 1);
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200]);
    expect(replies[2]!.json).toMatchObject({ message: 'Upload completed successfully', data: { complete: true } });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'ev.bin')), data)).toBe(0);

    const other = await initUpload(server.base, { fileName: 'gone.bin', fileSize: 10, chunkSize: CS });
    const cancel = await call(server.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${other.json.data!.guid as string}`);
    expect(cancel.status).toBe(200);
    expect(seen.filter((e) => !e.includes('second'))).toEqual(['created', 'chunk', 'chunk', 'chunk', 'completed', 'created', 'cancelled']);
    expect(seen.filter((e) => e.includes('second'))).toHaveLength(7);
  });
});
