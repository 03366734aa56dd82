/**
 * Targets run as child processes so their CPU and memory can be read from /proc/<pid>, apart from the client's.
 * This module starts one, waits until it is ready (a `listening on http://HOST:PORT` line, or a TCP port that
 * accepts), keeps draining its output (a full pipe would stall the server mid-benchmark), and stops it.
 *
 * Only processes started here are ever signalled, by pid, and a descendant only if its start time still matches
 * the one seen when it was listed (a recycled pid is left alone). `killStartedNow()` is the synchronous last resort
 * for SIGINT and `finally` blocks.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { processTree, readProcStat } from './proc-stats.js';

const OUTPUT_TAIL_BYTES = 8 * 1024;
const STOP_GRACE_MS = 5000;
const KILL_WAIT_MS = 2000;

export type Readiness =
  | { readonly kind: 'line'; readonly pattern: RegExp }
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number };

export interface StartOptions {
  readonly label: string;
  readonly command: string;
  readonly args: readonly string[];
  readonly cwd?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly ready: Readiness;
  readonly timeoutMs: number;
}

export interface StartedServer {
  readonly pid: number;
  /** The first capture group of the ready line (the base URL), when readiness is a line. */
  readonly readyMatch: string | undefined;
  /** The last few KiB of stdout and stderr, for error messages. */
  output(): string;
  stop(): Promise<void>;
}

export class StartFailed extends Error {
  constructor(
    message: string,
    readonly output: string,
  ) {
    super(message);
  }
}

interface Tracked {
  readonly child: ChildProcess;
  readonly pid: number;
}

const started = new Set<Tracked>();

export async function startServer(options: StartOptions): Promise<StartedServer> {
  const child = spawn(options.command, [...options.args], {
    cwd: options.cwd,
    env: options.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let tail = '';
  const append = (text: string): void => {
    tail = (tail + text).slice(-OUTPUT_TAIL_BYTES);
  };
  let exited = child.exitCode !== null;
  const exitPromise = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      resolve();
    });
    child.once('error', (error) => {
      append(`\n[spawn error] ${error.message}\n`);
      exited = true;
      resolve();
    });
  });
  if (child.pid === undefined) {
    await exitPromise;
    throw new StartFailed(`${options.label}: could not start ${options.command}`, tail);
  }
  const tracked: Tracked = { child, pid: child.pid };
  started.add(tracked);

  let readyMatch: string | undefined;
  let lineBuffer = '';
  let onLine: ((line: string) => void) | undefined;
  child.stdout?.setEncoding('utf8').on('data', (text: string) => {
    append(text);
    if (onLine === undefined) return;
    lineBuffer += text;
    let newline: number;
    while ((newline = lineBuffer.indexOf('\n')) >= 0) {
      const line = lineBuffer.slice(0, newline).trimEnd();
      lineBuffer = lineBuffer.slice(newline + 1);
      onLine?.(line);
    }
    if (lineBuffer.length > OUTPUT_TAIL_BYTES) lineBuffer = lineBuffer.slice(-OUTPUT_TAIL_BYTES);
  });
  child.stderr?.setEncoding('utf8').on('data', append);

  const stop = async (): Promise<void> => {
    const descendants = snapshotDescendants(tracked.pid);
    if (!exited) {
      child.kill('SIGTERM');
      await Promise.race([exitPromise, delay(STOP_GRACE_MS)]);
    }
    if (!exited) {
      child.kill('SIGKILL');
      await Promise.race([exitPromise, delay(KILL_WAIT_MS)]);
    }
    killLeftovers(descendants);
    started.delete(tracked);
  };

  try {
    if (options.ready.kind === 'line') {
      const pattern = options.ready.pattern;
      readyMatch = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ready line within ${options.timeoutMs} ms`)), options.timeoutMs);
        onLine = (line) => {
          const match = pattern.exec(line);
          if (match === null) return;
          clearTimeout(timer);
          onLine = undefined;
          resolve(match[1] ?? match[0]);
        };
        void exitPromise.then(() => {
          clearTimeout(timer);
          reject(new Error(`exited (code ${child.exitCode}, signal ${child.signalCode}) before it was ready`));
        });
      });
    } else {
      await waitForTcp(options.ready.host, options.ready.port, options.timeoutMs, () => exited);
    }
  } catch (error) {
    await stop();
    throw new StartFailed(`${options.label}: ${(error as Error).message}`, tail);
  }
  return { pid: tracked.pid, readyMatch, output: () => tail, stop };
}

/**
 * Registers a child started elsewhere (the WebSocket client runner) so that killStartedNow() stops it too; returns
 * the function that unregisters it once it has exited.
 */
export function trackChild(child: ChildProcess): () => void {
  if (child.pid === undefined) return () => {};
  const tracked: Tracked = { child, pid: child.pid };
  started.add(tracked);
  return () => {
    started.delete(tracked);
  };
}

/** Synchronous SIGKILL of everything started here and still running (SIGINT handler, final cleanup). */
export function killStartedNow(): void {
  for (const tracked of started) {
    const descendants = snapshotDescendants(tracked.pid);
    if (tracked.child.exitCode === null && tracked.child.signalCode === null) tracked.child.kill('SIGKILL');
    killLeftovers(descendants);
  }
  started.clear();
}

function snapshotDescendants(root: number): Array<{ pid: number; startTime: number }> {
  const list: Array<{ pid: number; startTime: number }> = [];
  for (const pid of processTree(root)) {
    if (pid === root) continue;
    const stat = readProcStat(pid);
    if (stat !== undefined) list.push({ pid, startTime: stat.startTime });
  }
  return list;
}

function killLeftovers(descendants: Array<{ pid: number; startTime: number }>): void {
  for (const { pid, startTime } of descendants) {
    if (readProcStat(pid)?.startTime !== startTime) continue; // gone, or the pid now belongs to someone else
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // exited between the check and the signal
    }
  }
}

async function waitForTcp(host: string, port: number, timeoutMs: number, hasExited: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 0; attempt < 1000 && Date.now() < deadline; attempt++) {
    if (hasExited()) throw new Error('exited before it accepted connections');
    if (await canConnect(host, port)) return;
    await delay(50);
  }
  throw new Error(`port ${port} did not accept connections within ${timeoutMs} ms`);
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A loopback port that was free a moment ago, for servers that cannot bind port 0 and report it (nginx). */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}
