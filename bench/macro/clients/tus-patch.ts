/**
 * tus 1.0 core + creation: POST {base}/files/ with Upload-Length (fetch), then one PATCH per chunk with its
 * Upload-Offset, strictly one after another on one kept-alive connection (curl `next`). tus offsets are sequential,
 * so an upload never has more than one request in flight, whatever the scenario asks.
 */
import { runCurl } from '../curl.js';
import type { UploadClient, UploadJob, UploadReceipt } from '../model.js';

export class TusPatchClient implements UploadClient {
  readonly startsCurl = true;
  readonly #endpoint: string;
  readonly #timeoutMs: number;

  constructor(endpoint: string, timeoutMs: number) {
    this.#endpoint = endpoint;
    this.#timeoutMs = timeoutMs;
  }

  describe(): string {
    return 'curl tus PATCH x1';
  }

  async upload(job: UploadJob): Promise<UploadReceipt> {
    const { content } = job;
    const response = await fetch(this.#endpoint, {
      method: 'POST',
      headers: {
        'Tus-Resumable': '1.0.0',
        'Upload-Length': String(content.fileSize),
        'Upload-Metadata': `filename ${Buffer.from(job.fileName).toString('base64')}`,
      },
      signal: AbortSignal.timeout(this.#timeoutMs),
    });
    await response.arrayBuffer();
    const location = response.headers.get('location');
    if (response.status !== 201 || location === null) {
      throw new Error(`tus creation answered ${response.status} (location: ${location ?? 'none'})`);
    }
    const uploadUrl = new URL(location, this.#endpoint).href;
    await runCurl({
      mode: 'sequential',
      maxInFlight: 1,
      method: 'PATCH',
      headers: ['Tus-Resumable: 1.0.0', 'Content-Type: application/offset+octet-stream'],
      transfers: content.chunkPaths.map((file, n) => ({
        url: uploadUrl,
        file,
        bytes: Math.min(content.chunkSize, content.fileSize - n * content.chunkSize),
        headers: [`Upload-Offset: ${n * content.chunkSize}`],
      })),
      timeoutMs: this.#timeoutMs,
    });
    const id = decodeURIComponent(new URL(uploadUrl).pathname.split('/').pop() ?? '');
    if (id === '') throw new Error(`cannot read the upload id from ${uploadUrl}`);
    return { id };
  }
}
