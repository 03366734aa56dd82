/**
 * Every bad input gets a 4xx with its code, writes nothing, never reveals a server path, and leaves the server
 * serving everyone else (checked with a full upload at the end).
 */
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PREFIX, bytesOf, call, initUpload, listFiles, psBody, putChunk, slice, startServer, tempDir } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';

const CS = 64 * 1024;
let server: TestServer;
let outside: string;
let guid: string;
const data = bytesOf(3 * CS + 10);

beforeAll(async () => {
  outside = await tempDir('updraft-outside-');
  server = await startServer({ maxFileSize: 1024 ** 5 });
  await fsp.symlink(outside, path.join(server.dir, 'escape'));
  const init = await initUpload(server.base, { fileName: 'victim.bin', fileSize: data.length, chunkSize: CS });
  guid = init.json.data!.guid as string;
});

afterAll(async () => {
  await server.close();
  await fsp.rm(outside, { recursive: true, force: true });
});

/** Sends `head` and then `body` on a raw socket and parses the reply (uWS answers with Content-Length). */
async function rawRequest(head: string, body: Uint8Array | string): Promise<{ status: number; json: Record<string, any> }> {
  const s = net.connect(Number(new URL(server.base).port), '127.0.0.1');
  try {
    await new Promise<void>((resolve, reject) => s.once('connect', resolve).once('error', reject));
    const got: Buffer[] = [];
    const closed = new Promise<void>((resolve, reject) => {
      s.on('data', (b: Buffer) => got.push(b)).once('end', resolve).once('close', resolve).once('error', reject);
    });
    s.write(head);
    s.write(body);
    // Connection: close in `head`: the reply ends with the connection. Bounded either way.
    await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error('no reply in 10 s')), 10_000))]);
    const text = Buffer.concat(got).toString('latin1');
    const split = text.indexOf('\r\n\r\n');
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]);
    return { status, json: JSON.parse(text.slice(split + 4)) as Record<string, any> };
  } finally {
    s.destroy();
  }
}

function noPath(text: string): void {
  expect(text).not.toContain(server.dir);
  expect(text).not.toContain(outside);
  expect(text).not.toContain('.updraft-staging');
}

describe('file names', () => {
  it.each([
    ['empty', ''],
    ['separator', 'a/b'],
    ['backslash', 'a\\b'],
    ['dot-dot', '..'],
    ['dot', '.'],
    ['absolute', '/etc/passwd'],
    ['drive path', 'C:\\evil.txt'],
    ['drive relative', 'C:evil.txt'],
    ['NUL', 'a\u0000b'],
    ['newline', 'a\nb'],
    ['DEL', 'a\u007fb'],
    ['C1 control', 'a\u0085b'],
    ['over 255 bytes', 'é'.repeat(128)],
    ['fullwidth solidus (NFKC /)', 'a\uFF0Fb'],
    ['fullwidth dots (NFKC ..)', '\uFF0E\uFF0E'],
    ['one dot leader pair (NFKC ..)', '\u2025'],
    ['right-to-left override', 'invoice\u202Efdp.exe'],
    ['right-to-left mark', 'invoice\u200Ffdp.exe'],
    ['left-to-right mark', 'a\u200Eb.txt'],
    ['Arabic letter mark', 'a\u061Cb.txt'],
    ['not a string', 42],
  ])('%s -> 400 ERR_INVALID_FILE_NAME naming data.field fileName', async (_n, fileName) => {
    const r = await initUpload(server.base, { fileName, fileSize: 10 });
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ status: 'fail', code: 'ERR_INVALID_FILE_NAME' });
    expect(r.json.data).toEqual({ retryable: false, field: 'fileName' });
    noPath(JSON.stringify(r.json));
  });

  it('reserves the staging folder name at the root', async () => {
    const r = await initUpload(server.base, { fileName: '.updraft-staging', fileSize: 10 });
    expect(r.status).toBe(400);
  });

  it('reserves .updraft names in every folder: another engine may have its root below (a tenant\'s)', async () => {
    for (const fileName of ['.updraft-staging', '.Updraft-write-check', '.updraft-x.meta']) {
      const r = await initUpload(server.base, { fileName, fileSize: 10, targetPath: 'tenant-b' });
      expect([r.status, r.json.code, r.json.message], fileName).toEqual([400, 'ERR_INVALID_FILE_NAME', 'File names starting with ".updraft" are reserved']);
    }
  });
});

describe('target paths', () => {
  it.each([
    ['parent', '../x'],
    ['parent inside', 'a/../../x'],
    ['rooted parent', '/../x'],
    ['backslash', 'a\\..\\b'],
    ['NUL', 'a\u0000'],
    ['staging folder', '.updraft-staging'],
    ["another engine's staging folder below", 'tenant-b/.updraft-staging'],
    ['a reserved folder further down', 'a/b/.UPDRAFT-staging/c'],
    ['fullwidth dots', 'a/\uFF0E\uFF0E/b'],
    ['right-to-left mark in a folder', 'a/b\u200Fc'],
    ['Arabic letter mark in a folder', '\u061C/b'],
  ])('%s -> 400 ERR_INVALID_TARGET_PATH', async (_n, targetPath) => {
    const r = await initUpload(server.base, { fileName: 'ok.txt', fileSize: 10, targetPath });
    expect(r.status).toBe(400);
    expect(r.json.code).toBe('ERR_INVALID_TARGET_PATH');
    noPath(JSON.stringify(r.json));
  });

  it.each([
    ['parent', '../x'],
    ['backslash', 'a\\..\\b'],
    ['right-to-left mark', 'a/b\u200Fc'],
    ['33 folders', 'a/'.repeat(33)],
    ['not a string', ['a', 'b']],
  ])('%s is refused at init naming data.field targetPath', async (_n, targetPath) => {
    const r = await initUpload(server.base, { fileName: 'ok.txt', fileSize: 10, targetPath });
    expect([r.status, r.json.code]).toEqual([400, 'ERR_INVALID_TARGET_PATH']);
    expect(r.json.data).toEqual({ retryable: false, field: 'targetPath' });
  });

  it('refuses at init a target path and file name too long together for the system (not a 500 at the end)', async () => {
    const targetPath = Array.from({ length: 16 }, (_, i) => `${i}`.padEnd(250, 'd')).join('/');
    const fileName = 'f'.repeat(250);
    for (const fileSize of [10, 0]) {
      const r = await initUpload(server.base, { fileName, fileSize, targetPath });
      expect([r.status, r.json.code]).toEqual([400, 'ERR_INVALID_TARGET_PATH']);
      noPath(JSON.stringify(r.json));
    }
    expect(await fsp.readdir(server.dir)).not.toContain('0'.padEnd(250, 'd'));
  });

  it('refuses a symlink that leaves the root and creates nothing outside', async () => {
    for (const targetPath of ['escape', 'escape/new/deeper']) {
      const r = await initUpload(server.base, { fileName: 'ok.txt', fileSize: 10, targetPath });
      expect(r.status).toBe(400);
      expect(r.json.code).toBe('ERR_INVALID_TARGET_PATH');
      noPath(JSON.stringify(r.json));
    }
    expect(await fsp.readdir(outside)).toEqual([]);
  });

  it('refuses a symlink to a sibling whose name starts with the root\'s ("<root>-evil" is not inside "<root>")', async () => {
    const sibling = `${await fsp.realpath(server.dir)}-evil`;
    const link = path.join(server.dir, 'prefix-escape');
    await fsp.mkdir(sibling);
    try {
      await fsp.symlink(sibling, link);
      for (const targetPath of ['prefix-escape', 'prefix-escape/new']) {
        const r = await initUpload(server.base, { fileName: 'ok.txt', fileSize: 10, targetPath });
        expect([r.status, r.json.code], JSON.stringify(r.json)).toEqual([400, 'ERR_INVALID_TARGET_PATH']);
        noPath(JSON.stringify(r.json));
      }
      expect(await fsp.readdir(sibling)).toEqual([]);
    } finally {
      await fsp.rm(link, { force: true });
      await fsp.rm(sibling, { recursive: true, force: true });
    }
  });

  it('refuses a symlink inside the root that leads into the staging folder (its name hides the reserved one)', async () => {
    const staging = path.join(await fsp.realpath(server.dir), '.updraft-staging');
    const link = path.join(server.dir, 'inbox');
    const before = (await fsp.readdir(staging)).sort();
    await fsp.symlink(staging, link);
    try {
      for (const targetPath of ['inbox', 'inbox/new']) {
        const r = await initUpload(server.base, { fileName: 'ok.txt', fileSize: 10, targetPath });
        expect([r.status, r.json.code], JSON.stringify(r.json)).toEqual([400, 'ERR_INVALID_TARGET_PATH']);
        noPath(JSON.stringify(r.json));
      }
      expect((await fsp.readdir(staging)).sort()).toEqual(before);
    } finally {
      await fsp.rm(link, { force: true });
    }
  });
});

describe('sizes and fields', () => {
  it.each([
    ['negative size', { fileSize: -1 }, 400, 'ERR_INVALID_FILE_SIZE'],
    ['fractional size', { fileSize: 1.5 }, 400, 'ERR_INVALID_FILE_SIZE'],
    ['non-numeric size', { fileSize: 'abc' }, 400, 'ERR_INVALID_FILE_SIZE'],
    ['missing size', {}, 400, 'ERR_INVALID_FILE_SIZE'],
    ['unsafe size', { fileSize: 2 ** 53 }, 400, 'ERR_INVALID_FILE_SIZE'],
    ['chunk size over the max', { fileSize: 10, chunkSize: 65 * 1024 * 1024 }, 400, 'ERR_INVALID_CHUNK_SIZE'],
    ['chunk size zero', { fileSize: 10, chunkSize: 0 }, 400, 'ERR_INVALID_CHUNK_SIZE'],
    ['totalChunks mismatch', { fileSize: 10 * CS, chunkSize: CS, totalChunks: 9 }, 400, 'ERR_TOTAL_CHUNKS_MISMATCH'],
    ['more than free disk', { fileSize: 2 ** 46 - 1, chunkSize: 64 * 1024 * 1024 }, 507, 'ERR_INSUFFICIENT_STORAGE'],
  ])('%s -> %i %s', async (_n, fields, status, code) => {
    const r = await initUpload(server.base, { fileName: 'f.bin', ...fields });
    expect(r.status, JSON.stringify(r.json)).toBe(status);
    expect(r.json.code).toBe(code);
  });

  it('rejects files over maxFileSize with 413', async () => {
    const small = await startServer({ maxFileSize: 1000 });
    try {
      const r = await initUpload(small.base, { fileName: 'big.bin', fileSize: 1001 });
      expect(r.status).toBe(413);
      expect(r.json.code).toBe('ERR_FILE_TOO_LARGE');
    } finally {
      await small.close();
    }
  });

  it('rejects invalid JSON, non-objects, unknown actions and oversized control bodies', async () => {
    const route = `${PREFIX}/upload-chunk`;
    const bad = await call(server.base, 'POST', route, '{"action":"init",');
    expect([bad.status, bad.json.code]).toEqual([400, 'ERR_INVALID_JSON']);
    const arr = await call(server.base, 'POST', route, '[1,2]');
    expect([arr.status, arr.json.code]).toEqual([400, 'ERR_INVALID_JSON']);
    const unk = await call(server.base, 'POST', route, { action: 'explode' });
    expect([unk.status, unk.json.code]).toEqual([400, 'ERR_UNKNOWN_ACTION']);
    const big = await call(server.base, 'POST', route, JSON.stringify({ action: 'init', pad: 'x'.repeat(100_000) }));
    expect([big.status, big.json.code]).toEqual([413, 'ERR_BODY_TOO_LARGE']);
  });

  it('refuses a control body announced over 64 KiB before reading it (the client has sent only its start)', async () => {
    const route = `${PREFIX}/upload-chunk`;
    const head = `POST ${route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n`;
    const r = await rawRequest(head, '{"action":"init",');
    expect([r.status, r.json.code]).toEqual([413, 'ERR_BODY_TOO_LARGE']);
  });

  it('refuses a control body over 64 KiB sent without Content-Length (chunked), counting what arrives', async () => {
    const pad = new TextEncoder().encode(JSON.stringify({ action: 'init', fileName: 'chunked.bin', fileSize: 10, pad: 'x'.repeat(100_000) }));
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < pad.length; i += 16 * 1024) c.enqueue(pad.subarray(i, i + 16 * 1024));
        c.close();
      },
    });
    const res = await fetch(`${server.base}${PREFIX}/upload-chunk`, { method: 'POST', body, duplex: 'half', headers: { 'content-type': 'application/json' } } as RequestInit);
    const json = (await res.json()) as Record<string, unknown>;
    expect([res.status, json.code]).toEqual([413, 'ERR_BODY_TOO_LARGE']);
    expect(await listFiles(server.dir)).not.toContain('chunked.bin');
  });
});

describe('guids, routes and methods', () => {
  it('missing, malformed and unknown guids', async () => {
    const miss = await call(server.base, 'GET', `${PREFIX}/upload-status`);
    expect([miss.status, miss.json.code]).toEqual([400, 'ERR_MISSING_GUID']);
    const mal = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=../../etc/passwd`);
    expect([mal.status, mal.json.code]).toEqual([404, 'ERR_UPLOAD_NOT_FOUND']);
    const unk = await putChunk(server.base, '00000000-0000-4000-8000-000000000000', 0, bytesOf(10));
    expect([unk.status, unk.json.code]).toEqual([404, 'ERR_UPLOAD_NOT_FOUND']);
    const cancel = await call(server.base, 'POST', `${PREFIX}/upload-chunk`, { action: 'cancel' });
    expect([cancel.status, cancel.json.code]).toEqual([400, 'ERR_MISSING_GUID']);
    // A guid that is not a string (String() of this object throws): a 400, not a 500.
    for (const bad of [{ toString: 1 }, [guid], 12]) {
      const r = await call(server.base, 'POST', `${PREFIX}/upload-chunk`, { action: 'cancel', guid: bad });
      expect([r.status, r.json.code]).toEqual([400, 'ERR_INVALID_FIELD']);
    }
  });

  it('wrong method -> 405 with Allow; unknown route -> 404', async () => {
    const r = await call(server.base, 'PATCH', `${PREFIX}/upload-chunk?guid=${guid}`, 'x');
    expect([r.status, r.json.code]).toEqual([405, 'ERR_METHOD_NOT_ALLOWED']);
    expect(r.headers.get('allow')).toContain('PUT');
    const s = await call(server.base, 'POST', `${PREFIX}/upload-status?guid=${guid}`, '{}');
    expect(s.status).toBe(405);
    const nf = await call(server.base, 'GET', '/nope');
    expect([nf.status, nf.json.code]).toEqual([404, 'ERR_NOT_FOUND']);
  });
});

describe('chunks', () => {
  it.each([
    ['-1', 400, 'ERR_INVALID_CHUNK_NUMBER'],
    ['1.5', 400, 'ERR_INVALID_CHUNK_NUMBER'],
    ['NaN', 400, 'ERR_INVALID_CHUNK_NUMBER'],
    ['1e3', 400, 'ERR_INVALID_CHUNK_NUMBER'],
    ['', 400, 'ERR_INVALID_CHUNK_NUMBER'],
    ['99999999999999999999', 400, 'ERR_INVALID_CHUNK_NUMBER'],
    ['4', 400, 'ERR_CHUNK_OUT_OF_RANGE'],
    ['4294967295', 400, 'ERR_CHUNK_OUT_OF_RANGE'],
  ])('chunk=%s -> %i %s', async (chunk, status, code) => {
    const r = await call(server.base, 'PUT', `${PREFIX}/upload-chunk?guid=${guid}&chunk=${chunk}`, slice(data, CS, 0));
    expect([r.status, r.json.code]).toEqual([status, code]);
  });

  it('PSWebHost header with a chunk past the end, or a body shorter than the header', async () => {
    const url = `${PREFIX}/upload-chunk?guid=${guid}`;
    const past = await call(server.base, 'PUT', url, psBody(7, 0, slice(data, CS, 0)));
    expect([past.status, past.json.code]).toEqual([400, 'ERR_CHUNK_OUT_OF_RANGE']);
    const short = await call(server.base, 'PUT', url, new Uint8Array([1, 2, 3]));
    expect([short.status, short.json.code]).toEqual([400, 'ERR_CHUNK_HEADER_INVALID']);
  });

  it('a body longer than its chunk -> 413, shorter -> 400; nothing counted', async () => {
    const long = await putChunk(server.base, guid, 0, bytesOf(CS + 1));
    expect([long.status, long.json.code]).toEqual([413, 'ERR_CHUNK_TOO_LARGE']);
    const short = await putChunk(server.base, guid, 0, bytesOf(CS - 1));
    expect([short.status, short.json.code]).toEqual([400, 'ERR_CHUNK_TOO_SMALL']);
    const lastLong = await putChunk(server.base, guid, 3, bytesOf(11));
    expect([lastLong.status, lastLong.json.code]).toEqual([413, 'ERR_CHUNK_TOO_LARGE']);
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(st.json.data).toMatchObject({ receivedChunks: 0, receivedBytes: 0, missingChunks: [0, 1, 2, 3] });
  });

  it('a body cut short by a client abort leaves the chunk unset', async () => {
    const before = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(before.json.data!.missingChunks).toContain(1);
    const ac = new AbortController();
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(bytesOf(CS / 2));
        setTimeout(() => ac.abort(), 50);
      },
    });
    await fetch(`${server.base}${PREFIX}/upload-chunk?guid=${guid}&chunk=1`, {
      method: 'PUT',
      body,
      headers: { 'content-length': String(CS) },
      signal: ac.signal,
      duplex: 'half',
    } as RequestInit).catch(() => null);
    await new Promise((r) => setTimeout(r, 100));
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(st.json.data!.missingChunks).toContain(1);
    // Nothing of the half body is counted, and the aborted writer's claim is released: the chunk can be sent again
    // at once (a claim left behind would answer ERR_CHUNK_BUSY after chunkBusyTimeout).
    expect(st.json.data!.receivedBytes).toBe(before.json.data!.receivedBytes);
    const again = await putChunk(server.base, guid, 1, slice(data, CS, 1));
    expect([again.status, again.json.message], JSON.stringify(again.json)).toEqual([200, 'Chunk received']);
    const after = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(after.json.data!.missingChunks).not.toContain(1);
    expect(after.json.data!.receivedBytes).toBe(before.json.data!.receivedBytes + CS);
  });

  it('a chunked (no Content-Length) body shorter than its chunk -> 400 ERR_CHUNK_TOO_SMALL, chunk still missing', async () => {
    // Every other short-body test sends Content-Length, which the route checks before reading; here only the end of
    // the body tells, so the receiver itself must refuse it.
    const body = Buffer.concat([Buffer.from(`${(CS - 1).toString(16)}\r\n`), Buffer.from(slice(data, CS, 2).subarray(0, CS - 1)), Buffer.from('\r\n0\r\n\r\n')]);
    const r = await rawRequest(
      `PUT ${PREFIX}/upload-chunk?guid=${guid}&chunk=2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`,
      body,
    );
    expect([r.status, r.json.code], JSON.stringify(r.json)).toEqual([400, 'ERR_CHUNK_TOO_SMALL']);
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(st.json.data!.missingChunks).toContain(2);
  });

  it('a chunked (no Content-Length) body longer than its chunk -> 413 ERR_CHUNK_TOO_LARGE, nothing written', async () => {
    // Only the bytes themselves tell that the body is too long: the receiver must refuse the piece that goes past the
    // chunk's end, before it can reach a worker as a piece longer than the chunk.
    const part = path.join(server.dir, '.updraft-staging', `${guid}.part`);
    const before = await fsp.readFile(part);
    const bytes = Buffer.concat([Buffer.from(slice(data, CS, 2)), bytesOf(100)]);
    const body = Buffer.concat([Buffer.from(`${bytes.length.toString(16)}\r\n`), bytes, Buffer.from('\r\n0\r\n\r\n')]);
    const r = await rawRequest(
      `PUT ${PREFIX}/upload-chunk?guid=${guid}&chunk=2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`,
      body,
    );
    expect([r.status, r.json.code], JSON.stringify(r.json)).toEqual([413, 'ERR_CHUNK_TOO_LARGE']);
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(st.json.data!.missingChunks).toContain(2);
    expect(Buffer.compare(await fsp.readFile(part), before)).toBe(0);
  });
});

describe('after all of that', () => {
  it('still serves a full upload, and nothing was written outside the root', async () => {
    for (let c = 0; c < 4; c++) {
      const r = await putChunk(server.base, guid, c, slice(data, CS, c));
      expect(r.status, JSON.stringify(r.json)).toBe(200);
    }
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'victim.bin')), data)).toBe(0);
    expect(await fsp.readdir(outside)).toEqual([]);
    expect(await listFiles(server.dir)).toEqual(['escape', 'victim.bin']); // the symlink planted in beforeAll
    const health = await call(server.base, 'GET', '/healthz');
    expect(health.status).toBe(200);
  });
});
