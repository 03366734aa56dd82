/**
 * A simulated client on the PSWebHost WebSocket protocol (docs/PROTOCOL.md, "PSWebHost WebSocket messages"): no
 * subprotocol, a JSON `chunk` text message announcing each chunk and a binary message with its bytes, `progress`
 * replies, `complete`. Through the fault proxy, which cuts, resets or stalls the connection mid-message.
 *
 * PSWebHost errors name no chunk, and the server sends nothing on open, so the client resumes as the PSWebHost file
 * explorer does: upload-status before each connection, then the missing chunks, pipelined up to its window. Per chunk
 * it may send the same bytes twice, or drop the connection right after a chunk; some uploads vanish mid-chunk, and
 * some cancel (over HTTP: the protocol has no cancel message) while chunks are in flight.
 */
import WebSocket from 'ws';
import type { UploadContent } from './content.js';
import { cancelUpload, checkDurableAck, checkPlaced, pastDeadline, sleep, TERMINAL, uploadStatus } from './control.js';
import type { CancelResult } from './control.js';
import type { ClientContext } from './control.js';
import type { FaultPlan } from './fault-proxy.js';
import type { UploadRecord } from './ledger.js';
import type { UploadPlan } from './plan.js';
import type { Prng } from './prng.js';

/** Close codes that end the upload (docs/PROTOCOL.md, close codes); the `error` before them names the code. */
const CLOSE_TERMINAL: Record<number, string> = { 4001: 'ERR_UPLOAD_CANCELLED', 4010: 'ERR_UPLOAD_EXPIRED', 4009: 'ERR_UPLOAD_FAILED' };

type PsMessage =
  | { type: 'progress'; chunkNumber: number; receivedChunks: number; totalChunks: number; receivedBytes: number; complete: boolean }
  | { type: 'complete'; fileName: string; size: number }
  | { type: 'error'; code: string; message: string };

type SessionEnd = { kind: 'completed' } | { kind: 'terminal'; code: string } | { kind: 'vanished' } | { kind: 'again'; why: string };

export class PsClient {
  readonly #checks: Array<Promise<void>> = [];
  readonly #jitter: Prng;
  #sends = 0;
  /** The cancel this client sent (over HTTP, DELETE), and what it was answered. */
  #cancel: Promise<CancelResult> | null = null;

  constructor(
    private readonly ctx: ClientContext,
    private readonly plan: UploadPlan,
    private readonly rec: UploadRecord,
    private readonly content: UploadContent,
    private readonly rng: Prng,
  ) {
    this.#jitter = rng.split('jitter');
  }

  async run(): Promise<void> {
    try {
      await this.#run();
      if (this.#cancel) await this.#afterCancel(await this.#cancel);
    } finally {
      await Promise.all(this.#checks);
    }
  }

  async #run(): Promise<void> {
    const { rec } = this;
    let pause = 50;
    for (let round = 0; ; round++) {
      if (!rec.startRound(round, 'connections')) return;
      const st = await uploadStatus(this.ctx, this.#jitter, rec);
      if (st.kind === 'deadline' || pastDeadline(this.ctx)) {
        rec.outcome = 'unfinished';
        return;
      }
      if (st.kind === 'completed') {
        rec.completed(st.finalName);
        return;
      }
      if (st.kind === 'ended') {
        rec.endedByServer(st.code);
        return;
      }
      rec.checkMissing(st.missing);
      const end = await this.#session(this.rng.split(`conn ${round}`), st.missing);
      if (end.kind === 'completed') return;
      if (end.kind === 'vanished') {
        rec.outcome = 'vanished';
        return;
      }
      if (end.kind === 'terminal') {
        if (end.code !== 'ERR_UPLOAD_CANCELLED' || this.#cancel === null) rec.endedByServer(end.code);
        return;
      }
      if (this.#cancel) return;
      await sleep(pause + this.#jitter.int(0, pause));
      pause = Math.min(1000, pause * 2);
    }
  }

  /** After our cancel: cancelled, or completed first (the cancel came too late), never anything else. */
  async #afterCancel(res: CancelResult): Promise<void> {
    const { rec } = this;
    if (res === 'cancelled') rec.outcome = 'cancelled';
    else if (res === 'deadline') rec.outcome = 'unfinished';
    else if (res === 'ended') rec.endedByServer(rec.errorCode!);
    else {
      const st = await uploadStatus(this.ctx, this.#jitter, rec);
      if (st.kind === 'completed') rec.completed(st.finalName);
      else if (st.kind !== 'deadline') rec.violation(`cancel answered "finalizing", then the upload reads as ${st.kind === 'ended' ? st.code : st.kind}`);
    }
  }

  async #session(r: Prng, missing: number[]): Promise<SessionEnd> {
    const { rec, ctx, content } = this;
    const f = ctx.config.faultScale;
    const kind = r.weighted({ none: 68, cut: 12 * f, reset: 8 * f, stall: 12 * f });
    const approx = Math.min(rec.size, 8 * rec.chunkSize) + 400;
    const fault: FaultPlan =
      kind === 'none' ? { kind } : kind === 'stall' ? { kind, atBytes: r.int(0, approx), ms: r.int(50, 2000) } : { kind, afterBytes: r.int(0, approx) };
    if (fault.kind !== 'none') rec.faults[fault.kind]++;

    const url = `http://127.0.0.1:${ctx.proxy.port}`.replace(/^http/, 'ws') + `${ctx.config.prefix}/upload-chunk?guid=${encodeURIComponent(rec.guid!)}`;
    const ws = new WebSocket(url, {
      headers: rec.token ? { authorization: `Bearer ${rec.token}` } : {},
      maxPayload: 1024 * 1024,
      createConnection: () => ctx.proxy.connectSync(fault),
      handshakeTimeout: ctx.config.requestTimeoutMs,
    });
    rec.requests++;
    const inbox: PsMessage[] = [];
    let closed: { code: number; reason: string } | null = null;
    let wake: (() => void) | null = null;
    const opened = await new Promise<string | null>((resolve) => {
      ws.once('open', () => resolve(null));
      ws.once('unexpected-response', (_req, res) => resolve(`upgrade answered ${res.statusCode}`));
      ws.once('error', (e: Error & { code?: string }) => resolve(e.code ?? e.message));
    });
    ws.on('error', () => {});
    if (opened !== null) {
      ws.terminate();
      rec.networkErrors++;
      return { kind: 'again', why: opened };
    }
    ws.on('message', (data: Buffer, binary: boolean) => {
      if (binary) rec.violation('binary message from the server on a PSWebHost connection');
      else {
        try {
          inbox.push(JSON.parse(data.toString('utf8')) as PsMessage);
        } catch {
          rec.violation(`server message is not JSON: ${data.toString('utf8').slice(0, 80)}`);
        }
      }
      wake?.();
    });
    ws.on('close', (code: number, reason: Buffer) => {
      closed = { code, reason: reason.toString() };
      wake?.();
    });
    const waitMessage = (ms: number): Promise<boolean> =>
      inbox.length > 0 || closed !== null
        ? Promise.resolve(true)
        : new Promise((resolve) => {
            const t = setTimeout(() => {
              wake = null;
              resolve(false);
            }, ms);
            wake = () => {
              clearTimeout(t);
              wake = null;
              resolve(true);
            };
          });

    const window = Math.min(8, 2 * this.plan.parallel);
    const queue = r.shuffle(missing);
    let unanswered = 0;
    let complete = false;
    let fatal: string | null = null;
    const send = (c: number): void => {
      const bytes = content.chunk(c, 0);
      rec.chunks[c]!.possible.add(0);
      ws.send(JSON.stringify({ type: 'chunk', chunkNumber: c, bytesRemaining: rec.size - c * rec.chunkSize - bytes.length }));
      ws.send(bytes, { binary: true });
      unanswered++;
    };
    for (;;) {
      if (!complete && pastDeadline(ctx)) {
        ws.close(1000);
        return { kind: 'again', why: 'deadline' };
      }
      while (!complete && fatal === null && closed === null && queue.length > 0 && unanswered < window) {
        const c = queue.shift()!;
        const n = this.#sends++;
        if (this.plan.cancelAtSend === n && this.#cancel === null) {
          rec.faults.cancel++;
          rec.cancelAsked = true;
          this.#cancel = cancelUpload(ctx, this.#jitter, rec, 'DELETE');
        }
        if (this.plan.vanishAtSend === n) {
          rec.faults.vanish++;
          send(c);
          setTimeout(() => ws.terminate(), r.int(0, 5)); // the server sees the message cut short, or whole and no client
          return { kind: 'vanished' };
        }
        const what = r.weighted({ none: 84, dup: 10 * f, drop: 3 * f });
        send(c);
        if (what === 'dup') {
          rec.faults.dupSame++;
          if (unanswered < window) send(c);
        } else if (what === 'drop') {
          rec.faults.wsDrop++;
          setTimeout(() => ws.terminate(), r.int(0, 20));
        }
      }
      if (closed === null && !complete && fatal === null && queue.length === 0 && unanswered <= 0) {
        // Everything sent is answered. Refused chunks (busy) are not known by number: resume from upload-status.
        if (rec.chunks.some((ch) => !ch.acked)) {
          ws.close(1000);
          return { kind: 'again', why: 'chunks refused; resume from status' };
        }
        // Every chunk acknowledged and no `complete` yet: the file is being placed.
        if (!(await waitMessage(3000))) {
          ws.close(1000);
          return { kind: 'again', why: 'nothing left to send, no complete' };
        }
      } else if (inbox.length === 0 && closed === null) {
        if (!(await waitMessage(ctx.config.requestTimeoutMs))) {
          ws.terminate();
          rec.networkErrors++;
          return { kind: 'again', why: 'timeout' };
        }
      }
      while (inbox.length > 0) {
        const m = inbox.shift()!;
        if (m.type === 'progress') {
          if (m.chunkNumber < 0) continue; // a getProgress answer, or the completion notice of another connection
          unanswered--;
          if (m.chunkNumber >= rec.totalChunks) rec.violation(`progress for chunk ${m.chunkNumber}, past the last chunk`);
          else {
            // PSWebHost does not say whether the chunk was new: every reply counts as an acknowledgement.
            rec.acked(m.chunkNumber, 0, false);
            if (!m.complete) this.#checks.push(checkDurableAck(ctx, rec, m.chunkNumber, 'pswebhost progress'));
          }
          if (m.totalChunks !== rec.totalChunks) rec.violation(`progress says ${m.totalChunks} chunks, expected ${rec.totalChunks}`);
        } else if (m.type === 'complete') {
          complete = true;
          rec.completed(m.fileName);
          this.#checks.push(checkPlaced(ctx, rec, m.fileName, 'pswebhost complete'));
          if (m.size !== rec.size) rec.violation(`complete says size ${m.size}, expected ${rec.size}`);
        } else if (m.type === 'error') {
          if (TERMINAL.has(m.code)) fatal = m.code;
          else {
            // Errors name no chunk: one binary message was refused (busy, server busy); upload-status resends it.
            unanswered--;
            if (!['ERR_CHUNK_BUSY', 'ERR_SERVER_BUSY', 'ERR_UPLOAD_FINALIZING'].includes(m.code)) rec.unexpected.push(`pswebhost: ${m.code} ${m.message}`);
          }
        } else {
          rec.violation(`unknown PSWebHost message ${JSON.stringify(m).slice(0, 80)}`);
        }
      }
      if (closed !== null) {
        const { code, reason } = closed as { code: number; reason: string };
        if (complete) return { kind: 'completed' };
        if (fatal !== null) return { kind: 'terminal', code: fatal };
        if (CLOSE_TERMINAL[code] !== undefined) return { kind: 'terminal', code: CLOSE_TERMINAL[code] };
        if (code === 1008 || code === 1009) rec.violation(`connection closed with ${code} ${reason}`);
        return { kind: 'again', why: `closed ${code}` };
      }
      if (complete) {
        await waitMessage(2000); // the server closes with 1000 after complete
        if (closed === null) ws.close(1000);
        return { kind: 'completed' };
      }
      if (fatal !== null) {
        await waitMessage(2000);
        ws.terminate();
        return { kind: 'terminal', code: fatal };
      }
    }
  }
}
