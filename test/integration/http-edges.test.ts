/**
 * HTTP replies at the edges, on a real server: HEAD (headers, no body, the connection still usable), the health and
 * metrics routes with other methods and during a stop, a repeated Content-Length, a folder in the way of
 * onConflict 'overwrite', and a target folder swapped for a symlink after it was checked. Each was found by review
 * and reproduced by a script before it was fixed.
 */
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PREFIX, bytesOf, call, initUpload, putChunk, slice, startServer, tempDir } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';

const CS = 64 * 1024;
let server: TestServer | null = null;
afterEach(async () => {
  await server?.close();
  server = null;
});

/** Sends raw requests on one keep-alive connection and collects what comes back until `waitMs` of quiet. */
async function rawExchange(base: string, requests: Array<string | Uint8Array>, waitMs = 300): Promise<{ text: string; closed: boolean }> {
  const { port } = new URL(base);
  const socket = net.connect(Number(port), '127.0.0.1');
  let text = '';
  let closed = false;
  socket.on('data', (b) => (text += b.toString('latin1')));
  socket.on('close', () => (closed = true));
  socket.on('error', () => {});
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  for (const r of requests) {
    socket.write(r);
    await new Promise((resolve) => setTimeout(resolve, waitMs));
  }
  socket.destroy();
  return { text, closed };
}

describe('HTTP edges', () => {
  it('HEAD answers with the GET headers and no body, and the connection goes on with the next request', async () => {
    server = await startServer();
    for (const route of [`${PREFIX}/upload-status?guid=nope`, '/healthz']) {
      const get = await fetch(`${server.base}${route}`);
      const getBody = await get.text();
      const { text } = await rawExchange(server.base, [`HEAD ${route} HTTP/1.1\r\nHost: x\r\n\r\n`, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n']);
      const end = text.indexOf('\r\n\r\n');
      const headHeaders = text.slice(0, end);
      expect(Number(headHeaders.slice(9, 12)), route).toBe(get.status);
      // One Content-Length, the GET body's, and nothing after the headers but the next response.
      expect([...headHeaders.matchAll(/^content-length: *(\d+)$/gim)].map((m) => Number(m[1])), route).toEqual([Buffer.byteLength(getBody)]);
      const next = text.slice(end + 4);
      expect(next.startsWith('HTTP/1.1 200 OK'), `${route}: ${next.slice(0, 40)}`).toBe(true);
      expect(next).toContain('"message":"ok"');
    }
  });

  it('/healthz and /metrics answer other methods 405 with Allow, like the API routes', async () => {
    server = await startServer({ metrics: true });
    const post = await call(server.base, 'POST', '/healthz', {});
    expect(post.status).toBe(405);
    expect(post.json.code).toBe('ERR_METHOD_NOT_ALLOWED');
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    const put = await fetch(`${server.base}/metrics`, { method: 'PUT', body: 'x' });
    expect(put.status).toBe(405);
    expect(put.headers.get('allow')).toBe('GET');
    expect(((await put.json()) as { code: string }).code).toBe('ERR_METHOD_NOT_ALLOWED');
  });

  it('/healthz during a stop is a 503 like every other: ERR_SHUTTING_DOWN, retryable, Retry-After', async () => {
    server = await startServer({ chunkSize: CS });
    const a = await initUpload(server.base, { fileName: 'x.bin', fileSize: 2 * CS });
    const { port } = new URL(server.base);
    // A chunk half sent holds the stop in its grace period, while the health check is asked on an open connection.
    const half = net.connect(Number(port), '127.0.0.1');
    half.on('error', () => {});
    half.write(`PUT ${PREFIX}/upload-chunk?guid=${a.json.data!.guid}&chunk=0 HTTP/1.1\r\nHost: x\r\nContent-Length: ${CS}\r\n\r\n${'y'.repeat(1000)}`);
    const socket = net.connect(Number(port), '127.0.0.1');
    socket.on('error', () => {});
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    let text = '';
    socket.on('data', (b) => (text += b.toString('latin1')));
    await new Promise((r) => setTimeout(r, 200));
    const closing = server.engine.close(3000);
    server = null;
    await new Promise((r) => setTimeout(r, 100));
    socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => setTimeout(r, 300));
    half.destroy();
    socket.destroy();
    await closing;
    const end = text.indexOf('\r\n\r\n');
    expect(text.slice(0, 12)).toBe('HTTP/1.1 503');
    expect(text.slice(0, end)).toMatch(/^Retry-After: 1$/im);
    expect(JSON.parse(text.slice(end + 4))).toMatchObject({ status: 'error', code: 'ERR_SHUTTING_DOWN', data: { retryable: true, uploads: 1 } });
  });

  it('refuses a repeated Content-Length (uWS and a header map would read different ones) and writes nothing', async () => {
    server = await startServer({ chunkSize: CS });
    const data = bytesOf(2 * CS);
    const a = await initUpload(server.base, { fileName: 'cl.bin', fileSize: data.length, chunkSize: CS });
    const guid = a.json.data!.guid as string;
    // The body as long as the first header says (uWS frames by it; bytes past it would be read as a next request).
    for (const [first, second] of [[CS, 5], [5, CS]]) {
      const head = `PUT ${PREFIX}/upload-chunk?guid=${guid}&chunk=0 HTTP/1.1\r\nHost: x\r\nContent-Length: ${first}\r\nContent-Length: ${second}\r\n\r\n`;
      const { text, closed } = await rawExchange(server.base, [Buffer.concat([Buffer.from(head), slice(data, CS, 0).subarray(0, first)])]);
      expect(text.slice(0, 12), `${first}/${second}`).toBe('HTTP/1.1 400');
      expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toMatchObject({ code: 'ERR_BAD_REQUEST', message: 'Content-Length is given more than once' });
      expect(closed).toBe(true);
    }
    const init = '{"action":"init","fileName":"b.bin","fileSize":1}';
    const { text } = await rawExchange(server.base, [`POST ${PREFIX}/upload-chunk HTTP/1.1\r\nHost: x\r\nContent-Length: ${init.length}\r\nContent-Length: ${init.length}\r\n\r\n${init}`]);
    expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toMatchObject({ code: 'ERR_BAD_REQUEST' });
    const status = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(status.json.data).toMatchObject({ receivedChunks: 0, missingChunks: [0, 1] });
    expect((await fsp.readdir(server.dir)).filter((n) => !n.startsWith('.updraft'))).toEqual([]);
  });

  it('onConflict overwrite never replaces a folder: refused at init, and 409 (not a 500) if one appears meanwhile', async () => {
    server = await startServer({ chunkSize: CS, onConflict: 'overwrite' });
    await fsp.mkdir(path.join(server.dir, 'taken.bin'));
    const refused = await initUpload(server.base, { fileName: 'taken.bin', fileSize: 10 });
    expect(refused.status).toBe(409);
    expect(refused.json).toMatchObject({ code: 'ERR_FILE_EXISTS', message: 'A folder with that name exists in the target folder' });

    const data = bytesOf(2 * CS);
    const a = await initUpload(server.base, { fileName: 'later.bin', fileSize: data.length, chunkSize: CS });
    const guid = a.json.data!.guid as string;
    expect((await putChunk(server.base, guid, 0, slice(data, CS, 0))).status).toBe(200);
    await fsp.mkdir(path.join(server.dir, 'later.bin'));
    await fsp.writeFile(path.join(server.dir, 'later.bin', 'inside.txt'), 'keep');
    const last = await putChunk(server.base, guid, 1, slice(data, CS, 1));
    expect(last.status).toBe(409);
    expect(last.json).toMatchObject({ code: 'ERR_FILE_EXISTS' });
    expect(await fsp.readFile(path.join(server.dir, 'later.bin', 'inside.txt'), 'utf8')).toBe('keep');
  });

  it('a target folder swapped for a symlink out of the root after its check gets no file: the upload fails', async () => {
    const outside = await tempDir('updraft-outside-');
    try {
      server = await startServer({ chunkSize: CS });
      const { engine, dir } = server;
      await fsp.mkdir(path.join(dir, 'sub'));
      const data = bytesOf(CS + 5);
      const a = await initUpload(server.base, { fileName: 'f.bin', fileSize: data.length, chunkSize: CS, targetPath: 'sub' });
      const guid = a.json.data!.guid as string;
      // The swap lands between the completion's check of the folder and the move (another local user racing it).
      const registry = engine.registry;
      const resolve = registry.resolveTargetDir.bind(registry);
      registry.resolveTargetDir = async (segments) => {
        const checked = await resolve(segments);
        if (segments[0] === 'sub') {
          await fsp.rename(path.join(dir, 'sub'), path.join(dir, 'sub-was'));
          await fsp.symlink(outside, path.join(dir, 'sub'));
        }
        return checked;
      };
      expect((await putChunk(server.base, guid, 0, slice(data, CS, 0))).status).toBe(200);
      const last = await putChunk(server.base, guid, 1, slice(data, CS, 1));
      expect(last.status).toBe(400);
      expect(last.json).toMatchObject({ code: 'ERR_INVALID_TARGET_PATH' });
      expect(await fsp.readdir(outside)).toEqual([]);
      expect(JSON.stringify(last.json)).not.toContain(outside);
    } finally {
      await fsp.rm(outside, { recursive: true, force: true });
    }
  });

  it('reserves the staging folder\'s name also in its NFKC and case-folded forms', async () => {
    server = await startServer();
    for (const name of ['.UPDRAFT-staging', '\uFF0Eupdraft-staging', '\uFF0E\uFF35pdraft']) {
      const asFile = await initUpload(server.base, { fileName: name, fileSize: 10 });
      expect(asFile.status, name).toBe(400);
      expect(asFile.json.code).toBe('ERR_INVALID_FILE_NAME');
      const asFolder = await initUpload(server.base, { fileName: 'ok.txt', fileSize: 10, targetPath: `${name}/x` });
      expect(asFolder.json.code, name).toBe('ERR_INVALID_TARGET_PATH');
    }
    // In every folder, since another engine's root may be below (reload-safety.test.ts); other names are free.
    expect((await initUpload(server.base, { fileName: 'ok.txt', fileSize: 10, targetPath: 'a/\uFF0Eupdraft' })).json.code).toBe('ERR_INVALID_TARGET_PATH');
    expect((await initUpload(server.base, { fileName: 'my.updraft', fileSize: 10, targetPath: 'a/x.updraft' })).status).toBe(200);
  });
});
