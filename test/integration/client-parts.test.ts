/**
 * The client's `partSize` (docs/PROTOCOL.md, updraft.v1 `part`): which frames it really sends, seen through a `ws`
 * that records every frame, and that the server stores them byte for byte.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { upload } from '../../src/client/index.js';
import { PREFIX, bytesOf, startServer } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';

const sent = vi.hoisted(() => [] as Array<{ t: string; c?: number; o?: number; length: number }>);

// The client loads `ws` on Node 20; this one records each frame's header before sending it.
vi.mock('ws', async (importOriginal) => {
  const real = await importOriginal<typeof import('ws')>();
  const { decodeClientFrame: decode } = await import('../../src/protocol/codec.js');
  class RecordingWebSocket extends real.WebSocket {
    override send(data: unknown, ...rest: unknown[]): void {
      if (data instanceof Uint8Array) {
        const { message, payload } = decode(data);
        sent.push({ ...message, length: payload.length } as (typeof sent)[number]);
      }
      (super.send as (...a: unknown[]) => void)(data, ...rest);
    }
  }
  return { ...real, default: RecordingWebSocket, WebSocket: RecordingWebSocket };
});

const KiB = 1024;
const MiB = 1024 * KiB;

let server: TestServer | null = null;
afterEach(async () => {
  sent.length = 0;
  await server?.close();
  server = null;
});

async function send(data: Uint8Array, fileName: string, options: { partSize?: number; checksum?: 'sha256' }): Promise<void> {
  const endpoint = `${server!.base}${PREFIX}`;
  const r = await upload(data, { endpoint, fileName, chunkSize: MiB, transport: 'websocket', ...options }).done;
  expect(r.bytesByTransport).toEqual({ websocket: data.length, http: 0 });
  expect(Buffer.compare(await fsp.readFile(path.join(server!.dir, fileName)), data)).toBe(0);
}

describe('client: updraft.v1 parts', () => {
  it('sends a chunk longer than partSize as consecutive parts, and a shorter one whole', async () => {
    server = await startServer({ batchSize: 256 * KiB });
    const data = bytesOf(2 * MiB + 100 * KiB);
    await send(data, 'parts.bin', { partSize: 400_000 });
    const frames = sent.filter((m) => m.t === 'part' || m.t === 'chunk');
    for (const c of [0, 1]) {
      expect(frames.filter((m) => m.c === c)).toEqual([0, 400_000, 800_000].map((o) => ({ t: 'part', c, o, length: Math.min(400_000, MiB - o) })));
    }
    expect(frames.filter((m) => m.c === 2)).toEqual([{ t: 'chunk', c: 2, length: 100 * KiB }]);
  });

  it('sends every chunk whole with partSize 0, and with a checksum', async () => {
    server = await startServer();
    const data = bytesOf(2 * MiB + 1);
    await send(data, 'whole.bin', { partSize: 0 });
    await send(data, 'summed.bin', { partSize: 1000, checksum: 'sha256' });
    const frames = sent.filter((m) => m.t === 'part' || m.t === 'chunk');
    expect(frames).toHaveLength(6);
    expect(frames.every((m) => m.t === 'chunk')).toBe(true);
  });

  it('sends 2 MiB parts by default', async () => {
    server = await startServer();
    const data = bytesOf(5 * MiB);
    const endpoint = `${server.base}${PREFIX}`;
    await upload(data, { endpoint, fileName: 'default.bin', chunkSize: 5 * MiB, transport: 'websocket' }).done;
    expect(sent.filter((m) => m.t === 'part').map((m) => [m.o, m.length])).toEqual([[0, 2 * MiB], [2 * MiB, 2 * MiB], [4 * MiB, MiB]]);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'default.bin')), data)).toBe(0);
  });
});
