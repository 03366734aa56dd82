/**
 * A simulated client on the native WebSocket protocol `updraft.v1` (docs/PROTOCOL.md; frames from
 * src/protocol/codec.ts), through the fault proxy: the connection may be cut or reset mid-frame, or stalled.
 *
 * Per chunk it may also misbehave: send the same frame twice inside its window, attach a correct checksum, or send
 * different bytes under the checksum of the right ones (the server must refuse them with ERR_CHECKSUM_MISMATCH,
 * `retry: true`, and write nothing). Half of the chunks without a checksum go as `part` frames of a random size. Some uploads use two connections at once that both send every missing chunk.
 * It resumes like a real client: a new connection's `hello` bitmap says what is missing.
 */
import { createHash } from 'node:crypto';
import type { ClientRequest, IncomingMessage } from 'node:http';
import { crc32 } from 'node:zlib';
import WebSocket from 'ws';
import { decodeServerFrame, encodeFrame, encodeFramePrefix } from '../../src/protocol/codec.js';
import type { ServerMessage, WireChecksum } from '../../src/protocol/messages.js';
import type { UploadContent } from './content.js';
import { TERMINAL, checkDurableAck, checkPlaced, pastDeadline, sleep } from './control.js';
import type { ClientContext } from './control.js';
import type { FaultPlan, FaultProxy } from './fault-proxy.js';
import { request } from './http-client.js';
import type { UploadRecord } from './ledger.js';
import type { UploadPlan } from './plan.js';
import type { Prng } from './prng.js';

/** Refusals of one chunk (busy, finalizing) on one connection before the session tries a fresh connection. */
const MAX_REFUSALS = 20;

const NATIVE = 'updraft.v1';

type SessionEnd =
  | { kind: 'completed' }
  | { kind: 'terminal'; code: string }
  | { kind: 'cancelled' }
  | { kind: 'vanished' }
  /** Connection over (dropped, refused for now, timed out): reconnect and resume. */
  | { kind: 'again'; why: string };

interface InFlight {
  version: number;
  /** Sent with the checksum of version 0 while the bytes are another version. */
  badChecksum: boolean;
}

/** An open connection after its hello. */
interface Conn {
  ws: WebSocket;
  hello: Extract<ServerMessage, { t: 'hello' }>;
  /** Messages that arrived after hello, in order; `wake` is called on each. */
  inbox: ServerMessage[];
  closed: { code: number; reason: string } | null;
  wake: (() => void) | null;
}

function openConn(proxy: FaultProxy, base: string, prefix: string, guid: string, token: string | undefined, plan: FaultPlan, timeoutMs: number): Promise<Conn | { refused: number; code: string } | { error: string }> {
  return new Promise((resolve) => {
    const url = `${base.replace(/^http/, 'ws')}${prefix}/upload-chunk?guid=${encodeURIComponent(guid)}`;
    const ws = new WebSocket(url, [NATIVE], {
      headers: token ? { authorization: `Bearer ${token}` } : {},
      maxPayload: 64 * 1024 * 1024,
      createConnection: () => proxy.connectSync(plan),
      handshakeTimeout: timeoutMs,
    });
    let done = false;
    const conn: Partial<Conn> & { inbox: ServerMessage[] } = { ws, inbox: [], closed: null, wake: null };
    const settle = (v: Conn | { refused: number; code: string } | { error: string }): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(v);
    };
    const timer = setTimeout(() => {
      ws.terminate();
      settle({ error: 'no hello' });
    }, timeoutMs);
    ws.on('unexpected-response', (req: ClientRequest, res: IncomingMessage) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        let code = `HTTP ${res.statusCode}`;
        try {
          code = (JSON.parse(body) as { code?: string }).code ?? code;
        } catch {
          // not JSON
        }
        settle({ refused: res.statusCode ?? 0, code });
        req.destroy();
      });
      res.on('error', () => settle({ error: 'upgrade reply cut' }));
    });
    ws.on('error', (e: Error & { code?: string }) => settle({ error: e.code ?? e.message }));
    ws.on('message', (data: Buffer, binary: boolean) => {
      let m: ServerMessage;
      try {
        if (!binary) throw new Error('text frame on updraft.v1');
        m = decodeServerFrame(data);
      } catch (e) {
        ws.terminate();
        settle({ error: `bad frame from server: ${(e as Error).message}` });
        return;
      }
      if (!done) {
        if (m.t !== 'hello') {
          ws.terminate();
          settle({ error: `first message is ${m.t}, not hello` });
          return;
        }
        conn.hello = m;
        settle(conn as Conn);
        return;
      }
      conn.inbox.push(m);
      conn.wake?.();
    });
    ws.on('close', (code: number, reason: Buffer) => {
      conn.closed = { code, reason: reason.toString() };
      conn.wake?.();
      settle({ error: `closed ${code} before hello` });
    });
  });
}

/** Is `updraft.v1` served? Probes with a throw-away 1-byte upload (created, greeted, cancelled). */
export async function wsAvailable(base: string, prefix: string, token?: string): Promise<string | null> {
  const { FaultProxy } = await import('./fault-proxy.js');
  const port = Number(new URL(base).port);
  const proxy = new FaultProxy(port);
  await proxy.listen();
  try {
    const auth = token ? { auth: token } : {};
    const init = await request(proxy, 'POST', `${prefix}/upload-chunk`, Buffer.from(JSON.stringify({ action: 'init', fileName: `stress-ws-probe-${Date.now()}.bin`, fileSize: 1 })), { timeoutMs: 10_000, ...auth }, 'application/json');
    if (init.kind !== 'reply' || init.reply.status !== 200) return `probe init failed: ${init.kind === 'reply' ? init.reply.text.slice(0, 100) : init.kind}`;
    const guid = String(init.reply.json!.data!.guid);
    const conn = await openConn(proxy, base, prefix, guid, token, { kind: 'none' }, 10_000);
    await request(proxy, 'DELETE', `${prefix}/upload-chunk?guid=${encodeURIComponent(guid)}`, null, { timeoutMs: 10_000, ...auth });
    if ('ws' in conn) {
      conn.ws.terminate();
      return null;
    }
    return 'refused' in conn ? `upgrade answered ${conn.refused} ${conn.code}` : `no hello: ${conn.error}`;
  } finally {
    await proxy.close();
  }
}

function checksumOf(bytes: Uint8Array, alg: 'sha256' | 'crc32'): WireChecksum {
  return alg === 'sha256'
    ? { a: 'sha256', v: createHash('sha256').update(bytes).digest('hex') }
    : { a: 'crc32', v: crc32(bytes).toString(16).padStart(8, '0') };
}

export class WsClient {
  #sends = 0;
  #cancelSent = false;
  /** Journal checks of acknowledgements still running (awaited before the client reports). */
  readonly #checks: Array<Promise<void>> = [];

  constructor(
    private readonly ctx: ClientContext,
    private readonly plan: UploadPlan,
    private readonly rec: UploadRecord,
    private readonly content: UploadContent,
    private readonly rng: Prng,
  ) {}

  get #base(): string {
    return `http://127.0.0.1:${this.ctx.proxy.port}`;
  }

  async run(): Promise<void> {
    try {
      await this.#run();
    } finally {
      await Promise.all(this.#checks);
    }
  }

  async #run(): Promise<void> {
    const { rec } = this;
    let pause = 50;
    for (let round = 0; ; round++) {
      if (!rec.startRound(round, 'connections')) return;
      if (pastDeadline(this.ctx)) {
        rec.outcome = 'unfinished';
        return;
      }
      const r = this.rng.split(`conn ${round}`);
      const two = this.plan.parallel >= 3 && r.chance(0.2 * this.ctx.config.faultScale);
      const ends = await this.#round(r, two ? 2 : 1);
      const end = ends.find((e) => e.kind === 'terminal') ?? ends.find((e) => e.kind === 'cancelled') ?? ends.find((e) => e.kind === 'vanished') ?? ends.find((e) => e.kind === 'completed') ?? ends[0]!;
      switch (end.kind) {
        case 'completed':
          return;
        case 'vanished':
          rec.outcome = 'vanished';
          return;
        case 'cancelled':
          await this.#afterCancel();
          return;
        case 'terminal':
          rec.endedByServer(end.code);
          return;
        case 'again':
          await sleep(pause + this.rng.split(`pause ${round}`).int(0, pause));
          pause = Math.min(1000, pause * 2);
          break;
      }
      if (rec.outcome === 'completed') return;
    }
  }

  /** A cancel was acknowledged by a 4001 close: a chunk over HTTP now gets 410. */
  async #afterCancel(): Promise<void> {
    const { rec } = this;
    rec.outcome = 'cancelled';
    const c = this.rng.split('after cancel').int(0, rec.totalChunks - 1);
    for (let i = 0; i < 20; i++) {
      const out = await request(this.ctx.proxy, 'PUT', `${this.ctx.config.prefix}/upload-chunk?guid=${encodeURIComponent(rec.guid!)}&chunk=${c}`, this.content.chunk(c), {
        timeoutMs: this.ctx.config.requestTimeoutMs,
        ...(rec.token ? { auth: rec.token } : {}),
      });
      if (out.kind !== 'reply') {
        await sleep(100);
        continue;
      }
      if (out.reply.status !== 410 || out.reply.json?.code !== 'ERR_UPLOAD_CANCELLED') {
        // A cancel that lost the race with the last chunk leaves a completed upload: check that it says so.
        if (out.reply.status === 200 && out.reply.json?.data?.complete === true) {
          rec.completed(out.reply.json.data.fileName as string | undefined);
          return;
        }
        rec.violation(`a chunk after a cancel (closed 4001) got ${out.reply.status} ${out.reply.json?.code ?? out.reply.json?.message}`);
      }
      return;
    }
  }

  /** One or two connections at once; each reads its hello before any of them sends, so no hello is stale. */
  async #round(r: Prng, n: number): Promise<SessionEnd[]> {
    const { rec, ctx } = this;
    const conns: Conn[] = [];
    const plans: FaultPlan[] = [];
    for (let i = 0; i < n; i++) {
      const approx = Math.min(rec.size, 8 * rec.chunkSize) + 400;
      const kind = r.weighted({ none: 68, cut: 12 * ctx.config.faultScale, reset: 8 * ctx.config.faultScale, stall: 12 * ctx.config.faultScale });
      const plan: FaultPlan =
        kind === 'none' ? { kind } : kind === 'stall' ? { kind, atBytes: r.int(0, approx), ms: r.int(50, 2000) } : { kind, afterBytes: r.int(0, approx) };
      if (plan.kind !== 'none') rec.faults[plan.kind]++;
      plans.push(plan);
      const c = await openConn(ctx.proxy, this.#base, ctx.config.prefix, rec.guid!, rec.token, plan, ctx.config.requestTimeoutMs);
      rec.requests++;
      if (!('ws' in c)) {
        for (const o of conns) o.ws.terminate();
        if ('refused' in c) {
          // Our cancel went through but its close did not reach us (the connection was cut right after it).
          if (c.code === 'ERR_UPLOAD_CANCELLED' && this.#cancelSent) return [{ kind: 'cancelled' }];
          if (TERMINAL.has(c.code)) return [{ kind: 'terminal', code: c.code }];
          if (c.refused !== 503 && c.refused !== 429) rec.unexpected.push(`upgrade refused: ${c.refused} ${c.code}`);
          return [{ kind: 'again', why: c.code }];
        }
        rec.networkErrors++;
        return [{ kind: 'again', why: c.error }];
      }
      conns.push(c);
    }
    for (const c of conns) {
      if (c.hello.guid !== rec.guid || c.hello.totalChunks !== rec.totalChunks || c.hello.chunkSize !== rec.chunkSize) {
        rec.violation(`hello describes another upload (${c.hello.guid}, ${c.hello.totalChunks} chunks)`);
      }
      rec.checkMissing(c.hello.missing);
    }
    return Promise.all(conns.map((c, i) => this.#session(c, r.split(`session ${i}`))));
  }

  async #session(conn: Conn, r: Prng): Promise<SessionEnd> {
    const { rec, ctx } = this;
    const f = ctx.config.faultScale;
    let window = Math.min(conn.hello.window, 2 * this.plan.parallel);
    const jitter = r.split('jitter'); // timing-dependent draws, kept out of the stream that decides the faults
    const queue: Array<{ c: number; version: number; bad: boolean }> = r.shuffle(conn.hello.missing).map((c) => ({ c, version: 0, bad: false }));
    const inFlight = new Map<number, InFlight[]>();
    let inFlightCount = 0;
    let complete = false;
    let fatal: string | null = null;
    let lastHeard = Date.now();
    const partsRng = r.split('parts');
    const send = (c: number, version: number, bad: boolean, k?: WireChecksum): void => {
      const bytes = this.content.chunk(c, version);
      // Half of the chunks without a checksum go as `part` frames of a random size (at most 64 of them), so cuts
      // and drops also land between the parts of a chunk.
      const partSize = k === undefined && bytes.length > 1 && partsRng.chance(0.5)
        ? Math.max(Math.ceil(bytes.length / 64), partsRng.int(1, bytes.length - 1))
        : 0;
      const frames: Buffer[] = [];
      if (partSize > 0) {
        rec.faults.wsParts++;
        for (let o = 0; o < bytes.length; o += partSize) frames.push(Buffer.from(encodeFrame({ t: 'part', c, o }, bytes.subarray(o, o + partSize))));
      } else {
        const prefix = encodeFramePrefix(k ? { t: 'chunk', c, k } : { t: 'chunk', c });
        const frame = Buffer.allocUnsafe(prefix.length + bytes.length);
        frame.set(prefix, 0);
        frame.set(bytes, prefix.length);
        frames.push(frame);
      }
      const list = inFlight.get(c) ?? [];
      list.push({ version, badChecksum: bad });
      inFlight.set(c, list);
      inFlightCount++;
      if (bad) rec.chunks[c]!.forbidden.add(version);
      else rec.chunks[c]!.possible.add(version);
      for (const frame of frames) conn.ws.send(frame, { binary: true });
    };
    const take = (c: number): InFlight | undefined => {
      const list = inFlight.get(c);
      const e = list?.shift();
      if (list && list.length === 0) inFlight.delete(c);
      if (e) inFlightCount--;
      return e;
    };

    const refusals = new Map<number, number>();
    for (;;) {
      // The deadline ends a session too, not only a round: a chunk refused busy again and again would spin here.
      if (!complete && pastDeadline(ctx)) {
        conn.ws.close(1000);
        return { kind: 'again', why: 'deadline' };
      }
      // Fill the window.
      while (!complete && fatal === null && conn.closed === null && queue.length > 0 && inFlightCount < window) {
        const job = queue.shift()!;
        const n = this.#sends++;
        if (this.plan.cancelAtSend === n && !this.#cancelSent) {
          this.#cancelSent = true;
          rec.faults.cancel++;
          rec.cancelAsked = true;
          conn.ws.send(encodeFrame({ t: 'cancel' }), { binary: true });
        }
        if (this.plan.vanishAtSend === n) {
          rec.faults.vanish++;
          send(job.c, 0, false);
          // Gone before the frame is surely out: the server sees a frame cut short, or a whole one and no client.
          setTimeout(() => conn.ws.terminate(), r.int(0, 5));
          return { kind: 'vanished' };
        }
        const kind = job.bad
          ? 'bad'
          : job.version !== 0
            ? 'none'
            : r.weighted({ none: 64, dup: 8 * f, sha: 8, crc: 6, bad: 8 * f, drop: 2 * f });
        const c = job.c;
        const good = this.content.chunk(c, 0);
        if (kind === 'none') send(c, job.version, false);
        else if (kind === 'dup') {
          rec.faults.dupSame++;
          send(c, 0, false);
          if (inFlightCount < window) send(c, 0, false);
        } else if (kind === 'sha' || kind === 'crc') send(c, 0, false, checksumOf(good, kind === 'sha' ? 'sha256' : 'crc32'));
        else if (kind === 'bad') {
          rec.faults.checksumBad++;
          send(c, r.int(1, 2), true, checksumOf(good, r.chance(0.5) ? 'sha256' : 'crc32'));
        } else {
          rec.faults.wsDrop++;
          send(c, 0, false);
          setTimeout(() => conn.ws.terminate(), r.int(0, 20));
        }
      }
      if (conn.closed === null && !complete && fatal === null && queue.length === 0 && inFlightCount === 0) {
        // Everything this connection sent is answered: wait for `complete` (finalization takes a sync), or learn
        // from a fresh connection what is still missing (chunks another connection holds, or busy ones).
        const waited = await this.#wait(conn, 3000);
        if (!waited) {
          conn.ws.close(1000);
          return { kind: 'again', why: 'nothing left to send, no complete' };
        }
      } else if (conn.inbox.length === 0 && conn.closed === null) {
        const waited = await this.#wait(conn, ctx.config.requestTimeoutMs);
        if (!waited && Date.now() - lastHeard >= ctx.config.requestTimeoutMs) {
          conn.ws.terminate();
          rec.networkErrors++;
          return { kind: 'again', why: 'timeout' };
        }
      }
      // Drain what arrived.
      while (conn.inbox.length > 0) {
        lastHeard = Date.now();
        const m = conn.inbox.shift()!;
        switch (m.t) {
          case 'ack': {
            const e = take(m.c);
            if (!e) {
              rec.violation(`ack for chunk ${m.c}, which is not in flight on this connection`);
              break;
            }
            if (e.badChecksum && m.dup !== true) rec.violation(`chunk ${m.c} with a wrong checksum acknowledged as stored`);
            rec.acked(m.c, e.version, m.dup !== true);
            if (!complete) this.#checks.push(checkDurableAck(ctx, rec, m.c, m.dup === true ? 'ack dup' : 'ack'));
            break;
          }
          case 'error': {
            if (m.c === undefined) {
              fatal = m.code;
              break;
            }
            const e = take(m.c);
            if (!e) rec.violation(`error ${m.code} for chunk ${m.c}, which is not in flight on this connection`);
            if (m.code === 'ERR_CHECKSUM_MISMATCH') {
              if (!e?.badChecksum) rec.violation(`chunk ${m.c} with a correct checksum refused as a mismatch`);
              if (!m.retry) rec.violation('ERR_CHECKSUM_MISMATCH without retry: true');
              queue.push({ c: m.c, version: 0, bad: false });
            } else if (e?.badChecksum) {
              // Refused for another reason (busy, finalizing): the bad bytes were not stored either way.
              queue.push({ c: m.c, version: 0, bad: false });
            } else if (TERMINAL.has(m.code)) {
              fatal = m.code;
            } else {
              if (!['ERR_CHUNK_BUSY', 'ERR_UPLOAD_FINALIZING', 'ERR_SERVER_BUSY'].includes(m.code)) rec.unexpected.push(`ws chunk ${m.c}: ${m.code} ${m.message}`);
              const n = (refusals.get(m.c) ?? 0) + 1;
              refusals.set(m.c, n);
              if (n > MAX_REFUSALS) {
                // Try a fresh connection (rounds are bounded by MAX_ROUNDS) rather than retry here forever.
                conn.ws.close(1000);
                return { kind: 'again', why: `chunk ${m.c} refused ${n} times (${m.code})` };
              }
              // Let a busy chunk's other writer finish before trying again.
              setTimeout(() => {
                queue.push({ c: m.c!, version: 0, bad: false });
                conn.wake?.();
              }, 50 + jitter.int(0, 200));
            }
            break;
          }
          case 'complete':
            complete = true;
            rec.completed(m.fileName);
            this.#checks.push(checkPlaced(ctx, rec, m.fileName, 'updraft.v1 complete'));
            if (m.size !== rec.size) rec.violation(`complete says size ${m.size}, expected ${rec.size}`);
            break;
          case 'window':
            // The server's share of its budget for this connection changed (connections opened or closed).
            window = Math.min(m.window, 2 * this.plan.parallel);
            break;
          case 'progress':
          case 'hello':
            if (m.t === 'hello') rec.violation('second hello on one connection');
            break;
        }
      }
      if (conn.closed !== null && conn.inbox.length === 0) {
        const { code } = conn.closed;
        if (complete) return { kind: 'completed' };
        if (code === 4001 || fatal === 'ERR_UPLOAD_CANCELLED') return this.#cancelSent ? { kind: 'cancelled' } : { kind: 'terminal', code: 'ERR_UPLOAD_CANCELLED' };
        if (fatal !== null && TERMINAL.has(fatal)) return { kind: 'terminal', code: fatal };
        if (code === 4000 || code === 1008 || code === 1009) rec.violation(`connection closed with ${code} ${conn.closed.reason} (${fatal ?? 'no error'})`);
        return { kind: 'again', why: `closed ${code}` };
      }
      if (complete) {
        // The server closes with 1000 after complete; wait for it briefly.
        await this.#wait(conn, 2000);
        if (conn.closed === null) conn.ws.close(1000);
        return { kind: 'completed' };
      }
    }
  }

  /** Waits for a message or the close; false on timeout. */
  #wait(conn: Conn, ms: number): Promise<boolean> {
    if (conn.inbox.length > 0 || conn.closed !== null) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        conn.wake = null;
        resolve(false);
      }, ms);
      conn.wake = () => {
        clearTimeout(t);
        conn.wake = null;
        resolve(true);
      };
    });
  }
}
