/**
 * curl as the load generator: a C client whose cost is small next to any server's, so on 2 shared cores the figure
 * is the server's. One curl process per upload; its transfers come as a config on its stdin (`-K -`), which keeps
 * long chunk lists off the command line. The processes are started before the measured window (prespawnCurls), each
 * waiting for its config, so no run pays for a fork and exec of curl inside the window: a client kept running
 * through the run (the WebSocket runner) pays none either.
 *
 * - parallel: `--parallel --parallel-max N --parallel-immediate`, up to N PUTs in flight over kept-alive connections.
 * - sequential: one transfer after another, separated by `next` (each may carry its own headers, as tus needs);
 *   curl keeps its connection across `next`.
 *
 * `Expect:` is sent empty on every request: curl otherwise asks for 100-continue on large bodies and waits a round
 * trip (or a second, if a server never answers it) before sending, which would measure curl's caution, not the server.
 * Every transfer must answer 2xx with its whole body sent (checked from curl's --write-out), or the upload fails.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

export const CURL = fs.existsSync('/usr/bin/curl') ? '/usr/bin/curl' : 'curl';

export interface CurlTransfer {
  readonly url: string;
  readonly file: string;
  readonly bytes: number;
  /** Extra headers for this transfer only (sequential batches only). */
  readonly headers?: readonly string[];
}

export interface CurlBatch {
  readonly mode: 'parallel' | 'sequential';
  /** Transfers in flight at once (parallel mode). */
  readonly maxInFlight: number;
  readonly method: 'PUT' | 'PATCH';
  readonly headers: readonly string[];
  readonly transfers: readonly CurlTransfer[];
  readonly timeoutMs: number;
}

export class CurlFailed extends Error {}

/** curl processes running now, so an interrupted benchmark can stop them (ours, by handle). */
const running = new Set<ChildProcess>();
/** Started by prespawnCurls and waiting for their config; runCurl takes the oldest. */
const idle: WaitingCurl[] = [];
/** While closed, runCurl refuses to start: a run past its time limit must not start its next upload. */
let gateOpen = true;

/** Kills every running curl and refuses new ones until openCurlGate(). */
export function killCurlsNow(): void {
  gateOpen = false;
  idle.length = 0;
  for (const child of running) child.kill('SIGKILL');
  running.clear();
}

export function openCurlGate(): void {
  gateOpen = true;
}

const WRITE_OUT = '%{urlnum} %{http_code} %{size_upload}\\n';

/** Starts `n` curl processes that wait for their config (call before a measured window). */
export function prespawnCurls(n: number): void {
  for (let i = 0; i < n; i++) idle.push(startCurl(['-K', '-']));
}

/** Stops the prespawned curl processes no upload took (ours, by handle). */
export function dropIdleCurls(): void {
  for (const c of idle.splice(0)) c.child.kill('SIGKILL');
}

export async function runCurl(batch: CurlBatch): Promise<void> {
  if (!gateOpen) throw new CurlFailed('stopped: the run is over its time limit');
  const curl = idle.shift() ?? startCurl(['-K', '-']);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    curl.child.kill('SIGKILL'); // our own child, by its handle
  }, batch.timeoutMs);
  curl.child.stdin!.on('error', () => {}); // a curl that died early: its exit status says why
  curl.child.stdin!.end(curlConfig(batch));
  const { code, stdout, stderr } = await curl.done;
  clearTimeout(timer);
  if (timedOut) throw new CurlFailed(`curl did not finish within ${batch.timeoutMs} ms`);
  checkTransfers(batch, stdout, code, stderr);
}

function curlConfig(batch: CurlBatch): string {
  const perTransferSeconds = Math.max(10, Math.ceil(batch.timeoutMs / 1000));
  const common = [
    'silent', 'show-error', 'no-progress-meter',
    'connect-timeout = 5', `max-time = ${perTransferSeconds}`,
    `request = ${quote(batch.method)}`, `write-out = "${WRITE_OUT}"`,
    ...['Expect:', ...batch.headers].map((h) => `header = ${quote(h)}`),
  ];
  const lines: string[] = [];
  if (batch.mode === 'parallel') {
    lines.push(...common, 'parallel', `parallel-max = ${batch.maxInFlight}`, 'parallel-immediate');
    for (const t of batch.transfers) {
      if (t.headers !== undefined && t.headers.length > 0) throw new Error('per-transfer headers need a sequential batch');
      lines.push(`url = ${quote(t.url)}`, `upload-file = ${quote(t.file)}`, 'output = "/dev/null"');
    }
  } else {
    batch.transfers.forEach((t, i) => {
      if (i > 0) lines.push('next');
      lines.push(...common, ...(t.headers ?? []).map((h) => `header = ${quote(h)}`));
      lines.push(`url = ${quote(t.url)}`, `upload-file = ${quote(t.file)}`, 'output = "/dev/null"');
    });
  }
  return `${lines.join('\n')}\n`;
}

function quote(value: string): string {
  return `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

function checkTransfers(batch: CurlBatch, stdout: string, code: number | null, stderr: string): void {
  const seen = new Array<boolean>(batch.transfers.length).fill(false);
  const problems: string[] = [];
  const lines = stdout.split('\n').filter((l) => l !== '');
  for (const line of lines) {
    const [numText, statusText, sizeText] = line.split(' ');
    // urlnum counts transfers in config order across `next` too; parallel lines arrive in completion order.
    const index = Number(numText);
    const transfer = batch.transfers[index];
    if (transfer === undefined) {
      problems.push(`unexpected write-out line: ${line}`);
      continue;
    }
    seen[index] = true;
    const status = Number(statusText);
    const sent = Number(sizeText);
    if (!(status >= 200 && status < 300)) problems.push(`${transfer.url} answered ${statusText}`);
    else if (sent !== transfer.bytes) problems.push(`${transfer.url} sent ${sizeText} of ${transfer.bytes} bytes`);
  }
  const missing = seen.filter((s) => !s).length;
  if (missing > 0) problems.push(`${missing} transfer(s) reported nothing`);
  if (code !== 0 && problems.length === 0) problems.push(`curl exited with code ${code}`);
  if (problems.length > 0) {
    const more = problems.length > 3 ? ` (and ${problems.length - 3} more)` : '';
    const err = stderr.trim().split('\n').slice(-3).join(' | ');
    throw new CurlFailed(`${problems.slice(0, 3).join('; ')}${more}${err === '' ? '' : `; curl: ${err}`}`);
  }
}

interface WaitingCurl {
  readonly child: ChildProcess;
  readonly done: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

function startCurl(args: string[]): WaitingCurl {
  const child = spawn(CURL, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  running.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (t: string) => (stdout += t));
  child.stderr!.setEncoding('utf8').on('data', (t: string) => (stderr = (stderr + t).slice(-8192)));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    child.once('error', (error) => {
      running.delete(child);
      resolve({ code: -1, stdout, stderr: `${stderr}\n${error.message}` });
    });
    child.once('close', (code) => {
      running.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
  return { child, done };
}

/** `curl --version`'s first line, for the report. */
export async function curlVersion(): Promise<string | undefined> {
  const curl = startCurl(['--version']);
  curl.child.stdin!.end();
  const { code, stdout } = await curl.done;
  return code === 0 ? stdout.split('\n')[0] : undefined;
}
