/**
 * The Updraft HTTP wire API, driven by fetch (init) and curl (chunks):
 *   POST {base}{prefix}/upload-chunk {"action":"init","fileName","fileSize","chunkSize"} -> 200 {"status":"success","data":{"guid",...}}
 *   PUT  {base}{prefix}/upload-chunk?guid=G&chunk=N  (chunk bytes)                      -> 2xx
 * Used for Updraft and for the discard, sync-main and node-http peers, which speak the same routes.
 * With `tokens`, each upload is sent as the next user in turn (`Authorization: Bearer <token>`): Updraft limits the
 * chunk bytes one user has in flight (issue 6), so 16 uploads at once come from 16 users, as they would in use.
 */
import { runCurl } from '../curl.js';
import type { UploadClient, UploadJob, UploadReceipt } from '../model.js';

export interface ChunkPutOptions {
  readonly baseUrl: string;
  readonly prefix: string;
  readonly timeoutMs: number;
  /** Bearer tokens used in turn, one per upload; none: no Authorization header. */
  readonly tokens?: readonly string[];
}

/** The next token of a round robin, or undefined when there are none. */
export class TokenTurns {
  readonly #tokens: readonly string[];
  #next = 0;

  constructor(tokens: readonly string[] | undefined) {
    this.#tokens = tokens ?? [];
  }

  take(): string | undefined {
    if (this.#tokens.length === 0) return undefined;
    return this.#tokens[this.#next++ % this.#tokens.length];
  }
}

export class ChunkPutClient implements UploadClient {
  readonly startsCurl = true;
  readonly #options: ChunkPutOptions;
  readonly #tokens: TokenTurns;

  constructor(options: ChunkPutOptions) {
    this.#options = options;
    this.#tokens = new TokenTurns(options.tokens);
  }

  describe(inFlight: number): string {
    return `curl PUT x${inFlight}`;
  }

  async upload(job: UploadJob): Promise<UploadReceipt> {
    const { baseUrl, prefix, timeoutMs } = this.#options;
    const route = `${baseUrl}${prefix}/upload-chunk`;
    const token = this.#tokens.take();
    const guid = await initUpload(route, job, timeoutMs, token);
    const { content } = job;
    await runCurl({
      mode: 'parallel',
      maxInFlight: job.inFlight,
      method: 'PUT',
      headers: ['Content-Type: application/octet-stream', ...(token === undefined ? [] : [`Authorization: Bearer ${token}`])],
      transfers: content.chunkPaths.map((file, n) => ({
        url: `${route}?guid=${encodeURIComponent(guid)}&chunk=${n}`,
        file,
        bytes: Math.min(content.chunkSize, content.fileSize - n * content.chunkSize),
      })),
      timeoutMs,
    });
    return { id: guid };
  }
}

/** POST {"action":"init"} to `route`; the guid of the new upload. */
export async function initUpload(route: string, job: UploadJob, timeoutMs: number, token?: string): Promise<string> {
  const response = await fetch(route, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token === undefined ? {} : { authorization: `Bearer ${token}` }) },
    body: JSON.stringify({
      action: 'init',
      fileName: job.fileName,
      fileSize: job.content.fileSize,
      chunkSize: job.content.chunkSize,
    }),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`init answered ${response.status}: ${text.slice(0, 200)}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error(`init answered non-JSON: ${text.slice(0, 200)}`);
  }
  const envelope = parsed as { status?: unknown; data?: { guid?: unknown } };
  if (envelope.status !== 'success' || typeof envelope.data?.guid !== 'string' || envelope.data.guid === '') {
    throw new Error(`init answered without status=success and data.guid: ${text.slice(0, 200)}`);
  }
  return envelope.data.guid;
}
