/**
 * Issue 6 behaviours of the HTTP layer: trusted proxies, limits, CORS, metrics, hooks, events, attach(), request
 * ids. Every test runs a real engine on 127.0.0.1 port 0 and checks replies and files.
 */
import fsp from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { pino } from 'pino';
import uWS from 'uWebSockets.js';
import { afterEach, describe, expect, it } from 'vitest';
import { UploadError, createUploadEngine, resolveOptions } from '../../src/index.js';
import { clientView, normalizeIp, parseTrustProxy } from '../../src/main/forwarded.js';
import { logValue } from '../../src/main/http-policy.js';
import { PREFIX, bytesOf, call, initUpload, listFiles, putChunk, putChunks, slice, startServer, tempDir } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';

const CS = 64 * 1024;
let server: TestServer | null = null;
afterEach(async () => {
  await server?.close();
  server = null;
});

describe('trusted proxies', () => {
  it('believes forwarded headers only from a trusted peer, taking the rightmost untrusted hop', () => {
    const trust = parseTrustProxy(['127.0.0.1', '10.0.0.0/8']);
    const h = { host: 'internal:8080', 'x-forwarded-for': '6.6.6.6, 1.2.3.4, 10.1.1.1', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'files.example.com' };
    expect(clientView(trust, '127.0.0.1', h)).toEqual({ ip: '1.2.3.4', proto: 'https', host: 'files.example.com', viaProxy: true });
    // uWS reports IPv4 peers as IPv4-mapped IPv6 text.
    expect(clientView(trust, '0000:0000:0000:0000:0000:ffff:7f00:0001', h).ip).toBe('1.2.3.4');
    expect(clientView(trust, '8.8.8.8', h)).toEqual({ ip: '8.8.8.8', proto: 'http', host: 'internal:8080', viaProxy: false });
    expect(clientView(parseTrustProxy([]), '127.0.0.1', h).viaProxy).toBe(false);
    const fwd = { host: 'x', forwarded: 'for=6.6.6.6, for="[2001:db8::1]:4711";proto=https;host=up.example.org' };
    expect(clientView(trust, '127.0.0.1', fwd)).toEqual({ ip: '2001:db8::1', proto: 'https', host: 'up.example.org', viaProxy: true });
    // A client's own Forwarded header, passed through by a proxy that appends X-Forwarded-For, does not count.
    const both = { host: 'x', forwarded: 'for=9.9.9.9;host=evil.example;proto=https', 'x-forwarded-for': '1.2.3.4' };
    expect(clientView(trust, '127.0.0.1', both)).toEqual({ ip: '1.2.3.4', proto: 'http', host: 'x', viaProxy: true });
    expect(normalizeIp('::ffff:127.0.0.1')).toBe('127.0.0.1');
    expect(() => parseTrustProxy(['not-an-ip'])).toThrow();
  });

  it('takes a forwarded host only when it is a plain host and port: it goes into the absolute URLs of the reply', () => {
    const trust = parseTrustProxy(['127.0.0.1']);
    for (const fhost of ['evil.example/x?', 'user@evil.example', 'a b', 'evil.example#', '"quoted"']) {
      expect(clientView(trust, '127.0.0.1', { host: 'files.example.com', 'x-forwarded-host': fhost }).host, fhost).toBe('files.example.com');
      expect(clientView(trust, '127.0.0.1', { host: 'files.example.com', forwarded: `for=1.2.3.4;host="${fhost}"` }).host, fhost).toBe('files.example.com');
    }
    expect(clientView(trust, '127.0.0.1', { host: 'files.example.com', 'x-forwarded-host': 'up.example.com:8443' }).host).toBe('up.example.com:8443');
  });

  it('builds absolute URLs from forwarded headers when the peer is trusted, and ignores them otherwise', async () => {
    const headers = { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'uploads.example.com' };
    server = await startServer({ trustProxy: ['127.0.0.1', '::1'] });
    const trusted = await initUpload(server.base, { fileName: 'a.bin', fileSize: 10 }, headers);
    const guid = trusted.json.data!.guid as string;
    expect(trusted.json.data!.location).toBe(`https://uploads.example.com${PREFIX}/upload-chunk?guid=${guid}`);
    expect(trusted.json.data!.webSocketUrl).toBe(`wss://uploads.example.com${PREFIX}/upload-chunk?guid=${guid}`);
    await server.close();
    server = await startServer();
    const untrusted = await initUpload(server.base, { fileName: 'a.bin', fileSize: 10 }, headers);
    const host = new URL(server.base).host;
    expect(untrusted.json.data!.location).toBe(`http://${host}${PREFIX}/upload-chunk?guid=${untrusted.json.data!.guid}`);
    expect(untrusted.json.data!.webSocketUrl).toMatch(/^ws:\/\//);
  });
});

describe('limits', () => {
  it('answers 429 with Retry-After past the per-user upload limit, and 503 past the global one', async () => {
    server = await startServer({ maxUploadsPerUser: 2, maxUploads: 3, tokens: { 'token-aaaaaaaa': 'a', 'token-bbbbbbbb': 'b' } });
    const a = { authorization: 'Bearer token-aaaaaaaa' };
    const b = { authorization: 'Bearer token-bbbbbbbb' };
    for (let i = 0; i < 2; i++) expect((await initUpload(server.base, { fileName: `a${i}`, fileSize: 10 }, a)).status).toBe(200);
    const third = await call(server.base, 'POST', `${PREFIX}/upload-chunk`, { action: 'init', fileName: 'a2', fileSize: 10 }, a);
    expect([third.status, third.json.code]).toEqual([429, 'ERR_RATE_LIMITED']);
    expect(third.headers.get('retry-after')).toBe('1');
    expect((await initUpload(server.base, { fileName: 'b0', fileSize: 10 }, b)).status).toBe(200);
    const full = await call(server.base, 'POST', `${PREFIX}/upload-chunk`, { action: 'init', fileName: 'b1', fileSize: 10 }, b);
    expect([full.status, full.json.code]).toEqual([503, 'ERR_SERVER_BUSY']);
    expect(full.headers.get('retry-after')).toBe('1');
  });

  it('holds the upload limits against a burst of concurrent inits (they count while being created)', async () => {
    server = await startServer({ maxUploadsPerUser: 3, maxUploads: 5 });
    const replies = await Promise.all(
      Array.from({ length: 30 }, (_, i) => call(server!.base, 'POST', `${PREFIX}/upload-chunk`, { action: 'init', fileName: `burst${i}`, fileSize: 10 })),
    );
    expect(replies.filter((r) => r.status === 200)).toHaveLength(3);
    expect(replies.filter((r) => r.status === 429 && r.json.code === 'ERR_RATE_LIMITED')).toHaveLength(27);
  });

  it('answers 429 when one user has too many chunk bytes in flight, and serves them once those finish', async () => {
    server = await startServer({ maxInFlightBytesPerUser: CS });
    const data = bytesOf(2 * CS);
    const init = await initUpload(server.base, { fileName: 'slow.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    // Hold chunk 0 open: half of its body, then wait.
    const ac = new AbortController();
    let push!: (b: Uint8Array | null) => void;
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        push = (b) => (b ? c.enqueue(b) : c.close());
      },
    });
    const slow = fetch(`${server.base}${PREFIX}/upload-chunk?guid=${guid}&chunk=0`, {
      method: 'PUT', body, duplex: 'half', signal: ac.signal, headers: { 'content-length': String(CS) },
    } as RequestInit);
    push(slice(data, CS, 0).subarray(0, CS / 2));
    await new Promise((r) => setTimeout(r, 150));
    const second = await putChunk(server.base, guid, 1, slice(data, CS, 1));
    expect([second.status, second.json.code]).toEqual([429, 'ERR_RATE_LIMITED']);
    push(slice(data, CS, 0).subarray(CS / 2));
    push(null);
    expect((await slow).status).toBe(200);
    const again = await putChunk(server.base, guid, 1, slice(data, CS, 1));
    expect(again.json.data).toMatchObject({ complete: true });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'slow.bin')), data)).toBe(0);
  });

  it('counts only open uploads against the upload limits: a completed or cancelled one frees its place', async () => {
    server = await startServer({ maxUploadsPerUser: 1, maxUploads: 1 });
    const empty = await initUpload(server.base, { fileName: 'empty.bin', fileSize: 0 }); // completes at init
    expect(empty.json.data).toMatchObject({ complete: true });
    const open = await initUpload(server.base, { fileName: 'one.bin', fileSize: 10 });
    expect(open.status).toBe(200);
    const full = await initUpload(server.base, { fileName: 'two.bin', fileSize: 10 });
    expect([full.status, full.json.code]).toEqual([503, 'ERR_SERVER_BUSY']);
    const guid = open.json.data!.guid as string;
    expect((await call(server.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${guid}`)).status).toBe(200);
    expect((await initUpload(server.base, { fileName: 'two.bin', fileSize: 10 })).status).toBe(200);
  });

  it('lets a user fill the in-flight limit exactly, and counts each user\'s chunk bytes apart from the others\'', async () => {
    const alice = { authorization: 'Bearer token-aaaaaaaa' };
    const bob = { authorization: 'Bearer token-bbbbbbbb' };
    server = await startServer({ maxInFlightBytesPerUser: 2 * CS, tokens: { 'token-aaaaaaaa': 'alice', 'token-bbbbbbbb': 'bob' } });
    const data = bytesOf(2 * CS);
    const big = bytesOf(2 * CS);
    const a = (await initUpload(server.base, { fileName: 'a.bin', fileSize: data.length, chunkSize: CS }, alice)).json.data!.guid as string;
    const b = (await initUpload(server.base, { fileName: 'b.bin', fileSize: big.length, chunkSize: 2 * CS }, bob)).json.data!.guid as string;
    // Alice's chunk 0 stays in flight (CS bytes reserved) until the rest of its body is pushed.
    let push!: (b: Uint8Array | null) => void;
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        push = (b) => (b ? c.enqueue(b) : c.close());
      },
    });
    const held = fetch(`${server.base}${PREFIX}/upload-chunk?guid=${a}&chunk=0`, {
      method: 'PUT', body, duplex: 'half', headers: { ...alice, 'content-length': String(CS) },
    } as RequestInit);
    push(slice(data, CS, 0).subarray(0, CS / 2));
    // The half body is held in memory once the chunk has started (and reserved its bytes): wait for that, bounded.
    for (let i = 0; ; i++) {
      const text = await (await fetch(`${server.base}/metrics`)).text();
      if (/^updraft_inflight_bytes [1-9]/m.test(text)) break;
      if (i === 200) throw new Error('chunk 0 never started');
      await new Promise((r) => setTimeout(r, 10));
    }
    // Bob has nothing in flight: his 2*CS chunk is his own, whatever Alice holds.
    const bobs = await putChunk(server.base, b, 0, big, bob);
    expect(bobs.json.data).toMatchObject({ complete: true });
    // Alice's second chunk brings her to exactly her limit: allowed.
    const second = await putChunk(server.base, a, 1, slice(data, CS, 1), alice);
    expect([second.status, second.json.code]).toEqual([200, undefined]);
    push(slice(data, CS, 0).subarray(CS / 2));
    push(null);
    expect((await held).status).toBe(200);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'a.bin')), data)).toBe(0);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'b.bin')), big)).toBe(0);
  });
});

describe('CORS', () => {
  it('answers preflights and adds headers for allowed origins only; credentials only when configured', async () => {
    server = await startServer({ allowedOrigins: ['https://app.example.com'] });
    const pre = await fetch(`${server.base}${PREFIX}/upload-chunk`, {
      method: 'OPTIONS',
      headers: { origin: 'https://app.example.com', 'access-control-request-method': 'PUT' },
    });
    expect(pre.status).toBe(204);
    expect(pre.headers.get('access-control-allow-origin')).toBe('https://app.example.com');
    expect(pre.headers.get('access-control-allow-methods')).toContain('PUT');
    expect(pre.headers.get('access-control-allow-headers')).toContain('Authorization');
    expect(pre.headers.get('access-control-allow-credentials')).toBeNull();
    const bad = await fetch(`${server.base}${PREFIX}/upload-chunk`, { method: 'OPTIONS', headers: { origin: 'https://evil.example' } });
    expect(bad.status).toBe(403);
    expect(bad.headers.get('access-control-allow-origin')).toBeNull();
    // No Origin: no preflight, and never refused; the methods of the route. Not a route: 404 like any method.
    const plain = await fetch(`${server.base}${PREFIX}/upload-status`, { method: 'OPTIONS' });
    expect([plain.status, plain.headers.get('allow'), plain.headers.get('access-control-allow-origin')]).toEqual([204, 'GET, HEAD, OPTIONS', null]);
    const elsewhere = await fetch(`${server.base}${PREFIX}/nope`, { method: 'OPTIONS', headers: { origin: 'https://app.example.com' } });
    expect(elsewhere.status).toBe(404);
    const init = await initUpload(server.base, { fileName: 'c.bin', fileSize: 1 }, { origin: 'https://app.example.com' });
    expect(init.headers.get('access-control-allow-origin')).toBe('https://app.example.com');
    expect(init.headers.get('vary')).toBe('Origin');
    const other = await initUpload(server.base, { fileName: 'd.bin', fileSize: 1 }, { origin: 'https://evil.example' });
    expect(other.status).toBe(403);
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
    await server.close();
    server = await startServer({ allowedOrigins: ['https://app.example.com'], corsCredentials: true });
    const cred = await initUpload(server.base, { fileName: 'e.bin', fileSize: 1 }, { origin: 'https://app.example.com' });
    expect(cred.headers.get('access-control-allow-credentials')).toBe('true');
  });
});

describe('Origin (cross-site requests carry the browser\'s cookies)', () => {
  it('refuses a POST, PUT or DELETE from a page of another origin that is not allowed; nothing is created, stored or cancelled', async () => {
    server = await startServer({ allowedOrigins: ['https://app.example.com'] });
    const port = new URL(server.base).port;
    const evil = { origin: 'https://evil.example' };
    const forbidden = { status: 'fail', code: 'ERR_FORBIDDEN_ORIGIN', message: 'Origin not allowed' };

    // An init as a form could send it (text/plain, no preflight): refused, and no upload made.
    const init = await call(server.base, 'POST', `${PREFIX}/upload-chunk`, JSON.stringify({ action: 'init', fileName: 'x.bin', fileSize: 10 }), { ...evil, 'content-type': 'text/plain' });
    expect([init.status, init.json]).toEqual([403, { ...forbidden, data: { retryable: false } }]);
    expect(await listFiles(server.dir, true)).toEqual([]);
    expect((await call(server.base, 'GET', '/healthz')).json.data).toMatchObject({ uploads: 0 });

    const data = bytesOf(2 * 1024);
    const ok = await initUpload(server.base, { fileName: 'o.bin', fileSize: data.length, chunkSize: 1024 });
    const guid = ok.json.data!.guid as string;
    const put = await putChunk(server.base, guid, 0, slice(data, 1024, 0), evil);
    expect([put.status, put.json.code]).toEqual([403, 'ERR_FORBIDDEN_ORIGIN']);
    const cancel = await call(server.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${guid}`, undefined, evil);
    expect([cancel.status, cancel.json.code]).toEqual([403, 'ERR_FORBIDDEN_ORIGIN']);
    const postCancel = await call(server.base, 'POST', `${PREFIX}/upload-chunk`, { action: 'cancel', guid }, evil);
    expect([postCancel.status, postCancel.json.code]).toEqual([403, 'ERR_FORBIDDEN_ORIGIN']);
    // A read changes nothing, and its reply carries no CORS header, so the page cannot read it: answered.
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`, undefined, evil);
    expect(st.json.data).toMatchObject({ uploadStatus: 'active', receivedChunks: 0 });
    expect(st.headers.get('access-control-allow-origin')).toBeNull();

    // Allowed: a listed origin; the server's own (Origin's host = Host); a browser's Sec-Fetch-Site: same-origin (a
    // proxy that rewrote Host); a client with no Origin at all.
    expect((await putChunk(server.base, guid, 0, slice(data, 1024, 0), { origin: 'https://app.example.com' })).status).toBe(200);
    expect((await putChunk(server.base, guid, 0, slice(data, 1024, 0), { origin: `http://127.0.0.1:${port}` })).status).toBe(200);
    const proxied = await putChunk(server.base, guid, 0, slice(data, 1024, 0), { origin: 'https://files.example.com', 'sec-fetch-site': 'same-origin' });
    expect(proxied.status).toBe(200);
    expect((await putChunk(server.base, guid, 0, slice(data, 1024, 0), { origin: 'https://files.example.com', 'sec-fetch-site': 'cross-site' })).status).toBe(403);
    const last = await putChunk(server.base, guid, 1, slice(data, 1024, 1));
    expect(last.json.data).toMatchObject({ complete: true });
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'o.bin')), data)).toBe(0);
  });

  it('takes only an http or https page as the server\'s own: another scheme naming the same host and port is refused', async () => {
    server = await startServer();
    const port = new URL(server.base).port;
    for (const scheme of ['ws', 'ftp', 'chrome-extension']) {
      const r = await initUpload(server.base, { fileName: `${scheme}.bin`, fileSize: 10 }, { origin: `${scheme}://127.0.0.1:${port}` });
      expect([r.status, r.json.code], scheme).toEqual([403, 'ERR_FORBIDDEN_ORIGIN']);
    }
    expect(await listFiles(server.dir, true)).toEqual([]);
    expect((await initUpload(server.base, { fileName: 'own.bin', fileSize: 10 }, { origin: `http://127.0.0.1:${port}` })).status).toBe(200);
  });
});

describe('free space between users', () => {
  it("one user's open uploads may reserve at most half of the free space (with tokens), so the others still get room", async () => {
    const alice = { authorization: 'Bearer tok-alice-1' };
    const bob = { authorization: 'Bearer tok-bob-123' };
    server = await startServer({ tokens: { 'tok-alice-1': 'alice', 'tok-bob-123': 'bob' } });
    const st = await fsp.statfs(server.dir);
    const free = st.bavail * st.bsize;
    const size = (f: number): number => Math.floor((free * f) / (64 * 1024 * 1024)) * 64 * 1024 * 1024; // whole 64 MiB chunks
    const init = (who: Record<string, string>, f: number, fileName: string) =>
      initUpload(server!.base, { fileName, fileSize: size(f), chunkSize: 64 * 1024 * 1024 }, who);
    // Staging files are sparse: these reservations take no space, which is why one user could hold it all.
    const big = await init(alice, 0.6, 'a0.bin');
    expect([big.status, big.json.code, big.json.message]).toEqual([507, 'ERR_INSUFFICIENT_STORAGE', 'Your open uploads would hold more than 50% of the free space; finish or cancel some first']);
    expect((await init(alice, 0.3, 'a1.bin')).status).toBe(200);
    expect((await init(alice, 0.3, 'a2.bin')).json.code).toBe('ERR_INSUFFICIENT_STORAGE'); // 0.6 together
    expect((await init(bob, 0.3, 'b1.bin')).status).toBe(200); // bob still has room
    await server.close();
    // One user (no tokens): the whole free space is theirs.
    server = await startServer();
    expect((await initUpload(server.base, { fileName: 'solo.bin', fileSize: size(0.6), chunkSize: 64 * 1024 * 1024 })).status).toBe(200);
  });

  it('an authenticate hook halves the share like tokens do (several users)', async () => {
    server = await startServer({ authenticate: (req) => (req.headers['authorization'] === 'Bearer hook-alice' ? 'alice' : null) });
    const st = await fsp.statfs(server.dir);
    const fileSize = Math.floor((st.bavail * st.bsize * 0.6) / (64 * 1024 * 1024)) * 64 * 1024 * 1024;
    const big = await initUpload(server.base, { fileName: 'a0.bin', fileSize, chunkSize: 64 * 1024 * 1024 }, { authorization: 'Bearer hook-alice' });
    expect([big.status, big.json.code, big.json.message]).toEqual([507, 'ERR_INSUFFICIENT_STORAGE', 'Your open uploads would hold more than 50% of the free space; finish or cancel some first']);
  });

  it("counts another user's inits still being created against the free space, not against this user's share", async () => {
    const alice = { authorization: 'Bearer tok-alice-1' };
    const bob = { authorization: 'Bearer tok-bob-123' };
    let entered!: () => void;
    const inHook = new Promise<void>((r) => (entered = r));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    server = await startServer({
      tokens: { 'tok-alice-1': 'alice', 'tok-bob-123': 'bob' },
      // Alice's init waits here, counted among the inits being created, until Bob's init has been answered.
      onUploadCreate: async (info) => {
        if (info.user !== 'alice') return;
        entered();
        await gate;
      },
    });
    const st = await fsp.statfs(server.dir);
    const free = st.bavail * st.bsize;
    const size = (f: number): number => Math.floor((free * f) / (64 * 1024 * 1024)) * 64 * 1024 * 1024;
    const init = (who: Record<string, string>, f: number, fileName: string) =>
      initUpload(server!.base, { fileName, fileSize: size(f), chunkSize: 64 * 1024 * 1024 }, who);
    const pending = init(alice, 0.4, 'a.bin');
    await inHook;
    try {
      expect((await init(bob, 0.4, 'b.bin')).status).toBe(200); // 0.4 of his own, beside Alice's 0.4 being created
      // Together with both, a third 0.4 no longer fits the free space at all.
      const third = await init(bob, 0.3, 'b2.bin');
      expect([third.status, third.json.code]).toEqual([507, 'ERR_INSUFFICIENT_STORAGE']);
    } finally {
      release();
    }
    expect((await pending).status).toBe(200);
  });

  it('an init must fit beside what the open uploads still have to send (one user, the whole free space)', async () => {
    server = await startServer();
    const st = await fsp.statfs(server.dir);
    const fileSize = Math.floor((st.bavail * st.bsize * 0.6) / (64 * 1024 * 1024)) * 64 * 1024 * 1024;
    const init = (fileName: string) => initUpload(server!.base, { fileName, fileSize, chunkSize: 64 * 1024 * 1024 });
    expect((await init('first.bin')).status).toBe(200);
    const second = await init('second.bin');
    expect([second.status, second.json.code]).toEqual([507, 'ERR_INSUFFICIENT_STORAGE']);
    expect(second.json.message).not.toMatch(/Your open uploads/); // the free space itself, not a user's share
  });
});

describe('DNS rebinding (a name made to resolve to this server passes as same-origin)', () => {
  /** An init as a rebinding page sends it: Origin and Host name the attacker's host, the socket reaches this server. */
  const rebound = (base: string, extra: Record<string, string> = {}): Promise<number> => reboundReply(base, extra).then((r) => r.status);
  const reboundReply = (base: string, extra: Record<string, string> = {}): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      const body = JSON.stringify({ action: 'init', fileName: 'r.bin', fileSize: 10 });
      const req = http.request(`${base}${PREFIX}/upload-chunk`, {
        method: 'POST',
        headers: { host: 'attacker.example:8080', origin: 'http://attacker.example:8080', 'content-type': 'text/plain', 'content-length': String(body.length), ...extra },
      });
      req.on('response', (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      });
      req.on('error', reject);
      req.end(body);
    });

  it('without authentication, a page is the server\'s own only on an address or localhost; a listed origin or tokens lift that', async () => {
    server = await startServer();
    // The operator sees why, and what to do, in the page that was refused.
    const refused = await reboundReply(server.base);
    expect(refused.status).toBe(403);
    expect(JSON.parse(refused.body)).toMatchObject({
      code: 'ERR_FORBIDDEN_ORIGIN',
      message: 'Origin not allowed: a server without tokens takes a page as its own only on an IP address or localhost; allow http://attacker.example:8080 with --allowed-origin (allowedOrigins)',
    });
    expect(await rebound(server.base, { 'sec-fetch-site': 'same-origin' })).toBe(403);
    expect(await listFiles(server.dir, true)).toEqual([]);
    for (const host of ['localhost:8080', 'app.localhost:8080', '127.0.0.1:8080', '[::1]:8080']) {
      expect(await rebound(server.base, { host, origin: `http://${host}` }), host).toBe(200);
    }
    await server.close();
    server = await startServer({ allowedOrigins: ['http://attacker.example:8080'] }); // a name the operator lists
    expect(await rebound(server.base)).toBe(200);
    await server.close();
    server = await startServer({ tokens: { 'tok-12345678': 'alice' } }); // the page has no token to send
    expect(await rebound(server.base, { authorization: 'Bearer tok-12345678' })).toBe(200);
    expect(await rebound(server.base)).toBe(401);
  });

  it('an authenticate hook lifts the rule as tokens do: the rebinding page has no credentials to send', async () => {
    server = await startServer({ authenticate: (req) => (req.headers['authorization'] === 'Bearer hook-secret-1' ? 'alice' : null) });
    expect(await rebound(server.base, { authorization: 'Bearer hook-secret-1' })).toBe(200);
    expect(await rebound(server.base)).toBe(401);
  });
});

describe('demo page', () => {
  it('answers HEAD on its routes with the GET headers and no body', async () => {
    server = await startServer({ demo: true });
    for (const route of ['/', '/updraft-client.js']) {
      const get = await fetch(`${server.base}${route}`);
      const body = Buffer.from(await get.arrayBuffer());
      const head = await fetch(`${server.base}${route}`, { method: 'HEAD' });
      expect(head.status, route).toBe(get.status);
      expect(head.headers.get('content-type'), route).toBe(get.headers.get('content-type'));
      expect(head.headers.get('etag'), route).toBe(get.headers.get('etag'));
      expect(Number(head.headers.get('content-length')), route).toBe(body.length);
      expect((await head.arrayBuffer()).byteLength, route).toBe(0);
      // A cached copy is confirmed by its tag, also when a proxy made it weak, or in a list.
      const etag = get.headers.get('etag')!;
      for (const inm of [etag, `W/${etag}`, `"other", ${etag}`, '*']) {
        expect((await fetch(`${server.base}${route}`, { headers: { 'if-none-match': inm } })).status, inm).toBe(304);
      }
      expect((await fetch(`${server.base}${route}`, { headers: { 'if-none-match': '"other"' } })).status).toBe(200);
    }
  });
});

describe('metrics', () => {
  it('exposes Prometheus text with upload counters, bytes and latency histograms', async () => {
    server = await startServer();
    const data = bytesOf(3 * CS);
    const init = await initUpload(server.base, { fileName: 'm.bin', fileSize: data.length, chunkSize: CS });
    await putChunks(server.base, init.json.data!.guid, data, CS, [0, 1, 2]);
    await call(server.base, 'GET', '/nope');
    const text = await (await fetch(`${server.base}/metrics`)).text();
    expect(text).toMatch(/updraft_errors_total\{code="ERR_NOT_FOUND"\} 1/);
    expect(text).toMatch(/updraft_process_resident_memory_bytes \d+/);
    expect(text).toMatch(/updraft_uploads_total\{event="created"\} 1/);
    expect(text).toMatch(/updraft_uploads_total\{event="completed"\} 1/);
    expect(text).toMatch(new RegExp(`updraft_bytes_written_total ${3 * CS}`));
    expect(text).toMatch(new RegExp(`updraft_bytes_received_total ${3 * CS}`));
    expect(text).toMatch(/updraft_chunk_write_seconds_count 3/);
    expect(text).toMatch(/updraft_fsync_seconds_count [1-9]/);
    for (const name of ['updraft_uploads_active', 'updraft_worker_queue_depth', 'updraft_inflight_bytes', 'updraft_websocket_connections', 'updraft_event_loop_delay_seconds']) {
      expect(text).toContain(name);
    }
  });

  it('requires the metrics token when one is set', async () => {
    server = await startServer({ metricsToken: 'metrics-secret-1' });
    expect((await fetch(`${server.base}/metrics`)).status).toBe(401);
    const ok = await fetch(`${server.base}/metrics`, { headers: { authorization: 'Bearer metrics-secret-1' } });
    expect(ok.status).toBe(200);
    expect(await ok.text()).toContain('updraft_uploads_total');
    // The scheme is case-insensitive, as on the API routes; a wrong token is still refused.
    expect((await fetch(`${server.base}/metrics`, { headers: { authorization: 'bearer metrics-secret-1' } })).status).toBe(200);
    expect((await fetch(`${server.base}/metrics`, { headers: { authorization: 'Bearer metrics-secret-2' } })).status).toBe(401);
  });
});

describe('hooks and events', () => {
  it('onUploadCreate can refuse with its own code and message, or choose the folder and name', async () => {
    const seen: unknown[] = [];
    server = await startServer({
      onUploadCreate: (info) => {
        seen.push(info);
        if (info.fileName.endsWith('.exe')) throw new UploadError('ERR_UPLOAD_REFUSED', 'Executables are not accepted here');
        if (info.fileName === 'boom') throw new Error('database down at /internal/secret/path');
        return { targetPath: `users/${info.user}`, fileName: `2026-${info.fileName}` };
      },
    });
    const refused = await initUpload(server.base, { fileName: 'x.exe', fileSize: 10 });
    expect([refused.status, refused.json.code, refused.json.message]).toEqual([403, 'ERR_UPLOAD_REFUSED', 'Executables are not accepted here']);
    const boom = await initUpload(server.base, { fileName: 'boom', fileSize: 10 });
    expect([boom.status, boom.json.code]).toEqual([403, 'ERR_UPLOAD_REFUSED']);
    expect(JSON.stringify(boom.json)).not.toContain('/internal');
    const data = bytesOf(10);
    const ok = await initUpload(server.base, { fileName: 'report.pdf', fileSize: 10, targetPath: 'ignored' });
    expect(ok.json.data!.fileName).toBe('2026-report.pdf');
    await putChunk(server.base, ok.json.data!.guid, 0, data);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'users', 'anonymous', '2026-report.pdf')), data)).toBe(0);
    expect(seen[2]).toMatchObject({ user: 'anonymous', fileName: 'report.pdf', fileSize: 10, targetPath: 'ignored', clientIp: '127.0.0.1' });
    // A placement is validated like client input.
    await server.close();
    server = await startServer({ onUploadCreate: () => ({ targetPath: '../escape' }) });
    const esc = await initUpload(server.base, { fileName: 'a', fileSize: 1 });
    expect([esc.status, esc.json.code]).toEqual([400, 'ERR_INVALID_TARGET_PATH']);
  });

  it('onUploadComplete runs with the file durable in place, before the client hears complete', async () => {
    let sawFile: Buffer | null = null;
    server = await startServer({
      onUploadComplete: async (info) => {
        sawFile = await fsp.readFile(info.path);
      },
    });
    const data = bytesOf(2 * CS + 3);
    const init = await initUpload(server.base, { fileName: 'hooked.bin', fileSize: data.length, chunkSize: CS });
    const replies = await putChunks(server.base, init.json.data!.guid, data, CS, [2, 0, 1], 1);
    expect(replies[2]!.json.data).toMatchObject({ complete: true, fileName: 'hooked.bin' });
    expect(sawFile).not.toBeNull();
    expect(Buffer.compare(sawFile!, data)).toBe(0);
  });

  it('a failing onUploadComplete fails the completion cleanly: file removed, client told, status failed', async () => {
    server = await startServer({
      onUploadComplete: (info) => {
        if (info.fileName.startsWith('virus')) throw new UploadError('ERR_UPLOAD_REFUSED', 'Malware found');
        throw new Error('scanner crashed');
      },
    });
    for (const [name, code, status] of [['virus.bin', 'ERR_UPLOAD_REFUSED', 403], ['plain.bin', 'ERR_HOOK_FAILED', 500]] as const) {
      const init = await initUpload(server.base, { fileName: name, fileSize: 10 });
      const guid = init.json.data!.guid as string;
      const r = await putChunk(server.base, guid, 0, bytesOf(10));
      expect([r.status, r.json.code]).toEqual([status, code]);
      const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
      expect(st.json.data).toMatchObject({ uploadStatus: 'failed' });
    }
    expect(await listFiles(server.dir)).toEqual([]);
  });

  it('emits created, chunk, completed and cancelled events', async () => {
    server = await startServer();
    const events: string[] = [];
    server.engine.on('created', (i) => events.push(`created ${i.fileName}`));
    server.engine.on('chunk', (c) => events.push(`chunk ${c.chunk}/${c.totalChunks} ${c.size}`));
    server.engine.on('completed', (i) => events.push(`completed ${i.finalName}`));
    server.engine.on('cancelled', (i) => events.push(`cancelled ${i.fileName}`));
    const data = bytesOf(CS + 1);
    const init = await initUpload(server.base, { fileName: 'ev.bin', fileSize: data.length, chunkSize: CS });
    await putChunks(server.base, init.json.data!.guid, data, CS, [0, 1], 1);
    const c = await initUpload(server.base, { fileName: 'gone.bin', fileSize: 5 });
    await call(server.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${c.json.data!.guid}`);
    expect(events).toEqual(['created ev.bin', `chunk 0/2 ${CS}`, 'chunk 1/2 1', 'completed ev.bin', 'created gone.bin', 'cancelled gone.bin']);
  });
});

describe('embedding', () => {
  it('attach() mounts the upload routes beside the host app\'s own routes', async () => {
    const dir = await tempDir();
    const app = uWS.App();
    app.get('/hello', (res) => {
      res.end('host route');
    });
    const engine = createUploadEngine({ dir, logLevel: 'silent', workers: 2 });
    await engine.attach(app);
    const socket = await new Promise<uWS.us_listen_socket | false>((r) => app.listen('127.0.0.1', 0, r));
    expect(socket).not.toBe(false);
    const base = `http://127.0.0.1:${uWS.us_socket_local_port(socket as uWS.us_listen_socket)}`;
    try {
      expect(await (await fetch(`${base}/hello`)).text()).toBe('host route');
      const data = bytesOf(100);
      const init = await initUpload(base, { fileName: 'attached.bin', fileSize: 100 });
      const r = await putChunk(base, init.json.data!.guid, 0, data);
      expect(r.json.data).toMatchObject({ complete: true });
      expect(Buffer.compare(await fsp.readFile(path.join(dir, 'attached.bin')), data)).toBe(0);
    } finally {
      uWS.us_listen_socket_close(socket as uWS.us_listen_socket);
      await engine.close();
    }
  });

  it('two engines attach to one app with prefixes of their own; a third on a taken prefix is refused (uWS aborted on either)', async () => {
    const app = uWS.App();
    const engines = [
      createUploadEngine({ dir: await tempDir(), prefix: '/a', logLevel: 'silent', workers: 1 }),
      createUploadEngine({ dir: await tempDir(), prefix: '/b', logLevel: 'silent', workers: 1 }),
    ];
    for (const e of engines) await e.attach(app);
    const third = createUploadEngine({ dir: await tempDir(), prefix: '/a', logLevel: 'silent', workers: 1 });
    await expect(third.attach(app)).rejects.toThrow('another engine attached to this app already serves the prefix /a');
    const socket = await new Promise<uWS.us_listen_socket | false>((r) => app.listen('127.0.0.1', 0, r));
    expect(socket).not.toBe(false);
    const base = `http://127.0.0.1:${uWS.us_socket_local_port(socket as uWS.us_listen_socket)}`;
    try {
      for (const [i, prefix] of ['/a', '/b'].entries()) {
        const data = bytesOf(100 + i);
        const init = await call(base, 'POST', `${prefix}/upload-chunk`, { action: 'init', fileName: `f${i}.bin`, fileSize: data.length });
        const guid = init.json.data!.guid as string;
        const r = await call(base, 'PUT', `${prefix}/upload-chunk?guid=${guid}&chunk=0`, data);
        expect(r.json.data).toMatchObject({ complete: true });
        expect(Buffer.compare(await fsp.readFile(path.join(engines[i]!.options.dir, `f${i}.bin`)), data)).toBe(0);
      }
      expect((await fetch(`${base}/healthz`)).status).toBe(200); // the first engine's
    } finally {
      uWS.us_listen_socket_close(socket as uWS.us_listen_socket);
      for (const e of engines) await e.close();
    }
  });

  it('attach() leaves the host its own catch-all: the engine adds no route outside its prefix but /healthz and /metrics', async () => {
    const dir = await tempDir();
    const app = uWS.App();
    // A host catch-all registered after the engine's routes: uWS aborted the process on the duplicate '/*'.
    const engine = createUploadEngine({ dir, logLevel: 'silent', workers: 2 });
    await engine.attach(app);
    app.any('/*', (res) => {
      res.writeStatus('418 I\'m a teapot').end('host fallback');
    });
    const socket = await new Promise<uWS.us_listen_socket | false>((r) => app.listen('127.0.0.1', 0, r));
    const base = `http://127.0.0.1:${uWS.us_socket_local_port(socket as uWS.us_listen_socket)}`;
    try {
      const other = await fetch(`${base}/app/page`, { method: 'DELETE' });
      expect([other.status, await other.text()]).toEqual([418, 'host fallback']);
      // Under the prefix the engine still answers an unknown route itself.
      for (const route of [`${PREFIX}/nope`, PREFIX]) {
        const r = await call(base, 'GET', route);
        expect([r.status, r.json.code], route).toEqual([404, 'ERR_NOT_FOUND']);
      }
      expect((await fetch(`${base}/healthz`)).status).toBe(200);
      expect((await call(base, 'GET', `${PREFIX}/upload-status?guid=nope`)).json.code).toBe('ERR_UPLOAD_NOT_FOUND');
    } finally {
      uWS.us_listen_socket_close(socket as uWS.us_listen_socket);
      await engine.close();
    }
  });

  it('one app per engine: a second listen(), or one after close(), is refused and leaves nothing serving', async () => {
    const dir = await tempDir();
    const engine = createUploadEngine({ dir, logLevel: 'silent', workers: 2 });
    const [first, second] = await Promise.allSettled([engine.listen(0, '127.0.0.1'), engine.listen(0, '127.0.0.1')]);
    expect(first.status).toBe('fulfilled');
    expect(second).toMatchObject({ status: 'rejected', reason: { message: 'engine is already attached to an app' } });
    const { url } = (first as PromiseFulfilledResult<{ url: string }>).value;
    await engine.close();
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();
    await expect(engine.listen(0, '127.0.0.1')).rejects.toThrow('engine is closed');
    // attach() with the demo on, closed while it mounts: nothing is mounted on the host's app.
    const host = uWS.App();
    const attaching = createUploadEngine({ dir: await tempDir(), logLevel: 'silent', workers: 2, demo: true });
    const attached = attaching.attach(host);
    await attaching.close();
    await expect(attached).rejects.toThrow('engine is closed');
    host.any('/*', (res) => void res.writeStatus('418 I\'m a teapot').end('host'));
    const hostSocket = await new Promise<uWS.us_listen_socket | false>((r) => host.listen('127.0.0.1', 0, r));
    try {
      const page = await fetch(`http://127.0.0.1:${uWS.us_socket_local_port(hostSocket as uWS.us_listen_socket)}/`);
      expect(page.status).toBe(418);
    } finally {
      uWS.us_listen_socket_close(hostSocket as uWS.us_listen_socket);
    }
    // A close() racing the start of listen(): the listen is refused rather than opening a socket nothing stops.
    const racing = createUploadEngine({ dir: await tempDir(), logLevel: 'silent', workers: 2, demo: true });
    const listening = racing.listen(0, '127.0.0.1');
    await racing.close();
    await expect(listening).rejects.toThrow('engine is closed');
    // The root is free again: another engine starts on it.
    const next = createUploadEngine({ dir, logLevel: 'silent', workers: 2 });
    await next.listen(0, '127.0.0.1');
    await next.close();
  });

  it('prefaults the whole in-flight budget in a worker at start (prefault, default on), beside uploads sent at once', async () => {
    const started = async (options: { prefault?: boolean }): Promise<Array<Record<string, unknown>>> => {
      const lines: Array<Record<string, unknown>> = [];
      const logger = pino({ level: 'debug' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
      server = await startServer({ logger, maxInFlightBytes: 8 * 1024 * 1024, batchSize: CS, ...options });
      // An upload at once, while the worker may still be walking the pages the copies go into: every byte lands.
      const data = bytesOf(5 * CS + 17);
      const init = await initUpload(server.base, { fileName: 'early.bin', fileSize: data.length, chunkSize: 2 * CS });
      const replies = await putChunks(server.base, init.json.data!.guid as string, data, 2 * CS, [2, 0, 1], 3);
      expect(replies.map((r) => r.status)).toEqual([200, 200, 200]);
      expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'early.bin')), data)).toBe(0);
      await server.close();
      server = null;
      return lines.filter((l) => l.msg === 'slab budget prefaulted');
    };
    const on = await started({ prefault: undefined }); // the engine's default (the fixture's is off)
    expect(on).toHaveLength(1);
    expect(on[0]).toMatchObject({ pages: (8 * 1024 * 1024) / 4096 });
    expect(await started({ prefault: false })).toEqual([]);
  });

  it('takes any batchSize the options allow, and chunk-size defaults that follow the limits given', async () => {
    // Slabs larger than the 16 MiB arena threw a RangeError from the constructor.
    await createUploadEngine({ dir: await tempDir(), batchSize: 32 * 1024 * 1024, logLevel: 'silent', workers: 1 }).close();
    expect(resolveOptions({ maxChunkSize: 512 })).toMatchObject({ minChunkSize: 512, chunkSize: 512, maxChunkSize: 512 });
    expect(resolveOptions({ minChunkSize: 16 * 1024 * 1024 })).toMatchObject({ chunkSize: 16 * 1024 * 1024 });
    expect(resolveOptions({ chunkSize: 512 })).toMatchObject({ minChunkSize: 512, chunkSize: 512 });
    expect(() => resolveOptions({ chunkSize: 512, minChunkSize: 1024 })).toThrow('invalid option chunkSize');
    // uWS closes a body that stalls for 10 s itself, without a reply: a longer idle timeout could never answer.
    expect(resolveOptions({ bodyIdleTimeout: 10_000 }).bodyIdleTimeout).toBe(10_000);
    expect(() => resolveOptions({ bodyIdleTimeout: 10_001 })).toThrow('invalid option bodyIdleTimeout');
  });

  it('refuses options that would silently not mean what they say (plain-JS embedders have no types to catch them)', () => {
    const refused: Array<[Record<string, unknown>, string]> = [
      [{ onUploadCompleted: () => {} }, 'invalid option onUploadCompleted: unknown option'], // a typo: the hook would never run
      [{ metrics: 'false' }, 'invalid option metrics: expected true or false, got "false"'], // read as true
      [{ directIo: 'false' }, 'invalid option directIo'],
      [{ prefault: 'false' }, 'invalid option prefault'],
      [{ demo: 'yes' }, 'invalid option demo'],
      [{ corsCredentials: 1 }, 'invalid option corsCredentials'],
      [{ host: 0 }, 'invalid option host: expected a host name or IP address, got 0'], // bound 127.0.0.1 instead
      [{ host: ['0.0.0.0'] }, 'invalid option host'],
      [{ dir: 42 }, 'invalid option dir: expected a folder path, got 42'],
      [{ tokens: { 'tok-12345678': 7 } }, 'invalid option tokens'],
      [{ tokens: ['tok-12345678'] }, 'invalid option tokens'],
      [{ allowedOrigins: ['https://*.example.com'] }, 'invalid option allowedOrigins: wildcards inside an origin are not supported'],
      [{ logger: console }, 'invalid option logger: expected a pino logger'], // no fatal() or child(): the engine would throw later
      [{ maxReservedShare: 0 }, 'invalid option maxReservedShare: expected a number above 0 and at most 1, got 0'],
      [{ maxReservedShare: 1.5 }, 'invalid option maxReservedShare'],
    ];
    for (const [o, message] of refused) expect(() => resolveOptions(o as never), JSON.stringify(o)).toThrow(message);
    expect(resolveOptions({ metrics: false, directIo: false, demo: true, host: '::1' })).toMatchObject({ metrics: false, directIo: false, demo: true, host: '::1' });
    const logger = pino({ level: 'silent' });
    expect(resolveOptions({ logger }).logger).toBe(logger);
  });
});

/** A WebSocket upgrade request by hand (fetch cannot send one): the status and headers of a refusal. */
function refusedUpgrade(base: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}${path}`, {
      headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==', 'sec-websocket-version': '13', ...headers },
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('upgrade', (_res, socket) => {
      socket.destroy();
      reject(new Error('the upgrade was accepted'));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('request ids and logs', () => {
  it('echoes a sane X-Request-Id and makes one up otherwise', async () => {
    server = await startServer();
    const given = await call(server.base, 'GET', '/nope', undefined, { 'x-request-id': 'abc-123' });
    expect(given.headers.get('x-request-id')).toBe('abc-123');
    const made = await call(server.base, 'GET', '/nope', undefined, { 'x-request-id': 'bad id with spaces' });
    expect(made.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    // A refused WebSocket upgrade and /metrics carry it too, and the refusal is counted like any error reply.
    const refused = await refusedUpgrade(server.base, `${PREFIX}/upload-chunk?guid=no-such-guid`, { 'x-request-id': 'ws-1' });
    expect(refused.status).toBe(404);
    expect(JSON.parse(refused.body)).toMatchObject({ status: 'fail', code: 'ERR_UPLOAD_NOT_FOUND' });
    expect(refused.headers['x-request-id']).toBe('ws-1');
    const metrics = await fetch(`${server.base}/metrics`, { headers: { 'x-request-id': 'scrape-7' } });
    expect(metrics.headers.get('x-request-id')).toBe('scrape-7');
    expect(await metrics.text()).toMatch(/updraft_errors_total\{code="ERR_UPLOAD_NOT_FOUND"\} 1/);
  });

  it('escapes control characters and caps client values before logging', () => {
    expect(logValue('a\nb\u0000c\u202e')).toBe('a\\u000ab\\u0000c\\u202e');
    const long = logValue('x'.repeat(1000), 10)!;
    expect(long.startsWith('xxxxxxxxxx…')).toBe(true);
    expect(long).toContain('1000 chars');
  });
});
