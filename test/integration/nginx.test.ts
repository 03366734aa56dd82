/**
 * Updraft behind a real nginx (issue 6, "Behind nginx"), configured by examples/nginx/updraft.conf itself: only the
 * ports, the listen address and the certificate paths are replaced. Uploads go through the proxy over PUT and both
 * WebSocket protocols, one of them 256 MiB, and every byte is compared; init replies must carry the proxy's scheme
 * and host; forwarded headers a client makes up must not count, through the proxy or around it.
 *
 * Skipped, with a message saying so, where nginx is not installed (CI installs it: `.ci/run`).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeServerFrame, encodeFramePrefix } from '../../src/protocol/codec.js';
import type { ServerMessage } from '../../src/protocol/messages.js';
import { EXAMPLES, NGINX, NGINX_MISSING, OPENSSL, renderSite, selfSignedCert, startNginx } from '../fixtures/nginx.js';
import type { Nginx } from '../fixtures/nginx.js';
import { PREFIX, bytesOf, call, initUpload, putChunks, sha256, shuffled, startServer } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';
import { TestSocket } from '../fixtures/ws-client.js';
import { uploadPs, uploadV1 } from '../fixtures/ws-upload.js';

const MiB = 1024 * 1024;
/** The client in the forwarded-address checks connects from here: a loopback address that is not the proxy's. */
const OTHER_LOOPBACK = '127.0.0.2';
/** Short, so the idle WebSocket check below outlives it in a few seconds. */
const WS_IDLE_TIMEOUT = 8;

let updraft: TestServer;
let nginx: Nginx;
let plain = ''; // http://127.0.0.1:<port> of nginx
let tls = ''; // https://127.0.0.1:<port> of nginx ('' without openssl)
let ca: Buffer | undefined;
/** clientIp of every init, as the onUploadCreate hook saw it. */
const clientIps: string[] = [];

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  json: { status: string; message: string; code?: string; data?: Record<string, any> };
}

/** One request with node:http(s), for what fetch cannot do: a source address, a private CA. */
function request(
  url: string,
  o: { method?: string; headers?: Record<string, string>; body?: string; localAddress?: string; ca?: Buffer } = {},
): Promise<Reply> {
  const u = new URL(url);
  const mod = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(
      u,
      {
        method: o.method ?? 'GET',
        headers: { ...(o.body !== undefined ? { 'content-type': 'application/json' } : {}), ...o.headers },
        ...(o.localAddress ? { localAddress: o.localAddress } : {}),
        ...(o.ca ? { ca: o.ca } : {}),
        agent: false,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          try {
            resolve({ status: res.statusCode ?? 0, headers: res.headers, json: JSON.parse(text) });
          } catch {
            resolve({ status: res.statusCode ?? 0, headers: res.headers, json: { status: 'not json', message: text.slice(0, 200) } });
          }
        });
      },
    );
    req.on('error', reject);
    req.end(o.body);
  });
}

const initBody = (fileName: string, fileSize: number, chunkSize?: number): string =>
  JSON.stringify({ action: 'init', fileName, fileSize, ...(chunkSize ? { chunkSize } : {}) });

async function fileHash(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const piece of fs.createReadStream(file, { highWaterMark: 4 * MiB })) h.update(piece as Buffer);
  return h.digest('hex');
}

describe.skipIf(!NGINX)('behind nginx (examples/nginx/updraft.conf)', () => {
  beforeAll(async () => {
    updraft = await startServer({
      trustProxy: ['127.0.0.1'],
      wsIdleTimeout: WS_IDLE_TIMEOUT,
      onUploadCreate: (info) => void clientIps.push(info.clientIp),
    });
    const upstreamPort = new URL(updraft.base).port;
    nginx = await startNginx((ports, dir) => {
      const cert = OPENSSL ? selfSignedCert(dir) : null;
      const listen = [`listen 127.0.0.1:${ports[0]};`];
      if (cert) listen.push(`listen 127.0.0.1:${ports[1]} ssl;`);
      return renderSite('updraft.conf', [
        { from: 'server 127.0.0.1:8080;', to: `server 127.0.0.1:${upstreamPort};` },
        { from: 'listen 443 ssl;', to: listen.join('\n    ') },
        // Without openssl there is no certificate, and nginx would refuse to start on a missing one.
        { from: 'ssl_certificate     /etc/ssl/certs/uploads.example.com.pem;', to: cert ? `ssl_certificate ${cert.cert};` : '' },
        { from: 'ssl_certificate_key /etc/ssl/private/uploads.example.com.key;', to: cert ? `ssl_certificate_key ${cert.key};` : '' },
      ]);
    }, OPENSSL ? 2 : 1);
    plain = `http://127.0.0.1:${nginx.ports[0]}`;
    if (OPENSSL) {
      tls = `https://127.0.0.1:${nginx.ports[1]}`;
      ca = fs.readFileSync(path.join(nginx.dir, 'cert.pem'));
    }
  });

  afterAll(async () => {
    await nginx?.stop();
    await updraft?.close();
    if (updraft) await fsp.rm(updraft.dir, { recursive: true, force: true }); // 300 MiB of test files
  });

  it('streams a 256 MiB upload of 8 MiB chunks (PUT, 4 in flight, random order) through nginx, byte-exact', async () => {
    // An idle updraft.v1 connection through the proxy, held across the upload: the server's pings (every
    // WS_IDLE_TIMEOUT / 2 s of silence) pass nginx and the client's pongs keep it open past WS_IDLE_TIMEOUT.
    const small = bytesOf(3000);
    const idleInit = await initUpload(plain, { fileName: 'idle.bin', fileSize: small.length, chunkSize: 1024 });
    const idle = await TestSocket.open(plain, idleInit.json.data!.guid, { protocols: ['updraft.v1'] });
    const openedAt = Date.now();
    const hello = await idle.nextFrame();
    expect(hello.t).toBe('hello');

    const CS = 8 * MiB;
    const data = bytesOf(256 * MiB);
    const init = await initUpload(plain, { fileName: 'big.bin', fileSize: data.length, chunkSize: CS, targetPath: 'via-nginx' });
    expect(init.status, JSON.stringify(init.json)).toBe(200);
    const guid = init.json.data!.guid as string;
    const replies = await putChunks(plain, guid, data, CS, shuffled([...Array(32).keys()], 6), 4);
    for (const r of replies) expect(r.status, JSON.stringify(r.json)).toBe(200);
    expect(replies.filter((r) => r.json.message === 'Upload completed successfully')).toHaveLength(1);
    expect(await fileHash(path.join(updraft.dir, 'via-nginx', 'big.bin'))).toBe(sha256(data));
    // proxy_request_buffering off: nginx never spooled a body to a temporary file (it logs a warning when it does).
    expect(nginx.errorLog()).not.toMatch(/buffered to a temporary file/);

    const wait = WS_IDLE_TIMEOUT * 1000 + 2000 - (Date.now() - openedAt);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    expect(idle.log.some((m) => 'close' in m)).toBe(false);
    const done = await uploadV1(plain, idleInit.json.data!.guid, small, { socket: { socket: idle, hello } });
    expect(done).toMatchObject({ fileName: 'idle.bin', size: small.length, closeCode: 1000 });
  });

  it('uploads over updraft.v1 and PSWebHost WebSockets through nginx, byte-exact', async () => {
    const data = bytesOf(40 * MiB + 12345);
    const CS = 2 * MiB;
    const init = await initUpload(plain, { fileName: 'native.bin', fileSize: data.length, chunkSize: CS });
    const total = init.json.data!.totalChunks as number;
    // A browser on the proxy's origin: nginx passes Host with its port, so Updraft sees the same origin.
    const v1 = await uploadV1(plain, init.json.data!.guid, data, { order: shuffled([...Array(total).keys()], 2), origin: plain });
    expect(v1).toMatchObject({ fileName: 'native.bin', size: data.length, closeCode: 1000 });
    expect(new Set(v1.acked).size).toBe(total);
    expect(Buffer.compare(fs.readFileSync(path.join(updraft.dir, 'native.bin')), data)).toBe(0);

    const ps = bytesOf(12 * MiB + 7);
    const PCS = MiB;
    const psInit = await initUpload(plain, { fileName: 'pswebhost.bin', fileSize: ps.length, chunkSize: PCS });
    const psTotal = psInit.json.data!.totalChunks as number;
    const r = await uploadPs(plain, psInit.json.data!.guid, ps, PCS, { order: shuffled([...Array(psTotal).keys()], 4) });
    expect(r).toMatchObject({ fileName: 'pswebhost.bin', size: ps.length, closeCode: 1000 });
    expect(Buffer.compare(fs.readFileSync(path.join(updraft.dir, 'pswebhost.bin')), ps)).toBe(0);
  });

  it("returns URLs with the proxy's scheme and host, whatever forwarded headers the client sends", async () => {
    const spoof = { 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https', forwarded: 'for=6.6.6.6;proto=https;host=evil.example' };
    const r = await request(`${plain}${PREFIX}/upload-chunk`, { method: 'POST', headers: spoof, body: initBody('plain.bin', 10) });
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    const { guid, uploadUrl, location, webSocketUrl } = r.json.data!;
    const host = new URL(plain).host;
    expect(location).toBe(`http://${host}${uploadUrl}`);
    expect(webSocketUrl).toBe(`ws://${host}${uploadUrl}`);
    expect(uploadUrl).toBe(`${PREFIX}/upload-chunk?guid=${guid}`);
    // nginx's $request_id (32 hex digits) became Updraft's request id; a client's own X-Request-Id was replaced.
    expect(r.headers['x-request-id']).toMatch(/^[0-9a-f]{32}$/);
    const asked = await call(plain, 'GET', `${PREFIX}/upload-status?guid=${guid}`, undefined, { 'x-request-id': 'client-chosen' });
    expect(asked.headers.get('x-request-id')).toMatch(/^[0-9a-f]{32}$/);
  });

  it.skipIf(!OPENSSL)('behind TLS: https:// and wss:// URLs, and the wss:// URL works', async () => {
    const data = bytesOf(5000);
    const r = await request(`${tls}${PREFIX}/upload-chunk`, {
      method: 'POST',
      ca: ca!,
      headers: { 'x-forwarded-proto': 'http' },
      body: initBody('tls.bin', data.length, 4096),
    });
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    const host = new URL(tls).host;
    const { uploadUrl, location, webSocketUrl } = r.json.data!;
    expect(location).toBe(`https://${host}${uploadUrl}`);
    expect(webSocketUrl).toBe(`wss://${host}${uploadUrl}`);

    // The URL as returned, over TLS through nginx, native protocol: two chunks, then complete.
    const ws = new WebSocket(webSocketUrl, ['updraft.v1'], { ca: ca! });
    const inbox: ServerMessage[] = [];
    const waiting: Array<(m: ServerMessage) => void> = [];
    ws.on('message', (d: Buffer) => {
      const m = decodeServerFrame(d);
      const w = waiting.shift();
      if (w) w(m);
      else inbox.push(m);
    });
    const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
    const nextFrame = (): Promise<ServerMessage> =>
      inbox.length > 0 ? Promise.resolve(inbox.shift()!) : new Promise((resolve) => waiting.push(resolve));
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    expect((await nextFrame()).t).toBe('hello');
    const seen: string[] = [];
    // One chunk at a time: the hello's window is 1 (slow start).
    for (const c of [1, 0]) {
      const bytes = data.subarray(c * 4096, Math.min(data.length, (c + 1) * 4096));
      ws.send(Buffer.concat([encodeFramePrefix({ t: 'chunk', c }), bytes]));
      for (let i = 0; i < 8 && seen.at(-1) !== 'ack'; i++) seen.push((await nextFrame()).t);
      expect(seen.at(-1)).toBe('ack');
    }
    for (let i = 0; i < 8 && !seen.includes('complete'); i++) seen.push((await nextFrame()).t);
    expect(seen).toContain('complete');
    expect(await closed).toBe(1000);
    expect(Buffer.compare(fs.readFileSync(path.join(updraft.dir, 'tls.bin')), data)).toBe(0);
  });

  it('takes the client address from the rightmost hop nginx added, not from what the client wrote', async () => {
    clientIps.length = 0;
    // From 127.0.0.2 through nginx: X-Forwarded-For becomes "203.0.113.9, 127.0.0.2"; 127.0.0.2 is not a trusted
    // proxy, so it is the client, and the entry the client wrote is never reached.
    const viaProxy = await request(`${plain}${PREFIX}/upload-chunk`, {
      method: 'POST',
      localAddress: OTHER_LOOPBACK,
      headers: { 'x-forwarded-for': '203.0.113.9' },
      body: initBody('addr.bin', 10),
    });
    expect(viaProxy.status, JSON.stringify(viaProxy.json)).toBe(200);
    expect(clientIps).toEqual([OTHER_LOOPBACK]);
  });

  it('ignores forwarded headers sent straight to Updraft from an untrusted peer', async () => {
    clientIps.length = 0;
    // Same engine, but the socket peer is 127.0.0.2, which is not in trustProxy: every forwarded header is ignored.
    const spoof = { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https', forwarded: 'for=6.6.6.6;proto=https;host=evil.example' };
    const r = await request(`${updraft.base}${PREFIX}/upload-chunk`, { method: 'POST', localAddress: OTHER_LOOPBACK, headers: spoof, body: initBody('direct.bin', 10) });
    expect(r.status, JSON.stringify(r.json)).toBe(200);
    const host = new URL(updraft.base).host;
    expect(r.json.data!.location).toBe(`http://${host}${r.json.data!.uploadUrl}`);
    expect(r.json.data!.webSocketUrl).toBe(`ws://${host}${r.json.data!.uploadUrl}`);
    expect(clientIps).toEqual([OTHER_LOOPBACK]);
  });

  it('serves /metrics through the proxy only to the allowed network', async () => {
    const local = await fetch(`${plain}/metrics`);
    expect(local.status).toBe(200);
    expect(await local.text()).toMatch(/^updraft_uploads_total\{event="completed"\} [1-9]/m);
    const other = await new Promise<number>((resolve, reject) => {
      http.get(`${plain}/metrics`, { localAddress: OTHER_LOOPBACK, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on('error', reject);
    });
    expect(other).toBe(403);
  });
});

describe('the nginx examples', () => {
  it('share every setting that is not about routing (scale-out.conf says they are those of updraft.conf)', () => {
    const settings = (file: string): string[] => [
      ...new Set(
        fs
          .readFileSync(path.join(EXAMPLES, file), 'utf8')
          .split('\n')
          .map((l) => l.trim())
          .filter((l) => /^(client_|proxy_(?!pass)|keepalive_timeout|ssl_|listen|server_name)/.test(l)),
      ),
    ];
    expect(settings('scale-out.conf')).toEqual(settings('updraft.conf'));
    expect(settings('updraft.conf')).toContain('proxy_request_buffering off;');
  });
});

if (!NGINX) {
  describe('behind nginx', () => {
    it.skip(NGINX_MISSING, () => {});
  });
}
