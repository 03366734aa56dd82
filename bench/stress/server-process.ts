/**
 * The server under stress as a real child process (`updraft serve` from source via tsx), so that `--crash` can kill
 * it with SIGKILL (no handler runs, nothing is flushed: what survives is what the engine made durable) and start it
 * again on the same folder and port.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface ServerProcessOptions {
  dir: string;
  chunkSize: number;
  durability: 'chunk' | 'upload';
  workers: number;
  /** Extra `updraft serve` flags. */
  extraArgs?: string[];
}

export class ServerProcess {
  #child: ChildProcess | null = null;
  #port = 0;
  #errorLines: string[] = [];
  #tail: string[] = [];
  starts = 0;
  kills = 0;

  constructor(readonly options: ServerProcessOptions) {}

  get port(): number {
    return this.#port;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get running(): boolean {
    return this.#child !== null && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** Log lines at level error or fatal (pino level >= 50), over every start. */
  get errorLines(): readonly string[] {
    return this.#errorLines;
  }

  get stderrTail(): string {
    return this.#tail.join('\n');
  }

  /**
   * Starts the server and waits for "listening on". The first start picks a free port itself rather than pass
   * `--port 0`: uSockets sets SO_REUSEADDR on a listening socket only when it is given a port, and the sockets a
   * listener accepts inherit the flag. A connection of a killed server that the peer has not closed yet stays bound
   * to the port (FIN-WAIT-2), and Linux lets a new listener bind next to it only when both carry SO_REUSEADDR; so
   * after a kill, a server first started on port 0 could not come back on the same port for up to a minute.
   */
  async start(): Promise<void> {
    if (this.running) throw new Error('server already running');
    if (this.#port === 0) this.#port = await freePort();
    let lastError: unknown;
    for (let attempt = 0; attempt < 20; attempt++) {
      try {
        await this.#spawn();
        return;
      } catch (e) {
        lastError = e;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    throw lastError;
  }

  async #spawn(): Promise<void> {
    const o = this.options;
    const args = [
      '--import',
      'tsx',
      path.join(ROOT, 'src/cli/main.ts'),
      'serve',
      '--host',
      '127.0.0.1',
      '--port',
      String(this.#port),
      '--dir',
      o.dir,
      '--chunk-size',
      String(o.chunkSize),
      '--durability',
      o.durability,
      '--workers',
      String(o.workers),
      '--log-level',
      'warn',
      ...(o.extraArgs ?? []),
    ];
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
    this.#child = child;
    let partial = '';
    child.stderr!.on('data', (d: Buffer) => {
      partial += d.toString();
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        if (line.trim() === '') continue;
        this.#tail.push(line);
        if (this.#tail.length > 40) this.#tail.shift();
        const level = /"level":(\d+)/.exec(line)?.[1];
        if (level !== undefined && Number(level) >= 50) this.#errorLines.push(line);
      }
    });
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`server did not start:\n${this.stderrTail}`));
      }, 30_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /listening on http:\/\/[^:\s]+:(\d+)/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`server exited (${code ?? signal}) before listening:\n${this.stderrTail}`));
      });
    });
    this.#port = port;
    this.starts++;
  }

  /** SIGKILL, and wait until the process is gone (its port and files are released). */
  async kill(): Promise<void> {
    const child = this.#child;
    if (!child || !this.running) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGKILL');
    await exited;
    this.kills++;
  }

  /** Graceful stop (SIGTERM: the engine commits and closes), with SIGKILL after `graceMs`. */
  async stop(graceMs = 15_000): Promise<void> {
    const child = this.#child;
    if (!child || !this.running) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }
}

/** A port that is free right now (a listener on port 0, closed at once). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}
