/**
 * `updraft upload` as a child process against a real engine: several files with a summary line each, a failing file
 * making the exit code non-zero, usage errors, and a process killed with SIGKILL mid-upload, then resumed with the
 * guid it printed. Every file is compared byte for byte.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PREFIX, ROOT, bytesOf, call, startServer, tempDir, waitExit } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';

const KiB = 1024;
const MiB = 1024 * KiB;

let server: TestServer | null = null;
const children: ChildProcess[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await server?.close();
  server = null;
});

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
}

function cli(args: string[]): Run {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/cli/main.ts'), 'upload', ...args], {
    cwd: ROOT,
    env: { ...process.env, UPDRAFT_URL: '', UPDRAFT_TOKEN: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return { child, stdout: () => out, stderr: () => err };
}

async function finished(r: Run): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { code } = await waitExit(r.child, 45_000);
  return { code, stdout: r.stdout(), stderr: r.stderr() };
}

async function writeFiles(entries: Array<[string, Uint8Array]>): Promise<string[]> {
  const dir = await tempDir('updraft-cli-src-');
  const out: string[] = [];
  for (const [name, data] of entries) {
    const p = path.join(dir, name);
    await fsp.writeFile(p, data);
    out.push(p);
  }
  return out;
}

describe('updraft upload', () => {
  it('uploads several files with a progress bar each on stderr and a summary line each on stdout', async () => {
    server = await startServer();
    const a = bytesOf(2 * MiB + 3);
    const b = bytesOf(5000);
    const [pa, pb] = await writeFiles([
      ['a.bin', a],
      ['b.bin', b],
    ]);
    const r = await finished(cli([pa!, pb!, '--url', server.base, '--chunk-size', '256KiB', '--target-path', 'cli']));
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^ok +\S*a\.bin -> a\.bin +2\.0 MiB .*websocket 2\.0 MiB, http 0 B +guid \S+$/);
    expect(lines[1]).toMatch(/^ok +\S*b\.bin -> b\.bin +4\.9 KiB/);
    expect(r.stderr).toMatch(/a\.bin +\[#+\] 100% +2\.0 MiB done/);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'cli/a.bin')), a)).toBe(0);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'cli/b.bin')), b)).toBe(0);
  });

  it('exits 1 when a file fails, after uploading the others', async () => {
    server = await startServer();
    const a = bytesOf(100 * KiB);
    const [pa] = await writeFiles([['ok.bin', a]]);
    const missing = path.join(path.dirname(pa!), 'missing.bin');
    const r = await finished(cli([missing, pa!, '--url', `${server.base}${PREFIX}`, '--transport', 'http', '--parallel', '2']));
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^FAIL +\S*missing\.bin: ERR_SOURCE /m);
    expect(r.stdout).toMatch(/^ok +\S*ok\.bin -> ok\.bin .*websocket 0 B, http 100 KiB/m);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'ok.bin')), a)).toBe(0);
  });

  it('exits 2 on bad usage', async () => {
    for (const args of [[], ['x.bin'], ['x.bin', '--url', 'ftp://host/'], ['x.bin', '--url', 'http://h/', '--transport', 'pigeon']]) {
      const r = await finished(cli(args));
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/^updraft upload: /);
    }
  });

  it('resumes with --guid after the process was killed mid-upload, sending only the rest', async () => {
    server = await startServer({
      authenticate: async (req) => {
        if (req.method === 'PUT') await new Promise((r) => setTimeout(r, 25));
        return 'anonymous';
      },
    });
    const data = bytesOf(2 * MiB);
    const [file] = await writeFiles([['killed.bin', data]]);
    const args = [file!, '--url', server.base, '--transport', 'http', '--parallel', '1', '--chunk-size', '64KiB'];
    const first = cli(args);
    // stderr is a pipe: a line per 10% step. Kill once 30% is acknowledged.
    const guid = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no progress: ${first.stderr()}`)), 30_000);
      first.child.stderr!.on('data', () => {
        const g = /killed\.bin: upload (\S+)/.exec(first.stderr());
        if (g && / [3-9]0%/.test(first.stderr())) {
          clearTimeout(timer);
          resolve(g[1]!);
        }
      });
    });
    first.child.kill('SIGKILL');
    expect((await waitExit(first.child)).signal).toBe('SIGKILL');
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    const stored = st.json.data!.receivedBytes as number;
    expect(stored).toBeGreaterThanOrEqual(0.3 * data.length);
    expect(stored).toBeLessThan(data.length);

    const second = await finished(cli([...args, '--guid', guid]));
    expect(second.code, second.stderr).toBe(0);
    const m = /^ok .* http ([0-9.]+) (KiB|MiB) +resumed ([0-9.]+) (KiB|MiB) +guid (\S+)$/m.exec(second.stdout);
    expect(m, second.stdout).not.toBeNull();
    expect(m![5]).toBe(guid);
    expect(Buffer.compare(await fsp.readFile(path.join(server.dir, 'killed.bin')), data)).toBe(0);
    const after = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(after.json.data).toMatchObject({ uploadStatus: 'completed' });
  });
});
