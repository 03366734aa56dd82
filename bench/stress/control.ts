/**
 * The control requests every simulated client makes, whatever its chunk transport: init, upload-status and cancel.
 * They go through the proxy without faults (the server may still die under them in crash mode), and are retried
 * like a real client retries: on a network error or a 503, after a short, growing pause, until the run's deadline.
 */
import { request } from './http-client.js';
import type { Envelope, Outcome, Reply } from './http-client.js';
import type { UploadRecord } from './ledger.js';
import type { FaultProxy } from './fault-proxy.js';
import type { Prng } from './prng.js';
import type { StressConfig } from './plan.js';

export interface ClientContext {
  readonly config: StressConfig;
  readonly proxy: FaultProxy;
  /** Epoch ms after which clients stop. */
  readonly deadline: number;
  /**
   * The chunk numbers in an upload's journal on disk (self-started server, `chunk` durability), or null when there
   * is none (the upload completed or ended meanwhile). The engine appends a chunk there and syncs it before any
   * reply may acknowledge the chunk (durability.md invariant 4), so every acknowledgement must find its chunk here:
   * an oracle for "acknowledged before durable" that needs no lucky SIGKILL.
   */
  journal?: (guid: string) => Promise<Set<number> | null>;
  /**
   * Why a completed upload's file is not in place yet (null: it is): the file under `finalName` in the run's folder,
   * `size` bytes, and no staging data of `guid` left. The engine moves the file and syncs its folder before any reply
   * may say "complete" (durability.md invariant 6). Absent when the harness cannot see the server's folder.
   */
  placed?: (guid: string, finalName: string | undefined, size: number) => Promise<string | null>;
}

/** After a 200 for chunk `c` of an upload that is not complete: the chunk must already be in the journal. */
export async function checkDurableAck(ctx: ClientContext, rec: UploadRecord, c: number, how: string): Promise<void> {
  if (!ctx.journal || rec.guid === null) return;
  const j = await ctx.journal(rec.guid);
  if (j === null || j.has(c)) return;
  rec.acksNotDurable++;
  rec.violation(`chunk ${c} acknowledged (${how}) before it was in the journal: a crash now would lose it`);
}

/**
 * After a reply that says "complete" (a chunk's, a WebSocket `complete`, a 0-byte init's): the file must already be
 * in place. Checked at once: a restart finishes any upload whose every chunk is durable, so a completion announced
 * before the move would look right by the end of the run.
 */
export async function checkPlaced(ctx: ClientContext, rec: UploadRecord, finalName: string | undefined, how: string): Promise<void> {
  if (!ctx.placed || rec.guid === null) return;
  const problem = await ctx.placed(rec.guid, finalName, rec.size);
  if (problem === null) return;
  rec.completedBeforePlaced++;
  rec.violation(`"complete" (${how}) before the file was in place: ${problem}`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function pastDeadline(ctx: ClientContext): boolean {
  return Date.now() >= ctx.deadline;
}

/** Codes that end an upload for good (the client stops and reports it). */
export const TERMINAL = new Set([
  'ERR_UPLOAD_CANCELLED',
  'ERR_UPLOAD_EXPIRED',
  'ERR_UPLOAD_FAILED',
  'ERR_STORAGE_FAILED',
  'ERR_UPLOAD_NOT_FOUND',
  'ERR_HOOK_FAILED',
  'ERR_FILE_EXISTS',
]);

/** Retries a control request until it gets a reply that is not "try again" (network error, 503), or the deadline. */
export async function controlRequest(
  ctx: ClientContext,
  rng: Prng,
  method: string,
  path: string,
  body: unknown,
  rec: UploadRecord,
): Promise<Reply | null> {
  let pause = 50;
  for (;;) {
    if (pastDeadline(ctx)) return null;
    const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
    rec.requests++;
    const out: Outcome = await request(ctx.proxy, method, path, payload, { timeoutMs: ctx.config.requestTimeoutMs, ...(rec.token ? { auth: rec.token } : {}) }, payload ? 'application/json' : undefined);
    if (out.kind === 'reply' && out.reply.status !== 503) return out.reply;
    if (out.kind === 'network') rec.networkErrors++;
    await sleep(pause + rng.int(0, pause));
    pause = Math.min(1000, pause * 2);
  }
}

export interface InitResult {
  guid: string;
  totalChunks: number;
  /** A 0-byte upload completes at init. */
  complete: boolean;
  finalName?: string;
}

/**
 * Init under `baseName`. When the reply is lost (network error), the server may or may not have created the
 * upload. Without `idempotencyKey` the retry uses a new name, so an upload the client never heard about cannot be
 * mistaken for this one, and every name tried is recorded (verify.ts accounts for what an unanswered init left
 * behind). With a key, every attempt sends the same name under the same key, and the server must answer a repeat
 * with the upload the first attempt made (run.ts counts any other upload under the name as a violation). 503 and 429
 * are retried; any other refusal of these well-formed inits is a violation.
 */
export async function initUpload(
  ctx: ClientContext,
  rng: Prng,
  rec: UploadRecord,
  baseName: string,
  targetPath: string,
  idempotencyKey?: string,
): Promise<InitResult | null> {
  let pause = 50;
  for (let attempt = 1; ; attempt++) {
    if (pastDeadline(ctx)) return null;
    const fileName = attempt === 1 || idempotencyKey !== undefined ? baseName : baseName.replace(/\.bin$/, `~${attempt}.bin`);
    const entry = { fileName, answered: false };
    rec.inits.push(entry);
    const body = Buffer.from(JSON.stringify({ action: 'init', fileName, fileSize: rec.size, chunkSize: rec.chunkSize, targetPath }));
    rec.requests++;
    // A keyed init's reply is lost now and then (the proxy resets the connection as the reply begins): its retry
    // must get the upload this attempt made. Unkeyed inits keep their replies outside crashes (see run.ts orphans).
    const loseReply = idempotencyKey !== undefined && rng.chance(0.25 * ctx.config.faultScale);
    if (loseReply) rec.faults.loseReply++;
    const opts = {
      timeoutMs: ctx.config.requestTimeoutMs,
      ...(rec.token ? { auth: rec.token } : {}),
      ...(idempotencyKey ? { idempotencyKey } : {}),
      ...(loseReply ? { plan: { kind: 'loseReply' } as const } : {}),
    };
    const out = await request(ctx.proxy, 'POST', `${ctx.config.prefix}/upload-chunk`, body, opts, 'application/json');
    if (out.kind === 'reply') {
      entry.answered = true;
      const { status, json } = out.reply;
      if (status === 200 && json?.status === 'success' && json.data) {
        const d = json.data;
        if (d.totalChunks !== rec.totalChunks || d.chunkSize !== rec.chunkSize || d.fileSize !== rec.size) {
          rec.violation(`init reply layout ${d.fileSize}/${d.chunkSize}/${d.totalChunks} differs from the request`);
        }
        rec.guid = String(d.guid);
        const r: InitResult = { guid: rec.guid, totalChunks: Number(d.totalChunks), complete: d.complete === true };
        if (typeof d.finalName === 'string') r.finalName = d.finalName;
        return r;
      }
      if (status !== 503 && status !== 429) {
        rec.outcome = 'failed';
        rec.errorCode = json?.code ?? `HTTP ${status}`;
        rec.violation(`init refused: ${status} ${out.reply.text.slice(0, 200)}`);
        return null;
      }
    } else {
      rec.networkErrors++;
    }
    await sleep(pause + rng.int(0, pause));
    pause = Math.min(1000, pause * 2);
  }
}

export type StatusResult =
  | { kind: 'active'; missing: number[]; receivedChunks: number; fileName: string }
  | { kind: 'completed'; finalName: string | undefined }
  | { kind: 'ended'; code: string; reply: Reply }
  | { kind: 'deadline' };

export async function uploadStatus(ctx: ClientContext, rng: Prng, rec: UploadRecord): Promise<StatusResult> {
  const reply = await controlRequest(ctx, rng, 'GET', `${ctx.config.prefix}/upload-status?guid=${encodeURIComponent(rec.guid!)}`, undefined, rec);
  if (reply === null) return { kind: 'deadline' };
  const json: Envelope | null = reply.json;
  if (reply.status === 200 && json?.data) {
    const d = json.data;
    if (d.uploadStatus === 'completed') return { kind: 'completed', finalName: d.finalName as string | undefined };
    if (d.uploadStatus === 'active') {
      const missing = Array.isArray(d.missingChunks) ? (d.missingChunks as number[]) : [];
      if (d.receivedChunks + missing.length !== rec.totalChunks) {
        rec.violation(`status: receivedChunks ${d.receivedChunks} + missing ${missing.length} != totalChunks ${rec.totalChunks}`);
      }
      return { kind: 'active', missing, receivedChunks: Number(d.receivedChunks), fileName: String(d.fileName) };
    }
    const code = d.uploadStatus === 'failed' ? 'ERR_UPLOAD_FAILED' : d.uploadStatus === 'cancelled' ? 'ERR_UPLOAD_CANCELLED' : `status ${String(d.uploadStatus)}`;
    return { kind: 'ended', code, reply };
  }
  return { kind: 'ended', code: json?.code ?? `HTTP ${reply.status}`, reply };
}

export type CancelResult = 'cancelled' | 'completed' | 'ended' | 'deadline';

export async function cancelUpload(ctx: ClientContext, rng: Prng, rec: UploadRecord, how: 'POST' | 'DELETE'): Promise<CancelResult> {
  for (;;) {
    const reply =
      how === 'POST'
        ? await controlRequest(ctx, rng, 'POST', `${ctx.config.prefix}/upload-chunk`, { action: 'cancel', guid: rec.guid }, rec)
        : await controlRequest(ctx, rng, 'DELETE', `${ctx.config.prefix}/upload-chunk?guid=${encodeURIComponent(rec.guid!)}`, undefined, rec);
    if (reply === null) return 'deadline';
    const code = reply.json?.code;
    if (reply.status === 200) return 'cancelled';
    // A retried cancel whose first reply was lost finds the upload already cancelled.
    if (code === 'ERR_UPLOAD_CANCELLED') return 'cancelled';
    // Too late: the upload completed (or is completing) first.
    if (code === 'ERR_UPLOAD_FINALIZING') return 'completed';
    if (code === 'ERR_UPLOAD_EXPIRED' || code === 'ERR_UPLOAD_FAILED' || code === 'ERR_UPLOAD_NOT_FOUND') {
      rec.errorCode = code;
      return 'ended';
    }
    rec.unexpected.push(`cancel: ${reply.status} ${reply.text.slice(0, 200)}`);
    await sleep(100 + rng.int(0, 200));
  }
}
