/**
 * idleTimeout with automatic pings (issue 3, "Limits and lifecycle"): a live client that sends nothing stays
 * connected (it answers the server's pings), a silent dead one is closed and stops counting against the per-user
 * cap. Uses the smallest timeout uWS allows (8 s), so this file takes about 10 s; vitest runs it beside the others.
 */
import { afterEach, expect, it } from 'vitest';
import { initUpload, startServer } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';
import { TestSocket, UpgradeRefused } from '../fixtures/ws-client.js';

let server: TestServer | null = null;
const sockets: TestSocket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.ws.terminate();
  await server?.close();
  server = null;
});

it('keeps an idle live connection open with pings and closes a dead one', { timeout: 40_000 }, async () => {
  server = await startServer({ wsIdleTimeout: 8, maxWsConnectionsPerUser: 2 });
  const init = await initUpload(server.base, { fileName: 'idle.bin', fileSize: 1024, chunkSize: 1024 });
  const guid = init.json.data!.guid as string;
  const live = await TestSocket.open(server.base, guid);
  const dead = await TestSocket.open(server.base, guid);
  sockets.push(live, dead);
  let pings = 0;
  live.ws.on('ping', () => pings++);
  // "Dead": the client stops reading, so it never sees a ping and never answers one.
  (dead.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket.pause();

  // The cap is full until the server drops the dead connection.
  const third = await TestSocket.open(server.base, guid);
  sockets.push(third);
  expect(await third.nextJson()).toMatchObject({ type: 'error', code: 'ERR_RATE_LIMITED' });
  expect((await third.closed).code).toBe(4029);

  const started = Date.now();
  let accepted: TestSocket | null = null;
  while (!accepted && Date.now() - started < 25_000) {
    await new Promise((r) => setTimeout(r, 1000));
    const s = await TestSocket.open(server.base, guid).catch((e: unknown) => {
      if (e instanceof UpgradeRefused) throw e;
      return null;
    });
    if (!s) continue;
    sockets.push(s);
    s.sendText('{"type":"getProgress"}');
    const m = await s.nextJson();
    if (m.type === 'progress') accepted = s;
  }
  expect(accepted, 'the dead connection was closed and its slot freed').not.toBeNull();
  expect(pings).toBeGreaterThan(0);
  // The live one, silent all along, is still open and served.
  live.sendText('{"type":"getProgress"}');
  expect(await live.nextJson()).toMatchObject({ type: 'progress', totalChunks: 1 });
});
