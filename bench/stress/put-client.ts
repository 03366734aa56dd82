/**
 * A simulated client that sends its chunks as HTTP PUTs (raw `?chunk=N` bodies, or the PSWebHost 10-byte body
 * header), in shuffled order, `parallel` at a time, and misbehaves as planned: cut and reset connections, stalls,
 * slow bodies, the same chunk twice or on several connections at once, different bytes under the same chunk number,
 * a cancel in the middle, or vanishing for good.
 *
 * It retries like a real client: after each round of sends it reads upload-status and sends what is missing, until
 * the upload completes or ends. Every reply is recorded in the ledger (ledger.ts), which the final checks use.
 */
import type { UploadContent } from './content.js';
import type { FaultPlan } from './fault-proxy.js';
import { request, requestLength } from './http-client.js';
import type { Outcome } from './http-client.js';
import type { UploadRecord } from './ledger.js';
import type { UploadPlan } from './plan.js';
import type { Prng } from './prng.js';
import { TERMINAL, cancelUpload, checkDurableAck, checkPlaced, pastDeadline, sleep, uploadStatus } from './control.js';
import type { ClientContext } from './control.js';


type SendResult = 'stored' | 'retry' | 'terminal';

export class PutClient {
  #sends = 0;
  #terminal: string | null = null;
  #vanished = false;
  #cancel: Promise<void> | null = null;
  #cancelled = false;
  #completedDuringCancel = false;
  #cancelTimedOut = false;
  /**
   * Retry pauses draw from their own stream: how many retries happen depends on timing, and must not shift the
   * draws that decide what the client does (orders, faults), so that a seed replays the same plan.
   */
  readonly #jitter: Prng;

  constructor(
    private readonly ctx: ClientContext,
    private readonly plan: UploadPlan,
    private readonly rec: UploadRecord,
    private readonly content: UploadContent,
    private readonly rng: Prng,
  ) {
    this.#jitter = rng.split('jitter');
  }

  /** Sends every chunk, then what upload-status lists; with `resume`, starts from upload-status (the drain). */
  async run(resume = false): Promise<void> {
    const { rec } = this;
    let pending = this.rng.split('order 0').shuffle([...Array(rec.totalChunks).keys()]);
    if (resume) {
      const missing = await this.#missing();
      if (missing === null) return;
      pending = this.rng.split('order 0').shuffle(missing);
    }
    for (let round = 0; ; round++) {
      if (!rec.startRound(round, `rounds; chunks still missing: ${pending.slice(0, 10).join(', ')}`)) return;
      if (pastDeadline(this.ctx)) {
        rec.outcome = 'unfinished';
        return;
      }
      let networkOnly = pending.length > 0;
      const queue = pending.slice();
      await Promise.all(
        Array.from({ length: Math.min(this.plan.parallel, Math.max(1, queue.length)) }, async () => {
          while (queue.length > 0 && !this.#stop()) {
            const c = queue.shift()!;
            const r = await this.#sendJob(c, round);
            if (r !== 'retry') networkOnly = false;
          }
        }),
      );
      if (this.#cancel) {
        await this.#cancel;
        await this.#afterCancel();
        return;
      }
      if (this.#vanished) {
        rec.outcome = 'vanished';
        return;
      }
      if (this.#terminal !== null) {
        this.#end(this.#terminal);
        return;
      }
      if (rec.outcome === 'completed') return;
      if (networkOnly) await sleep(Math.min(1000, 50 * 2 ** Math.min(round, 5)) + this.#jitter.int(0, 100));
      // Resume from the server's view of the upload.
      const missing = await this.#missing();
      if (missing === null) return;
      pending = this.rng.split(`order ${round + 1}`).shuffle(missing);
      if (pending.length === 0) await sleep(50 + this.#jitter.int(0, 100)); // every chunk stored: finalizing
    }
  }

  /** upload-status: the chunks still missing, or null when the upload is over (its outcome recorded). */
  async #missing(): Promise<number[] | null> {
    const { rec } = this;
    const st = await uploadStatus(this.ctx, this.#jitter, rec);
    if (st.kind === 'deadline') {
      rec.outcome = 'unfinished';
      return null;
    }
    if (st.kind === 'completed') {
      rec.completed(st.finalName);
      return null;
    }
    if (st.kind === 'ended') {
      this.#end(st.code);
      return null;
    }
    if (rec.completionSeen) {
      rec.lostCompletion = true;
      rec.violation('a "complete" reply was followed by a status that is not completed');
    }
    rec.checkMissing(st.missing);
    return st.missing;
  }

  #stop(): boolean {
    return this.#terminal !== null || this.#vanished || this.#cancelled || this.rec.outcome === 'completed' || pastDeadline(this.ctx);
  }

  #end(code: string): void {
    this.rec.endedByServer(code);
  }

  /** After a cancel: the upload is gone, or it completed first; a later chunk must be refused with 410. */
  async #afterCancel(): Promise<void> {
    const { rec } = this;
    if (this.#completedDuringCancel || rec.outcome === 'completed') {
      const st = await uploadStatus(this.ctx, this.#jitter, rec);
      if (st.kind === 'completed') rec.completed(st.finalName);
      else if (st.kind === 'active') {
        // The cancel said "finalizing": completion is in progress; wait for it.
        for (let i = 0; i < 100; i++) {
          await sleep(100);
          const again = await uploadStatus(this.ctx, this.#jitter, rec);
          if (again.kind === 'completed') {
            rec.completed(again.finalName);
            return;
          }
          if (again.kind !== 'active') break;
        }
        rec.violation('cancel answered "finalizing" but the upload never completed');
        rec.outcome = 'failed';
      } else if (st.kind === 'ended') {
        this.#end(st.code);
      }
      return;
    }
    if (rec.outcome === 'failed') return;
    if (this.#cancelTimedOut) {
      rec.outcome = 'unfinished';
      return;
    }
    rec.outcome = 'cancelled';
    if (rec.totalChunks === 0) return;
    // A chunk after the cancel is refused and writes nothing.
    const c = this.rng.split('after cancel').int(0, rec.totalChunks - 1);
    for (let i = 0; i < 20; i++) {
      const out = await this.#put(c, 0, {}, false);
      if (out.kind !== 'reply') {
        await sleep(100);
        continue;
      }
      const code = out.reply.json?.code;
      if (out.reply.status !== 410 || code !== 'ERR_UPLOAD_CANCELLED') {
        rec.violation(`a chunk after a successful cancel got ${out.reply.status} ${code ?? out.reply.json?.message}`);
      }
      return;
    }
  }

  /** One chunk, with whatever fault this attempt draws. */
  async #sendJob(c: number, round: number): Promise<SendResult> {
    const { rec, plan } = this;
    const n = this.#sends++;
    const r = this.rng.split(`chunk ${c} round ${round}`);
    if (plan.cancelAtSend === n && !this.#cancel) {
      rec.faults.cancel++;
      rec.cancelAsked = true;
      const how = r.chance(0.5) ? 'POST' : 'DELETE';
      this.#cancel = cancelUpload(this.ctx, this.#jitter, rec, how).then((res) => {
        if (res === 'cancelled') this.#cancelled = true;
        else if (res === 'completed') this.#completedDuringCancel = true;
        else if (res === 'ended') rec.endedByServer(rec.errorCode!);
        else this.#cancelTimedOut = true;
      });
    }
    if (plan.vanishAtSend === n) {
      rec.faults.vanish++;
      const usePs = r.chance(plan.psForm);
      const total = this.#length(c, usePs);
      await this.#put(c, 0, { vanishAfter: r.int(1, Math.max(1, total - 1)) }, usePs);
      this.#vanished = true;
      return 'terminal';
    }
    const ps = (): boolean => r.chance(plan.psForm);
    const f = this.ctx.config.faultScale;
    const kind = r.weighted({
      none: 60,
      cut: 9 * f,
      reset: 6 * f,
      stall: 6 * f,
      dupSame: 6 * f,
      concurrent: 5 * f,
      altAfter: plan.alt ? 6 : 0,
      altCut: plan.alt ? 5 : 0,
      altConcurrent: plan.alt ? 4 : 0,
    });
    const slow = plan.slow ? this.#slowFor(c, r) : undefined;
    switch (kind) {
      case 'none':
        return this.#send(c, 0, slow ? { slow } : {}, ps());
      case 'cut':
      case 'reset': {
        rec.faults[kind]++;
        const usePs = ps();
        const total = this.#length(c, usePs);
        // Mostly mid-body; sometimes after the whole request, so that only the reply is lost.
        const afterBytes = r.chance(0.25) ? total : r.int(0, total - 1);
        return this.#send(c, 0, { plan: { kind, afterBytes } }, usePs);
      }
      case 'stall': {
        rec.faults.stall++;
        const usePs = ps();
        const total = this.#length(c, usePs);
        return this.#send(c, 0, { plan: { kind: 'stall', atBytes: r.int(0, total), ms: r.int(50, 2500) } }, usePs);
      }
      case 'dupSame': {
        rec.faults.dupSame++;
        const first = await this.#send(c, 0, {}, ps());
        if (first !== 'stored') return first;
        return this.#send(c, 0, {}, ps()); // stored already: a second "newly stored" reply is a violation (ledger)
      }
      case 'concurrent': {
        rec.faults.concurrent++;
        const k = r.int(2, 3);
        const results = await Promise.all(Array.from({ length: k }, () => this.#send(c, 0, {}, ps())));
        return results.includes('terminal') ? 'terminal' : results.includes('stored') ? 'stored' : 'retry';
      }
      case 'altAfter': {
        rec.faults.altBytes++;
        const first = await this.#send(c, 0, {}, ps());
        if (first !== 'stored') return first;
        return this.#send(c, r.int(1, 2), {}, ps()); // must be a duplicate, the first bytes kept
      }
      case 'altCut': {
        rec.faults.altCut++;
        // Different bytes cut before their end: written in part, never stored (invariant 1); then the real bytes.
        const usePs = ps();
        const total = this.#length(c, usePs);
        const cut = await this.#send(c, r.int(1, 2), { plan: { kind: r.chance(0.5) ? 'cut' : 'reset', afterBytes: r.int(0, total - 1) } }, usePs);
        if (cut === 'terminal') return cut;
        return this.#send(c, 0, {}, ps());
      }
      case 'altConcurrent': {
        rec.faults.altBytes++;
        rec.faults.concurrent++;
        // Either may reach the server first; whichever is answered "Chunk received" is what the file must hold.
        const alt = r.int(1, 2);
        const order = r.chance(0.5) ? [alt, 0] : [0, alt];
        const results = await Promise.all(order.map((v) => this.#send(c, v, {}, ps())));
        return results.includes('terminal') ? 'terminal' : results.includes('stored') ? 'stored' : 'retry';
      }
    }
  }

  /** Pieces and pauses for a slow sender, bounded to about 3 s per chunk. */
  #slowFor(c: number, r: Prng): { pieceBytes: number; delayMs: number } {
    this.rec.faults.slow++;
    const len = this.content.chunkLength(c);
    const delayMs = r.int(2, 25);
    const pieces = Math.max(1, Math.floor(3000 / delayMs));
    return { pieceBytes: Math.max(r.int(1024, 64 * 1024), Math.ceil(len / pieces)), delayMs };
  }

  #path(c: number, ps: boolean): string {
    const g = encodeURIComponent(this.rec.guid!);
    return ps ? `${this.ctx.config.prefix}/upload-chunk?guid=${g}` : `${this.ctx.config.prefix}/upload-chunk?guid=${g}&chunk=${c}`;
  }

  #length(c: number, ps: boolean): number {
    return requestLength('PUT', this.#path(c, ps), this.content.chunkLength(c) + (ps ? 10 : 0), 'application/octet-stream', this.rec.token);
  }

  async #put(c: number, version: number, opts: { plan?: FaultPlan; slow?: { pieceBytes: number; delayMs: number }; vanishAfter?: number }, ps: boolean): Promise<Outcome> {
    const bytes = this.content.chunk(c, version);
    let body: Buffer = bytes;
    if (ps) {
      body = Buffer.alloc(10 + bytes.length);
      body.writeUInt16LE(0, 0);
      body.writeUInt32LE(c, 2);
      body.writeUInt32LE(Math.min(0xffff_ffff, Math.max(0, this.rec.size - (c + 1) * this.rec.chunkSize)), 6);
      body.set(bytes, 10);
    }
    this.rec.requests++;
    const out = await request(this.ctx.proxy, 'PUT', this.#path(c, ps), body, { ...opts, timeoutMs: this.ctx.config.requestTimeoutMs, ...(this.rec.token ? { auth: this.rec.token } : {}) }, 'application/octet-stream');
    if (out.kind === 'network') this.rec.networkErrors++;
    return out;
  }

  /** Sends chunk `c` as `version` and records the reply in the ledger (which catches a chunk counted twice). */
  async #send(
    c: number,
    version: number,
    opts: { plan?: FaultPlan; slow?: { pieceBytes: number; delayMs: number } },
    ps: boolean,
  ): Promise<SendResult> {
    const { rec } = this;
    const ch = rec.chunks[c]!;
    const p = opts.plan;
    const total = this.#length(c, ps);
    // Could the whole body reach the server? Then this version may end up stored even if no reply comes back.
    if (!p || p.kind === 'none' || p.kind === 'stall' || p.kind === 'loseReply' || p.afterBytes >= total) ch.possible.add(version);
    const out = await this.#put(c, version, opts, ps);
    if (out.kind !== 'reply') return 'retry';
    const { status, json, text } = out.reply;
    if (status === 200 && json?.status === 'success' && json.data) {
      const d = json.data;
      if (d.chunkNumber !== c) rec.violation(`reply for chunk ${c} names chunk ${d.chunkNumber}`);
      const isNew = json.message === 'Chunk received' || json.message === 'Upload completed successfully';
      if (!isNew && json.message !== 'Chunk already received') rec.unexpected.push(`PUT 200 with message "${json.message}"`);
      rec.acked(c, version, isNew);
      if (d.complete === true) {
        const name = typeof d.fileName === 'string' ? d.fileName : undefined;
        rec.completed(name);
        await checkPlaced(this.ctx, rec, name, `PUT of chunk ${c}: ${json.message}`);
      } else await checkDurableAck(this.ctx, rec, c, json.message);
      return 'stored';
    }
    const code = json?.code ?? `HTTP ${status}`;
    if (TERMINAL.has(code)) {
      if (code === 'ERR_UPLOAD_CANCELLED' && (this.#cancel || this.#cancelled)) return 'terminal';
      this.#terminal ??= code;
      return 'terminal';
    }
    // Retryable: the chunk is busy (another connection is writing it), the upload is finalizing, the server is
    // shutting down, an internal error.
    if (!['ERR_CHUNK_BUSY', 'ERR_UPLOAD_FINALIZING', 'ERR_SHUTTING_DOWN', 'ERR_SERVER_BUSY', 'ERR_RATE_LIMITED'].includes(code)) {
      rec.unexpected.push(`PUT chunk ${c}: ${status} ${text.slice(0, 200)}`);
    }
    return 'retry';
  }
}
