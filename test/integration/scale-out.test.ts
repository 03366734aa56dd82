/**
 * Scale-out (issue 6): two Updraft processes (`--instance-id a` and `b`, each its own upload root side by side in
 * one parent folder) behind nginx configured by examples/nginx/scale-out.conf. Inits spread over both instances;
 * every later request of an upload carries its guid, whose prefix nginx maps to the instance that owns it. Uploads
 * go through the proxy over PUT (raw and PSWebHost body), updraft.v1 and PSWebHost WebSockets, all at once; each
 * file must be complete and byte-exact in its owner's root, and nginx's access log must show that no request of an
 * upload reached the other instance. Then: a cancel by `DELETE ?guid=` reaches the owner; with one instance stopped,
 * inits go to the other while its own upload gets 502, and it resumes when the instance is back on its root.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NGINX, NGINX_MISSING, freePort, renderSite, startNginx } from '../fixtures/nginx.js';
import type { Nginx } from '../fixtures/nginx.js';
import {
  PREFIX,
  bytesOf,
  call,
  initUpload,
  psBody,
  putChunks,
  shuffled,
  slice,
  startCli,
  tempDir,
  waitExit,
} from '../fixtures/server.js';
import type { CliServer } from '../fixtures/server.js';
import { uploadPs, uploadV1 } from '../fixtures/ws-upload.js';

const CS = 256 * 1024;
const INSTANCES = ['a', 'b'] as const;
type Instance = (typeof INSTANCES)[number];

let parent = '';
const servers = new Map<Instance, CliServer>();
let nginx: Nginx;
let proxy = '';

const cliArgs = (id: Instance): string[] => ['--instance-id', id, '--dir', path.join(parent, id), '--trust-proxy', '127.0.0.1', '--workers', '2', '--no-demo'];

function instanceOf(guid: string): Instance {
  const id = guid.split('.')[0];
  expect(INSTANCES).toContain(id);
  return id as Instance;
}

describe.skipIf(!NGINX)('scale-out: two instances behind nginx (examples/nginx/scale-out.conf)', () => {
  beforeAll(async () => {
    parent = await tempDir('updraft-scale-');
    // Explicit ports (not port 0): a port the kernel picked for a listener cannot be bound again while that
    // listener's connections linger in TIME_WAIT, and the last test restarts an instance on its port.
    for (const id of INSTANCES) servers.set(id, await startCli([...cliArgs(id), '--port', String(await freePort())]));
    const port = (id: Instance): string => new URL(servers.get(id)!.base).port;
    nginx = await startNginx((ports) =>
      renderSite('scale-out.conf', [
        { from: 'server 127.0.0.1:8081;', to: `server 127.0.0.1:${port('a')};`, count: 2 },
        { from: 'server 127.0.0.1:8082;', to: `server 127.0.0.1:${port('b')};`, count: 2 },
        { from: 'listen 443 ssl;', to: `listen 127.0.0.1:${ports[0]};` },
        { from: 'ssl_certificate     /etc/ssl/certs/uploads.example.com.pem;', to: '' },
        { from: 'ssl_certificate_key /etc/ssl/private/uploads.example.com.key;', to: '' },
      ]),
    );
    proxy = `http://127.0.0.1:${nginx.ports[0]}`;
  });

  afterAll(async () => {
    await nginx?.stop();
    for (const s of servers.values()) {
      if (s.child.exitCode === null && s.child.signalCode === null) {
        s.child.kill('SIGTERM');
        await waitExit(s.child);
      }
    }
    if (parent) await fsp.rm(parent, { recursive: true, force: true });
  });

  it('spreads inits over both instances and completes every upload through the proxy, byte-exact in its owner', async () => {
    const transports = ['put', 'v1', 'pswebhost-ws', 'pswebhost-put'] as const;
    const uploads: Array<{ guid: string; name: string; data: Buffer; uploadUrl: string; transport: (typeof transports)[number] }> = [];
    for (let i = 0; i < 8; i++) {
      const data = bytesOf(2 * 1024 * 1024 + i * 50_000 + 1);
      const name = `file-${i}.bin`;
      const r = await initUpload(proxy, { fileName: name, fileSize: data.length, chunkSize: CS });
      expect(r.status, JSON.stringify(r.json)).toBe(200);
      const { guid, uploadUrl, location } = r.json.data!;
      expect(guid).toMatch(/^[ab]\.[0-9a-f-]{36}$/);
      // Through the proxy, the absolute URL names the proxy, not the instance.
      expect(location).toBe(`${proxy}${uploadUrl}`);
      uploads.push({ guid, name, data, uploadUrl, transport: transports[i % transports.length]! });
    }
    const owners = uploads.map((u) => instanceOf(u.guid));
    expect(new Set(owners)).toEqual(new Set(INSTANCES));

    await Promise.all(
      uploads.map(async (u, i) => {
        const total = Math.ceil(u.data.length / CS);
        const order = shuffled([...Array(total).keys()], 10 + i);
        if (u.transport === 'put') {
          for (const r of await putChunks(proxy, u.guid, u.data, CS, order, 4)) expect(r.status, JSON.stringify(r.json)).toBe(200);
        } else if (u.transport === 'v1') {
          expect(await uploadV1(proxy, u.guid, u.data, { order })).toMatchObject({ closeCode: 1000, size: u.data.length });
        } else if (u.transport === 'pswebhost-ws') {
          expect(await uploadPs(proxy, u.guid, u.data, CS, { order })).toMatchObject({ closeCode: 1000, size: u.data.length });
        } else {
          // The PSWebHost PUT: the init's uploadUrl as is, the chunk number in a 10-byte body header.
          for (const c of order) {
            const bytes = slice(u.data, CS, c);
            const r = await call(proxy, 'PUT', u.uploadUrl, psBody(c, u.data.length - c * CS - bytes.length, bytes));
            expect(r.status, JSON.stringify(r.json)).toBe(200);
          }
        }
      }),
    );

    for (const u of uploads) {
      const owner = instanceOf(u.guid);
      const other = INSTANCES.find((id) => id !== owner)!;
      const st = await call(proxy, 'GET', `${PREFIX}/upload-status?guid=${u.guid}`);
      expect(st.json.data, u.transport).toMatchObject({ uploadStatus: 'completed', guid: u.guid });
      expect(Buffer.compare(fs.readFileSync(path.join(parent, owner, u.name)), u.data), `${u.name} via ${u.transport}`).toBe(0);
      expect(fs.existsSync(path.join(parent, other, u.name))).toBe(false);
      // Only the owner knows the upload: routing is what makes this work.
      const wrong = await call(servers.get(other)!.base, 'GET', `${PREFIX}/upload-status?guid=${u.guid}`);
      expect([wrong.status, wrong.json.code]).toEqual([404, 'ERR_UPLOAD_NOT_FOUND']);
    }

    // nginx's own record: every request that named a guid went to the port of the guid's instance.
    const portOf = new Map(INSTANCES.map((id) => [id, new URL(servers.get(id)!.base).port]));
    let routed = 0;
    for (const line of nginx.accessLog().split('\n')) {
      const m = /^\S+ (\S+) (\S+) "([^"]*)" (\d+) (\S+)$/.exec(line);
      if (!m || m[3] === '-') continue; // nginx logs an empty variable as -
      routed++;
      expect(m[5], line).toBe(`127.0.0.1:${portOf.get(instanceOf(m[3]!))}`);
    }
    expect(routed).toBeGreaterThan(uploads.length);
  });

  it('cancels through the proxy with DELETE ?guid=, at the owner', async () => {
    const seen = new Set<Instance>();
    for (let i = 0; i < 4 && seen.size < INSTANCES.length; i++) {
      const r = await initUpload(proxy, { fileName: `cancel-${i}.bin`, fileSize: 3 * CS, chunkSize: CS });
      const guid = r.json.data!.guid as string;
      seen.add(instanceOf(guid));
      const del = await call(proxy, 'DELETE', `${PREFIX}/upload-chunk?guid=${guid}`);
      expect([del.status, del.json.message]).toEqual([200, 'Upload cancelled']);
      const st = await call(proxy, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
      expect([st.status, st.json.data?.uploadStatus]).toEqual([200, 'cancelled']);
    }
    expect(seen.size).toBe(INSTANCES.length);
  });

  it('while an instance is down, new uploads go to the other and its own wait (502), then resume when it is back', async () => {
    const data = bytesOf(8 * CS + 99);
    let guid = '';
    for (let i = 0; i < 6 && !guid.startsWith('b.'); i++) {
      guid = (await initUpload(proxy, { fileName: 'survivor.bin', fileSize: data.length, chunkSize: CS })).json.data!.guid as string;
    }
    expect(guid).toMatch(/^b\./);
    const first = [0, 3, 5, 8];
    for (const r of await putChunks(proxy, guid, data, CS, first, 2)) expect(r.status).toBe(200);

    const b = servers.get('b')!;
    const bPort = new URL(b.base).port;
    b.child.kill('SIGTERM');
    expect(await waitExit(b.child)).toEqual({ code: 0, signal: null });

    // nginx passes an init that b refused to connect for on to a (nothing was sent to b, so a POST may be retried).
    for (let i = 0; i < 4; i++) {
      const r = await initUpload(proxy, { fileName: `while-down-${i}.bin`, fileSize: 10 });
      expect(r.status, JSON.stringify(r.json)).toBe(200);
      expect(r.json.data!.guid).toMatch(/^a\./);
    }
    const down = await fetch(`${proxy}${PREFIX}/upload-status?guid=${guid}`);
    expect(down.status).toBe(502);
    await down.arrayBuffer();

    // The same id and root (and port): b's upload is back with the chunks it acknowledged.
    servers.set('b', await startCli([...cliArgs('b'), '--port', bPort]));
    const st = await call(proxy, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(st.json.data).toMatchObject({ uploadStatus: 'active', missingChunks: [1, 2, 4, 6, 7] });
    for (const r of await putChunks(proxy, guid, data, CS, st.json.data!.missingChunks, 2)) expect(r.status).toBe(200);
    expect(Buffer.compare(fs.readFileSync(path.join(parent, 'b', 'survivor.bin')), data)).toBe(0);
  });
});

if (!NGINX) {
  describe('scale-out: two instances behind nginx', () => {
    it.skip(NGINX_MISSING, () => {});
  });
}
