/**
 * WebDAV PUT as nginx takes it: every chunk is its own file, PUT to {base}/dav/{upload}/{chunk} (no init request;
 * `create_full_put_path` makes the folder). Same curl batch as the chunked clients, so the request pattern matches.
 */
import { runCurl } from '../curl.js';
import type { UploadClient, UploadJob, UploadReceipt } from '../model.js';

export class DavPutClient implements UploadClient {
  readonly startsCurl = true;
  readonly #baseUrl: string;
  readonly #timeoutMs: number;

  constructor(baseUrl: string, timeoutMs: number) {
    this.#baseUrl = baseUrl;
    this.#timeoutMs = timeoutMs;
  }

  describe(inFlight: number): string {
    return `curl PUT x${inFlight}`;
  }

  async upload(job: UploadJob): Promise<UploadReceipt> {
    const folder = job.fileName.replace(/[^A-Za-z0-9._-]/g, '_');
    const { content } = job;
    await runCurl({
      mode: 'parallel',
      maxInFlight: job.inFlight,
      method: 'PUT',
      headers: ['Content-Type: application/octet-stream'],
      transfers: content.chunkPaths.map((file, n) => ({
        url: `${this.#baseUrl}/dav/${folder}/${n}`,
        file,
        bytes: Math.min(content.chunkSize, content.fileSize - n * content.chunkSize),
      })),
      timeoutMs: this.#timeoutMs,
    });
    return { id: folder };
  }
}
