/**
 * Model test of the upload state machine (init, chunk, duplicate, cancel, expire, restart, complete): fast-check
 * draws command sequences, runs them against a real engine over HTTP, and compares every reply, every status and
 * every completed file with a model small enough to be obviously right:
 *
 *   an upload is active | completed | cancelled | expired;
 *   an active upload holds, per chunk, the version of the first PUT that was answered "Chunk received";
 *   a chunk PUT on an active upload is new ("Chunk received", or "Upload completed successfully" for the last
 *   missing chunk) or a duplicate ("Chunk already received", the first bytes kept); on a completed upload a
 *   duplicate that carries the completion; on a cancelled or expired one 410; past the last chunk 400;
 *   cancel: active -> cancelled (200), completed -> 409, cancelled/expired -> 410;
 *   expire: an idle active upload -> expired (410 from then on), its staging data gone;
 *   restart (graceful close + start on the same folder): nothing changes;
 *   a completed file is byte for byte the first-acknowledged version of every chunk.
 *
 * Expiry is driven, not waited for: the reaper's own timer is pushed out of the way (reapInterval 1 h) and the
 * command ages one upload past the TTL and runs the reaper once, so exactly that upload expires. One engine serves
 * every run (each run's uploads are its own; names are unique), so that runs cost milliseconds; restart commands
 * replace it. Bounded: fixed seed, 30 runs of at most 40 commands.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PREFIX, call, initUpload, startServer } from '../fixtures/server.js';
import type { Json, TestServer } from '../fixtures/server.js';

const SEED = 0x5eed_0003;
const TTL = 10 * 60_000;
const OPTIONS = { chunkSize: 64, minChunkSize: 16, durability: 'chunk' as const, uploadTtl: TTL, reapInterval: 3600_000, workers: 1 };

type State = 'active' | 'completed' | 'cancelled' | 'expired';

interface ModelUpload {
  id: number;
  guid: string;
  fileName: string;
  size: number;
  chunkSize: number;
  total: number;
  state: State;
  /** chunk -> version stored (the first one acknowledged as new). */
  stored: Map<number, number>;
}

interface Model {
  uploads: ModelUpload[];
}

interface Real {
  server: TestServer;
}

let nextId = 0;

/** Deterministic bytes; versions of a chunk differ in every byte, chunks and uploads differ from each other. */
function bytesFor(id: number, c: number, version: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (id * 131 + c * 31 + version * 85 + i * 7 + (i >> 8)) & 0xff;
  return b;
}

function chunkLen(u: ModelUpload, c: number): number {
  return Math.min(u.chunkSize, u.size - c * u.chunkSize);
}

function psBody(c: number, data: Buffer): Buffer {
  const b = Buffer.alloc(10 + data.length);
  b.writeUInt32LE(c, 2);
  b.set(data, 10);
  return b;
}

function missing(u: ModelUpload): number[] {
  const out: number[] = [];
  for (let c = 0; c < u.total; c++) if (!u.stored.has(c)) out.push(c);
  return out;
}

function pick(m: Model, n: number): ModelUpload {
  return m.uploads[n % m.uploads.length]!;
}

function expectError(r: { status: number; json: Json }, status: number, code: string, what: string): void {
  expect(r.status, `${what}: ${JSON.stringify(r.json)}`).toBe(status);
  expect(r.json.code, what).toBe(code);
}

async function stagingOf(server: TestServer, guid: string): Promise<string[]> {
  return (await fsp.readdir(path.join(server.dir, '.updraft-staging'))).filter((f) => f.startsWith(guid)).sort();
}

/** The completed file holds the stored version of every chunk. */
async function expectFile(server: TestServer, u: ModelUpload): Promise<void> {
  const expected = Buffer.concat(Array.from({ length: u.total }, (_, c) => bytesFor(u.id, c, u.stored.get(c)!, chunkLen(u, c))));
  const got = await fsp.readFile(path.join(server.dir, u.fileName));
  expect(Buffer.compare(got, expected), `file of upload ${u.id}`).toBe(0);
}

// --- commands ---------------------------------------------------------------------------------------------------------

class InitCmd implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly sizeKind: number,
    readonly chunkSize: number,
    readonly extra: number,
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.uploads.length < 6;
  }
  async run(m: Model, r: Real): Promise<void> {
    const cs = this.chunkSize;
    const size = [0, 1, cs - 1, cs, cs + 1, 2 * cs, 3 * cs + (this.extra % cs), 5 * cs - 1][this.sizeKind % 8]!;
    const id = nextId++;
    const fileName = `m${id}.bin`;
    const res = await initUpload(r.server.base, { fileName, fileSize: size, chunkSize: cs });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    const d = res.json.data!;
    const u: ModelUpload = { id, guid: d.guid, fileName, size, chunkSize: cs, total: Math.ceil(size / cs), state: 'active', stored: new Map() };
    expect(d.totalChunks).toBe(u.total);
    if (size === 0) {
      expect(res.json.message).toBe('Upload completed successfully');
      expect(d).toMatchObject({ complete: true, finalName: fileName, size: 0 });
      u.state = 'completed';
      await expectFile(r.server, u);
    } else {
      expect(res.json.message).toBe('Upload initialized');
    }
    m.uploads.push(u);
  }
  toString(): string {
    return `init(kind ${this.sizeKind}, cs ${this.chunkSize})`;
  }
}

/** Applies one PUT reply to the model and checks it; `c` may be past the last chunk. */
async function checkPut(m: Model, r: Real, u: ModelUpload, c: number, version: number, res: { status: number; json: Json }, what: string): Promise<'new' | 'dup' | 'error'> {
  if (u.state === 'cancelled') return expectError(res, 410, 'ERR_UPLOAD_CANCELLED', what), 'error';
  if (u.state === 'expired') return expectError(res, 410, 'ERR_UPLOAD_EXPIRED', what), 'error';
  if (c >= u.total) return expectError(res, 400, 'ERR_CHUNK_OUT_OF_RANGE', what), 'error';
  expect(res.status, `${what}: ${JSON.stringify(res.json)}`).toBe(200);
  const d = res.json.data!;
  expect(d.chunkNumber, what).toBe(c);
  if (u.state === 'completed') {
    expect(res.json.message, what).toBe('Chunk already received');
    expect(d, what).toMatchObject({ complete: true, fileName: u.fileName, receivedChunks: u.total });
    return 'dup';
  }
  if (u.stored.has(c)) {
    expect(res.json.message, what).toBe('Chunk already received');
    expect(d, what).toMatchObject({ complete: false, receivedChunks: u.stored.size });
    return 'dup';
  }
  u.stored.set(c, version);
  if (u.stored.size === u.total) {
    expect(res.json.message, what).toBe('Upload completed successfully');
    expect(d, what).toMatchObject({ complete: true, fileName: u.fileName, size: u.size, receivedChunks: u.total });
    u.state = 'completed';
    await expectFile(r.server, u);
  } else {
    expect(res.json.message, what).toBe('Chunk received');
    expect(d, what).toMatchObject({ complete: false, receivedChunks: u.stored.size });
  }
  void m;
  return 'new';
}

type PutTarget = 'missing' | 'stored' | 'past' | 'anyUpload';

class PutCmd implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly upload: number,
    readonly chunk: number,
    readonly version: number,
    readonly ps: boolean,
    readonly target: PutTarget,
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.uploads.length > 0;
  }
  async run(m: Model, r: Real): Promise<void> {
    // Mostly a missing chunk of an active upload; also duplicates, chunks past the end, and uploads in any state.
    const active = m.uploads.filter((x) => x.state === 'active');
    const u = this.target === 'anyUpload' || active.length === 0 ? pick(m, this.upload) : active[this.upload % active.length]!;
    const miss = missing(u);
    const stored = [...u.stored.keys()];
    let c: number;
    if (this.target === 'past') c = u.total + (this.chunk % 3);
    else if (this.target === 'missing' && miss.length > 0) c = miss[this.chunk % miss.length]!;
    else if (this.target === 'stored' && stored.length > 0) c = stored[this.chunk % stored.length]!;
    else c = this.chunk % (u.total + 1);
    const data = bytesFor(u.id, c, this.version, c < u.total ? chunkLen(u, c) : 1);
    const url = this.ps ? `${PREFIX}/upload-chunk?guid=${u.guid}` : `${PREFIX}/upload-chunk?guid=${u.guid}&chunk=${c}`;
    const res = await call(r.server.base, 'PUT', url, this.ps ? psBody(c, data) : data);
    await checkPut(m, r, u, c, this.version, res, `${this.toString()} -> u${u.id} (${u.state}) chunk ${c}`);
  }
  toString(): string {
    return `put(${this.target}, u${this.upload}, c${this.chunk}, v${this.version}${this.ps ? ', ps' : ''})`;
  }
}

/** The same chunk on several connections at once, with different bytes: exactly one is new, the rest duplicates. */
class ConcurrentPutCmd implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly upload: number,
    readonly chunk: number,
    readonly versions: number[],
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.uploads.some((u) => u.state === 'active');
  }
  async run(m: Model, r: Real): Promise<void> {
    const active = m.uploads.filter((u) => u.state === 'active');
    const u = active[this.upload % active.length]!;
    const c = this.chunk % u.total;
    const was = u.stored.has(c);
    const before = u.stored.size;
    const replies = await Promise.all(
      this.versions.map((v) => call(r.server.base, 'PUT', `${PREFIX}/upload-chunk?guid=${u.guid}&chunk=${c}`, bytesFor(u.id, c, v, chunkLen(u, c)))),
    );
    for (const res of replies) expect(res.status, JSON.stringify(res.json)).toBe(200);
    const fresh = replies.map((res, i) => ({ res, v: this.versions[i]! })).filter(({ res }) => res.json.message !== 'Chunk already received');
    expect(fresh.length, this.toString()).toBe(was ? 0 : 1);
    if (was) return;
    const winner = fresh[0]!;
    u.stored.set(c, winner.v);
    if (u.stored.size === u.total) {
      expect(winner.res.json.message).toBe('Upload completed successfully');
      u.state = 'completed';
      await expectFile(r.server, u);
    } else {
      expect(winner.res.json.message).toBe('Chunk received');
      expect(winner.res.json.data!.receivedChunks).toBe(before + 1);
    }
  }
  toString(): string {
    return `concurrentPut(u${this.upload}, c${this.chunk}, v[${this.versions.join(',')}])`;
  }
}

class StatusCmd implements fc.AsyncCommand<Model, Real> {
  constructor(readonly upload: number) {}
  check(m: Readonly<Model>): boolean {
    return m.uploads.length > 0;
  }
  async run(m: Model, r: Real): Promise<void> {
    const u = pick(m, this.upload);
    const res = await call(r.server.base, 'GET', `${PREFIX}/upload-status?guid=${u.guid}`);
    const what = `${this.toString()} (${u.state})`;
    if (u.state === 'expired') return expectError(res, 410, 'ERR_UPLOAD_EXPIRED', what);
    expect(res.status, what).toBe(200);
    if (u.state === 'cancelled') {
      expect(res.json.data, what).toMatchObject({ uploadStatus: 'cancelled', missingChunks: [], totalChunks: u.total });
    } else if (u.state === 'completed') {
      expect(res.json.data, what).toMatchObject({ uploadStatus: 'completed', finalName: u.fileName, receivedChunks: u.total, missingChunks: [] });
    } else {
      expect(res.json.data, what).toMatchObject({
        uploadStatus: 'active',
        receivedChunks: u.stored.size,
        receivedBytes: [...u.stored.keys()].reduce((s, c) => s + chunkLen(u, c), 0),
        missingChunks: missing(u),
        totalChunks: u.total,
      });
    }
  }
  toString(): string {
    return `status(u${this.upload})`;
  }
}

class CancelCmd implements fc.AsyncCommand<Model, Real> {
  constructor(
    readonly upload: number,
    readonly how: 'POST' | 'DELETE',
  ) {}
  check(m: Readonly<Model>): boolean {
    return m.uploads.length > 0;
  }
  async run(m: Model, r: Real): Promise<void> {
    const u = pick(m, this.upload);
    const res =
      this.how === 'POST'
        ? await call(r.server.base, 'POST', `${PREFIX}/upload-chunk`, { action: 'cancel', guid: u.guid })
        : await call(r.server.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${u.guid}`);
    const what = `${this.toString()} (${u.state})`;
    if (u.state === 'cancelled') return expectError(res, 410, 'ERR_UPLOAD_CANCELLED', what);
    if (u.state === 'expired') return expectError(res, 410, 'ERR_UPLOAD_EXPIRED', what);
    if (u.state === 'completed') return expectError(res, 409, 'ERR_UPLOAD_FINALIZING', what);
    expect(res.status, what).toBe(200);
    expect(res.json.message).toBe('Upload cancelled');
    u.state = 'cancelled';
    expect(await stagingOf(r.server, u.guid)).toEqual([`${u.guid}.meta`]);
  }
  toString(): string {
    return `cancel(u${this.upload}, ${this.how})`;
  }
}

class ExpireCmd implements fc.AsyncCommand<Model, Real> {
  constructor(readonly upload: number) {}
  check(m: Readonly<Model>): boolean {
    return m.uploads.some((u) => u.state === 'active');
  }
  async run(m: Model, r: Real): Promise<void> {
    const active = m.uploads.filter((u) => u.state === 'active');
    const u = active[this.upload % active.length]!;
    // Time passes for this upload only: its last activity moves back past the TTL, then the reaper runs once.
    const real = r.server.engine.registry.find(u.guid, 'anonymous');
    real.lastActivityTime = Date.now() - TTL - 1;
    await r.server.engine.registry.reap();
    u.state = 'expired';
    expect(await stagingOf(r.server, u.guid)).toEqual([`${u.guid}.meta`]);
  }
  toString(): string {
    return `expire(u${this.upload})`;
  }
}

class RestartCmd implements fc.AsyncCommand<Model, Real> {
  check(): boolean {
    return true;
  }
  async run(_m: Model, r: Real): Promise<void> {
    const dir = r.server.dir;
    await r.server.close();
    r.server = await startServer({ ...OPTIONS, dir });
  }
  toString(): string {
    return 'restart';
  }
}

const putArb = fc
  .tuple(fc.nat(), fc.nat(), fc.nat(2), fc.boolean(), fc.constantFrom<PutTarget>('missing', 'missing', 'missing', 'missing', 'stored', 'past', 'anyUpload'))
  .map(([u, c, v, ps, t]) => new PutCmd(u, c, v, ps, t));

// Weighted: chunk PUTs dominate (an upload needs several to complete); restarts are rare (each boots a worker).
const commands: Array<fc.Arbitrary<fc.AsyncCommand<Model, Real>>> = [
  fc.oneof(
    { weight: 3, arbitrary: fc.tuple(fc.nat(7), fc.constantFrom(16, 64, 100), fc.nat()).map(([k, cs, e]) => new InitCmd(k, cs, e)) },
    { weight: 18, arbitrary: putArb },
    { weight: 2, arbitrary: fc.tuple(fc.nat(), fc.nat(), fc.array(fc.nat(2), { minLength: 2, maxLength: 3 })).map(([u, c, vs]) => new ConcurrentPutCmd(u, c, vs)) },
    { weight: 2, arbitrary: fc.nat().map((u) => new StatusCmd(u)) },
    { weight: 1, arbitrary: fc.tuple(fc.nat(), fc.constantFrom<'POST' | 'DELETE'>('POST', 'DELETE')).map(([u, how]) => new CancelCmd(u, how)) },
    { weight: 1, arbitrary: fc.nat().map((u) => new ExpireCmd(u)) },
    { weight: 1, arbitrary: fc.constant(new RestartCmd()) },
  ),
];

const real: Real = { server: undefined as unknown as TestServer };

beforeAll(async () => {
  real.server = await startServer(OPTIONS);
});

afterAll(async () => {
  await real.server.close();
});

describe('upload state machine against a model', () => {
  it('every reply, status and completed file matches the model', async () => {
    await fc.assert(
      fc.asyncProperty(fc.commands(commands, { maxCommands: 40, size: 'max' }), async (cmds) => {
        await fc.asyncModelRun(() => ({ model: { uploads: [] }, real }), cmds);
      }),
      { seed: SEED, numRuns: 30 },
    );
  }, 120_000);
});
