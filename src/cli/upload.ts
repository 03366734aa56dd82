/**
 * `updraft upload <file...> --url <endpoint>`: the Node client (src/client) from the command line. One file at a
 * time, each with a progress bar on stderr (redrawn in place on a terminal, a line per 10% otherwise), then one
 * summary line per file on stdout. Exit 0 when every file arrived, 1 when any failed, 2 on bad usage, 130 on Ctrl-C.
 * No upload logic lives here.
 */
import { parseArgs } from 'node:util';
import { ClientError, upload } from '../client/index.js';
import { formatBytes } from '../client/progress.js';
import type { TransportMode, UploadOptions, UploadProgress, UploadResult } from '../client/index.js';
import { UsageError, parseInteger, parseSize } from './args.js';

export const UPLOAD_HELP = `Usage: updraft upload <file...> --url URL [options]

Uploads files to an Updraft server: over the updraft.v1 WebSocket, falling back to parallel HTTP PUTs when the
WebSocket cannot connect or drops for good. Progress goes to stderr, one summary line per file to stdout.

  --url URL             the server's API prefix, e.g. http://127.0.0.1:8080/api/v1/files; a URL with no path
                        gets the default prefix /api/v1/files; no query or fragment (UPDRAFT_URL)
  --token TOKEN         bearer token (UPDRAFT_TOKEN)
  --parallel N          HTTP PUTs in flight per file (default 4)
  --transport MODE      auto | websocket | http (default auto)
  --target-path PATH    folder under the server's upload root (default the root)
  --chunk-size SIZE     chunk size, e.g. 8MiB (default: the server's)
  --checksum            send a sha256 with every WebSocket chunk; the server checks it
  --guid GUID           resume this upload (one file only; a failed run prints its guid). The file must be
                        the one it was started from, not modified since (size and mtime are checked), and
                        must not change while it uploads (a change fails with ERR_SOURCE)
  -h, --help            this text

Exit status: 0 when every file arrived, 1 when any failed, 2 on bad usage, 130 when interrupted.
`;

interface UploadArgs {
  files: string[];
  options: Omit<UploadOptions, 'signal' | 'onProgress'>;
}

const DEFAULT_PREFIX = '/api/v1/files';

export function parseUploadArgs(argv: string[], env: NodeJS.ProcessEnv): UploadArgs | 'help' {
  const { values, positionals } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: {
      url: { type: 'string' },
      token: { type: 'string' },
      parallel: { type: 'string' },
      transport: { type: 'string' },
      'target-path': { type: 'string' },
      'chunk-size': { type: 'string' },
      checksum: { type: 'boolean' },
      guid: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return 'help';
  if (positionals.length === 0) throw new UsageError('no files given');
  const rawUrl = values.url ?? env.UPDRAFT_URL;
  if (!rawUrl) throw new UsageError('--url is required (the server API prefix, e.g. http://127.0.0.1:8080/api/v1/files)');
  const urlLabel = values.url !== undefined ? '--url' : 'UPDRAFT_URL';
  let url: URL;
  try {
    url = new URL(rawUrl);
  } catch {
    throw new UsageError(`${urlLabel}: not a URL: "${rawUrl}" (a URL starts with http:// or https://, e.g. http://127.0.0.1:8080/api/v1/files)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`${urlLabel}: expected http:// or https://, got "${rawUrl}"`);
  // The client appends the route (`/upload-chunk?guid=...`) to the prefix; a query would land before it.
  if (url.href.includes('?') || url.href.includes('#')) throw new UsageError(`${urlLabel}: expected the API prefix alone, without a query string or fragment`);
  if (url.pathname === '/' || url.pathname === '') url.pathname = DEFAULT_PREFIX;
  const options: UploadArgs['options'] = { endpoint: url.href };
  const token = values.token ?? env.UPDRAFT_TOKEN;
  if (token) options.token = token;
  if (values.parallel !== undefined) {
    const n = parseInteger('--parallel', values.parallel);
    if (n < 1 || n > 64) throw new UsageError('--parallel: expected 1 to 64');
    options.parallel = n;
  }
  if (values.transport !== undefined) {
    if (!['auto', 'websocket', 'http'].includes(values.transport)) throw new UsageError('--transport: expected auto, websocket or http');
    options.transport = values.transport as TransportMode;
  }
  if (values['target-path'] !== undefined) options.targetPath = values['target-path'];
  if (values['chunk-size'] !== undefined) {
    const n = parseSize('--chunk-size', values['chunk-size']);
    if (n < 1) throw new UsageError('--chunk-size: must be at least 1 byte');
    options.chunkSize = n;
  }
  if (values.checksum) options.checksum = 'sha256';
  if (values.guid !== undefined) {
    if (positionals.length !== 1) throw new UsageError('--guid resumes one upload: give exactly one file');
    options.guid = values.guid;
  }
  return { files: positionals, options };
}

// --- display --------------------------------------------------------------------------------------------------------


function rate(bps: number): string {
  return `${(bps / 1e6).toFixed(1)} MB/s`;
}

function eta(s: number | null): string {
  if (s === null || !Number.isFinite(s)) return '--';
  const t = Math.round(s);
  return t < 60 ? `${t}s` : t < 3600 ? `${Math.floor(t / 60)}m${String(t % 60).padStart(2, '0')}s` : `${Math.floor(t / 3600)}h${String(Math.floor(t / 60) % 60).padStart(2, '0')}m`;
}

function shortName(name: string, width: number): string {
  return name.length <= width ? name.padEnd(width) : `…${name.slice(name.length - width + 1)}`;
}

const TRANSPORT = { websocket: 'ws', http: 'http' } as const;

/** One file's status line: name, bar, percent, bytes, speed, ETA, transport. */
export function progressLine(name: string, p: UploadProgress | undefined, columns: number): string {
  const fraction = p === undefined ? 0 : p.total === 0 ? (p.state === 'done' ? 1 : 0) : p.loaded / p.total;
  const pct = `${Math.floor(fraction * 100)}%`.padStart(4);
  let tail: string;
  if (p === undefined) tail = 'waiting';
  else if (p.state === 'done') tail = `${formatBytes(p.total)} done`;
  else if (p.state === 'failed' || p.state === 'cancelled') tail = p.state;
  else if (p.state === 'finalizing') tail = `${formatBytes(p.loaded)}/${formatBytes(p.total)}  finishing`;
  else if (p.state === 'paused') tail = `${formatBytes(p.loaded)}/${formatBytes(p.total)}  paused`;
  else tail = `${formatBytes(p.loaded)}/${formatBytes(p.total)}  ${rate(p.bytesPerSecond)}  ETA ${eta(p.etaSeconds)}${p.transport ? `  ${TRANSPORT[p.transport]}` : ''}`;
  const nameWidth = Math.max(8, Math.min(28, Math.floor(columns * 0.3)));
  // A fixed width per terminal size (not per line), so the bars of all files line up and do not jitter.
  const barWidth = Math.max(10, Math.min(30, columns - nameWidth - 56));
  const filled = Math.round(fraction * barWidth);
  const bar = `[${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}]`;
  return `${shortName(name, nameWidth)} ${bar} ${pct}  ${tail}`.slice(0, Math.max(20, columns - 1));
}

/**
 * Bars for every file, redrawn in place on a terminal; on a pipe, a line per 10% step and per state change. Every
 * other line the command prints while the bars are up goes through `line`, which takes the bars away first: a line
 * written under them would be overwritten by the next redraw.
 */
export class ProgressView {
  readonly #out: NodeJS.WriteStream;
  readonly #tty: boolean;
  readonly #names: string[];
  readonly #state: Array<UploadProgress | undefined>;
  readonly #lastStep: number[];
  #drawn = 0;
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(out: NodeJS.WriteStream, names: string[]) {
    this.#out = out;
    this.#tty = out.isTTY === true && process.env.TERM !== 'dumb';
    this.#names = names;
    this.#state = names.map(() => undefined);
    this.#lastStep = names.map(() => -1);
    if (this.#tty) {
      this.#draw();
      this.#timer = setInterval(() => this.#draw(), 150);
    }
  }

  update(i: number, p: UploadProgress): void {
    const prev = this.#state[i];
    this.#state[i] = p;
    if (this.#tty) return;
    const step = Math.floor((p.total === 0 ? 1 : p.loaded / p.total) * 10);
    if (step > this.#lastStep[i]! || prev?.state !== p.state || prev?.transport !== p.transport) {
      this.#lastStep[i] = step;
      this.#out.write(`${progressLine(this.#names[i]!, p, 100)}\n`);
    }
  }

  note(text: string): void {
    this.line(this.#out, text);
  }

  /** Writes `text` as a line of `out` (stdout or stderr), above the bars. */
  line(out: { write(s: string): unknown }, text: string): void {
    if (this.#tty) this.#clear();
    out.write(`${text}\n`);
    if (this.#tty) this.#draw();
  }

  #clear(): void {
    if (this.#drawn > 0) this.#out.write(`\x1b[${this.#drawn}A\x1b[0J`);
    this.#drawn = 0;
  }

  #draw(): void {
    const columns = this.#out.columns || 100;
    let s = this.#drawn > 0 ? `\x1b[${this.#drawn}A` : '';
    for (let i = 0; i < this.#names.length; i++) s += `\x1b[2K${progressLine(this.#names[i]!, this.#state[i], columns)}\n`;
    this.#drawn = this.#names.length;
    this.#out.write(s);
  }

  stop(): void {
    clearInterval(this.#timer);
    if (this.#tty) this.#draw();
  }
}

/** `s` as one shell word: as it is when it is plain, else in single quotes. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:@%+=,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function summary(file: string, r: UploadResult, ms: number): string {
  const sent = r.bytesByTransport.websocket + r.bytesByTransport.http;
  const parts = [`ok    ${file} -> ${r.fileName}`, formatBytes(r.size), `${(ms / 1000).toFixed(1)}s`];
  if (sent > 0) parts.push(rate((sent * 1000) / Math.max(ms, 1)));
  parts.push(`websocket ${formatBytes(r.bytesByTransport.websocket)}, http ${formatBytes(r.bytesByTransport.http)}`);
  if (r.resumedBytes > 0) parts.push(`resumed ${formatBytes(r.resumedBytes)}`);
  parts.push(`guid ${r.guid}`);
  return parts.join('  ');
}

export async function uploadMain(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let args: UploadArgs | 'help';
  try {
    args = parseUploadArgs(argv, env);
  } catch (e) {
    process.stderr.write(`updraft upload: ${(e as Error).message}\n(see updraft upload --help)\n`);
    return 2;
  }
  if (args === 'help') {
    process.stdout.write(UPLOAD_HELP);
    return 0;
  }
  const { files, options } = args;
  const ac = new AbortController();
  let interrupted = false;
  const onSigint = (): void => {
    if (interrupted) process.exit(130);
    interrupted = true;
    ac.abort();
  };
  process.on('SIGINT', onSigint);
  const view = new ProgressView(process.stderr, files);
  let failed = 0;
  try {
    for (let i = 0; i < files.length; i++) {
      const file = files[i]!;
      if (interrupted) {
        view.line(process.stdout, `skip  ${file}: interrupted`);
        failed++;
        continue;
      }
      const t0 = performance.now();
      const h = upload(file, { ...options, signal: ac.signal });
      h.on('progress', (p) => view.update(i, p));
      let announced = false;
      h.on('state', (s) => {
        // The guid is what a later `--guid` resumes; print it as soon as the server has made it.
        if (!announced && h.guid !== undefined && (s === 'uploading' || s === 'paused')) {
          announced = true;
          view.note(`${file}: upload ${h.guid}`);
        }
      });
      h.on('transport', (t) => {
        if (t.transport === 'http' && t.reason !== 'transport: http') view.note(`${file}: WebSocket unavailable (${t.reason}); continuing over HTTP`);
      });
      try {
        const r = await h.done;
        view.update(i, h.progress);
        view.line(process.stdout, summary(file, r, performance.now() - t0));
      } catch (e) {
        failed++;
        view.update(i, h.progress);
        const err = e instanceof ClientError ? e : new ClientError('ERR_NETWORK', (e as Error)?.message ?? String(e));
        const resume = err.guid && err.code !== 'ERR_UPLOAD_CANCELLED' && err.retryable ? ` (resume: updraft upload ${shellQuote(file)} --guid ${err.guid} ...)` : '';
        view.line(process.stdout, `FAIL  ${file}: ${err.code} ${err.message}${resume}`);
      }
    }
  } finally {
    view.stop();
    process.off('SIGINT', onSigint);
  }
  if (interrupted) return 130;
  return failed > 0 ? 1 : 0;
}
