/**
 * State survives restarts: upload half, stop the server (gracefully, or SIGKILL of a real process), start it again
 * on the same folder, finish from upload-status, compare every byte.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  PREFIX,
  ROOT,
  awaitListening,
  collect,
  bytesOf,
  call,
  initUpload,
  listFiles,
  putChunks,
  shuffled,
  startCli,
  startServer,
  tempDir,
  waitExit,
} from '../fixtures/server.js';
import type { CliServer, TestServer } from '../fixtures/server.js';
import { journalRecord } from '../../src/main/state-store.js';
import { createUploadEngine } from '../../src/index.js';

const CS = 256 * 1024;
let server: TestServer | null = null;
let cli: CliServer | null = null;

afterEach(async () => {
  await server?.close();
  server = null;
  if (cli && cli.child.exitCode === null && cli.child.signalCode === null) {
    cli.child.kill('SIGKILL');
    await waitExit(cli.child);
  }
  cli = null;
});

async function finishFromStatus(base: string, guid: string, data: Uint8Array, headers: Record<string, string> = {}) {
  const st = await call(base, 'GET', `${PREFIX}/upload-status?guid=${guid}`, undefined, headers);
  expect(st.status, JSON.stringify(st.json)).toBe(200);
  const missing = st.json.data!.missingChunks as number[];
  const replies = await putChunks(base, guid, data, CS, missing, 4, headers);
  for (const r of replies) expect(r.status, JSON.stringify(r.json)).toBe(200);
  return { missing, replies };
}

describe('restart', () => {
  for (const durability of ['chunk', 'upload'] as const) {
    it(`graceful stop and start resumes with exactly the missing chunks (${durability} durability)`, async () => {
      const dir = await tempDir();
      server = await startServer({ dir, durability });
      const data = bytesOf(10 * CS + 77);
      const fingerprint = `${data.length}:1733611234567`;
      const init = await initUpload(server.base, { fileName: 'resume.bin', fileSize: data.length, chunkSize: CS, targetPath: 'in', fingerprint });
      const guid = init.json.data!.guid as string;
      const sent = shuffled([...Array(11).keys()], 3).slice(0, 6);
      for (const r of await putChunks(server.base, guid, data, CS, sent)) expect(r.status).toBe(200);
      await server.close();
      server = await startServer({ dir, durability });
      // The client's fingerprint is kept with the upload, for a resume to check it against its source.
      expect((await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`)).json.data).toMatchObject({ fingerprint });
      const { missing } = await finishFromStatus(server.base, guid, data);
      expect(missing).toEqual([...Array(11).keys()].filter((c) => !sent.includes(c)));
      expect(Buffer.compare(await fsp.readFile(path.join(dir, 'in', 'resume.bin')), data)).toBe(0);
    });
  }

  it('upload-status of a cancelled and a failed upload reports the same counts after a restart', async () => {
    const dir = await tempDir();
    const refuse = { refuse: true };
    const options = {
      dir,
      onUploadComplete: async () => {
        if (refuse.refuse) throw new Error('refused by the test');
      },
    };
    server = await startServer(options);
    const data = bytesOf(3 * CS + 5);
    const guids: string[] = [];
    for (const name of ['cancelled.bin', 'failed.bin']) {
      const guid = (await initUpload(server.base, { fileName: name, fileSize: data.length, chunkSize: CS })).json.data!.guid as string;
      guids.push(guid);
      const chunks = name === 'failed.bin' ? [0, 1, 2, 3] : [0, 3];
      for (const r of await putChunks(server.base, guid, data, CS, chunks)) expect(r.status).toBeLessThan(600);
    }
    expect((await call(server.base, 'DELETE', `${PREFIX}/upload-chunk?guid=${guids[0]!}`)).status).toBe(200);
    const status = async (guid: string) => (await call(server!.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`)).json.data!;
    const before = await Promise.all(guids.map(status));
    expect(before.map((d) => d.uploadStatus)).toEqual(['cancelled', 'failed']);
    expect(before.map((d) => [d.receivedChunks, d.receivedBytes])).toEqual([[2, CS + 5], [4, data.length]]);
    await server.close();
    refuse.refuse = false;
    server = await startServer(options);
    const after = await Promise.all(guids.map(status));
    for (const [i, d] of after.entries()) {
      expect(d, guids[i]).toMatchObject({ uploadStatus: before[i]!.uploadStatus, receivedChunks: before[i]!.receivedChunks, receivedBytes: before[i]!.receivedBytes });
    }
  });

  /** Stops after 2 of 3 chunks, then completes the rest on disk the way a crash just before completion leaves it. */
  async function craftAllJournaled(dir: string, data: Uint8Array): Promise<string> {
    server = await startServer({ dir });
    const init = await initUpload(server.base, { fileName: 'all.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    await putChunks(server.base, guid, data, CS, [0, 2]);
    await server.close();
    server = null;
    const staging = path.join(dir, '.updraft-staging');
    const fh = await fsp.open(path.join(staging, `${guid}.part`), 'r+');
    await fh.write(data, CS, CS, CS); // chunk 1's bytes at its place
    await fh.close();
    await fsp.appendFile(path.join(staging, `${guid}.journal`), journalRecord(guid, 1));
    return guid;
  }

  it('finishes at start an upload whose every chunk was journaled before a crash', async () => {
    const dir = await tempDir();
    const data = bytesOf(3 * CS);
    const guid = await craftAllJournaled(dir, data);
    server = await startServer({ dir });
    let st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    for (let i = 0; i < 50 && st.json.data?.uploadStatus !== 'completed'; i++) {
      await new Promise((r) => setTimeout(r, 20));
      st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    }
    expect(st.json.data).toMatchObject({ uploadStatus: 'completed', finalName: 'all.bin', receivedChunks: 3 });
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'all.bin')), data)).toBe(0);
  });

  it('recovers a crash between linking the final name and removing the staging name without a duplicate', async () => {
    const dir = await tempDir();
    const data = bytesOf(3 * CS);
    const guid = await craftAllJournaled(dir, data);
    const staging = path.join(dir, '.updraft-staging');
    const { Packr } = await import('msgpackr');
    const packr = new Packr({ useRecords: false });
    const meta = packr.unpack(await fsp.readFile(path.join(staging, `${guid}.meta`))) as Record<string, unknown>;
    await fsp.writeFile(path.join(staging, `${guid}.meta`), packr.pack({ ...meta, status: 'finalizing', finalName: 'all.bin' }));
    await fsp.link(path.join(staging, `${guid}.part`), path.join(dir, 'all.bin'));
    server = await startServer({ dir });
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(st.json.data).toMatchObject({ uploadStatus: 'completed', finalName: 'all.bin' });
    expect(await listFiles(dir)).toEqual(['all.bin']);
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'all.bin')), data)).toBe(0);
    expect((await fsp.readdir(staging)).filter((f) => !f.endsWith('.meta'))).toEqual([]);
  });

  it('SIGKILL of the server process loses no acknowledged chunk (chunk durability)', async () => {
    const dir = await tempDir();
    const token = 'kill-test-token-1';
    const auth = { authorization: `Bearer ${token}` };
    cli = await startCli(['--dir', dir, '--token', `tester:${token}`]);
    const data = bytesOf(16 * CS + 1);
    const init = await initUpload(cli.base, { fileName: 'killed.bin', fileSize: data.length, chunkSize: CS }, auth);
    const guid = init.json.data!.guid as string;
    const acked = shuffled([...Array(17).keys()], 9).slice(0, 9);
    for (const r of await putChunks(cli.base, guid, data, CS, acked, 4, auth)) expect(r.status).toBe(200);
    cli.child.kill('SIGKILL');
    expect((await waitExit(cli.child)).signal).toBe('SIGKILL');
    cli = await startCli(['--dir', dir, '--token', `tester:${token}`]);
    const { missing } = await finishFromStatus(cli.base, guid, data, auth);
    for (const c of acked) expect(missing).not.toContain(c);
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'killed.bin')), data)).toBe(0);
    expect(await listFiles(dir)).toEqual(['killed.bin']);
  });

  it('SIGTERM exits 0 after persisting state', async () => {
    const dir = await tempDir();
    cli = await startCli(['--dir', dir]);
    const data = bytesOf(4 * CS);
    const init = await initUpload(cli.base, { fileName: 'term.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    await putChunks(cli.base, guid, data, CS, [0, 2]);
    cli.child.kill('SIGTERM');
    expect(await waitExit(cli.child)).toEqual({ code: 0, signal: null });
    cli = await startCli(['--dir', dir]);
    const { missing } = await finishFromStatus(cli.base, guid, data);
    expect(missing).toEqual([1, 3]);
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'term.bin')), data)).toBe(0);
  });

  it('refuses a second engine on the same upload root (another process, this process, a symlinked path); the first keeps its uploads', async () => {
    const dir = await tempDir();
    cli = await startCli(['--dir', dir]);
    const data = bytesOf(4 * CS + 7);
    const init = await initUpload(cli.base, { fileName: 'owned.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    await putChunks(cli.base, guid, data, CS, [1, 3]);

    // A second process: one line on stderr, exit 1, before it reloads (and so takes over) anything.
    await expect(startCli(['--dir', dir])).rejects.toThrow(/CLI exited with 1: updraft serve: another Updraft engine on this host uses the upload root/);
    // An engine in this process, by the same path and through a symlink.
    await expect(startServer({ dir })).rejects.toMatchObject({ code: 'ERR_ROOT_IN_USE', name: 'RootInUseError' });
    const alias = path.join(await tempDir(), 'alias');
    await fsp.symlink(dir, alias);
    await expect(startServer({ dir: alias })).rejects.toMatchObject({ code: 'ERR_ROOT_IN_USE' });

    // The owner was not disturbed: its upload lists what it lists, and completes byte-exact.
    const { missing } = await finishFromStatus(cli.base, guid, data);
    expect(missing).toEqual([0, 2, 4]);
    expect(Buffer.compare(await fsp.readFile(path.join(dir, 'owned.bin')), data)).toBe(0);

    // Once the owner has stopped, the root is free (a SIGKILL frees it too: the test above restarts after one).
    cli.child.kill('SIGTERM');
    expect(await waitExit(cli.child)).toEqual({ code: 0, signal: null });
    cli = null;
    server = await startServer({ dir });
    const st = await call(server.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(st.json.data?.uploadStatus).toBe('completed');
  });

  it('SIGTERM while the start is still reloading stops cleanly once the start is over (exit 0, state kept), not by the default action', async () => {
    const dir = await tempDir();
    cli = await startCli(['--dir', dir]);
    const data = bytesOf(4 * CS);
    const init = await initUpload(cli.base, { fileName: 'early.bin', fileSize: data.length, chunkSize: CS });
    const guid = init.json.data!.guid as string;
    await putChunks(cli.base, guid, data, CS, [0, 3]);
    cli.child.kill('SIGTERM');
    expect(await waitExit(cli.child)).toEqual({ code: 0, signal: null });
    cli = null;

    // A FIFO posing as an upload record holds the next start's reload until the test writes to it.
    const fifo = path.join(dir, '.updraft-staging', `${randomUUID()}.meta`);
    execFileSync('mkfifo', [fifo]);
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/cli/main.ts'), 'serve', '--host', '127.0.0.1', '--port', '0', '--dir', dir], {
      cwd: ROOT,
      env: { ...process.env, UPDRAFT_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    let w: number | null = null;
    try {
      // A writer can open the FIFO (without blocking) once a reader waits on it: the server's reload, inside the start,
      // after the CLI set up its signal handlers. The writer keeps the reload waiting until it writes and closes.
      for (let i = 0; i < 400 && w === null && child.exitCode === null; i++) {
        try {
          w = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENXIO') throw e;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
      expect(w, 'the reload reached the FIFO').not.toBeNull();
      child.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 300));
      expect(child.exitCode).toBeNull(); // still waiting for its start
      fs.writeSync(w!, 'not an upload record'); // the reload goes on (and drops this record)
      fs.closeSync(w!);
      w = null;
      expect(await waitExit(child)).toEqual({ code: 0, signal: null });
      expect(out).not.toContain('listening on'); // it never announced a server it was about to stop
      expect(err).not.toMatch(/\n\s+at |"level":(50|60)/); // no stack trace, no error logged
    } finally {
      // Whatever failed above, leave no server behind (ours, by its handle).
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      if (w !== null) fs.closeSync(w);
    }

    cli = await startCli(['--dir', dir]);
    const st = await call(cli.base, 'GET', `${PREFIX}/upload-status?guid=${guid}`);
    expect(st.json.data).toMatchObject({ uploadStatus: 'active', missingChunks: [1, 2] });
  });

  it('a start that fails (--dir names a file) says why in one line and exits 1, no stack trace', async () => {
    const file = path.join(await tempDir(), 'a-file');
    await fsp.writeFile(file, 'x');
    const failed = await startCli(['--dir', file]).then(
      () => 'started',
      (e: Error) => e.message,
    );
    expect(failed).toMatch(/^CLI exited with 1: updraft serve: upload root .*a-file is not a folder \(EEXIST\)\n$/);
  });

  it('a root that cannot be made under /proc ends the start with one line and exit 1 (Node\'s recursive mkdir never settled there)', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/cli/main.ts'), 'serve', '--host', '127.0.0.1', '--port', '0', '--dir', `/proc/updraft-no-such-${process.pid}/root`], {
      cwd: ROOT,
      env: { ...process.env, UPDRAFT_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const stderr = collect(child);
    // Bounded: the start that never settled spun at 100% CPU until killed.
    const exited = await waitExit(child, 15_000).catch(() => null);
    if (exited === null) child.kill('SIGKILL');
    expect(exited).toEqual({ code: 1, signal: null });
    expect(stderr()).toMatch(/^updraft serve: ENOENT: no such file or directory, mkdir '\/proc\/updraft-no-such-\d+'\n$/);
  });

  it('makes a missing root several folders deep, and a file on its way is named as not a folder (ENOTDIR)', async () => {
    const base = await tempDir();
    await fsp.writeFile(path.join(base, 'file'), 'x');
    await expect(createUploadEngine({ dir: path.join(base, 'file', 'root'), logLevel: 'silent', host: '127.0.0.1', port: 0 }).listen()).rejects.toThrow(/is not a folder \(ENOTDIR\)/);
    server = await startServer({ dir: path.join(base, 'a', 'b', 'c') });
    expect((await fsp.stat(path.join(base, 'a', 'b', 'c', '.updraft-staging'))).isDirectory()).toBe(true);
  });

  it('creates a new root and completed files with the default mode (their readers need it) and the staging folder 0700', async () => {
    const dir = path.join(await tempDir(), 'fresh', 'root');
    server = await startServer({ dir });
    expect((await fsp.stat(dir)).mode & 0o777).toBe(0o777 & ~process.umask());
    expect((await fsp.stat(path.join(dir, '.updraft-staging'))).mode & 0o777).toBe(0o700);
    const data = bytesOf(3000);
    const init = await initUpload(server.base, { fileName: 'readable.bin', fileSize: data.length, chunkSize: 1024, targetPath: 'sub' });
    await putChunks(server.base, init.json.data!.guid, data, 1024, [0, 1, 2]);
    expect((await fsp.stat(path.join(dir, 'sub', 'readable.bin'))).mode & 0o777).toBe(0o666 & ~process.umask());
    expect((await fsp.stat(path.join(dir, 'sub'))).mode & 0o777).toBe(0o777 & ~process.umask());
  });

  it('an engine that cannot listen (port taken) lets go of its root: the next engine on it starts', async () => {
    const dir = await tempDir();
    server = await startServer();
    const taken = new URL(server.base).port;
    const engine = createUploadEngine({ dir, logLevel: 'silent', workers: 1 });
    await expect(engine.listen(Number(taken), '127.0.0.1')).rejects.toThrow(/could not listen/);
    const next = await startServer({ dir });
    expect((await call(next.base, 'GET', '/healthz')).status).toBe(200);
    await next.close();
  });

  it('npm start: a SIGTERM to npm reaches the server, which stops gracefully (no orphan left holding the port and root)', async () => {
    const dir = await tempDir();
    const npm = spawn('npm', ['start', '--silent', '--', '--port', '0', '--dir', dir], {
      cwd: ROOT,
      env: { ...process.env, UPDRAFT_LOG_LEVEL: 'info', UPDRAFT_DEMO: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const stderr = collect(npm);
    try {
      const base = await awaitListening(npm, stderr, 60_000);
      expect((await call(base, 'GET', '/healthz')).status).toBe(200);
      npm.kill('SIGTERM');
      await waitExit(npm);
      // The server got the signal: it stopped (logged), and nothing answers on its port any more.
      const end = Date.now() + 10_000;
      while (Date.now() < end && !/"event":"server.stopped"/.test(stderr())) await new Promise((r) => setTimeout(r, 50));
      expect(stderr()).toMatch(/"event":"server.stopped"/);
      await expect(fetch(`${base}/healthz`)).rejects.toThrow();
    } finally {
      // Whatever is left of this run (found by its own temp folder), so a failure leaves no server behind.
      let left = '';
      try {
        left = execFileSync('pgrep', ['-f', dir]).toString();
      } catch {
        // pgrep exits 1 when nothing matches
      }
      for (const pid of left.trim().split('\n').filter((p) => p !== '')) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
    }
  }, 90_000);

  it('listen() refuses a port out of range before taking anything: the root stays free', async () => {
    const dir = await tempDir();
    for (const port of [-1, 65536, 1.5]) {
      const engine = createUploadEngine({ dir, logLevel: 'silent', workers: 1 });
      await expect(engine.listen(port, '127.0.0.1')).rejects.toThrow(`port must be an integer from 0 to 65535, got ${port}`);
      await engine.close();
    }
    server = await startServer({ dir });
    expect((await call(server.base, 'GET', '/healthz')).status).toBe(200);
  });

  it('makes a staging folder made before with a wider mode 0700 again (files in progress stay private)', async () => {
    const dir = await tempDir();
    await fsp.mkdir(path.join(dir, '.updraft-staging'), { mode: 0o755 });
    await fsp.chmod(path.join(dir, '.updraft-staging'), 0o755);
    server = await startServer({ dir });
    expect((await fsp.stat(path.join(dir, '.updraft-staging'))).mode & 0o777).toBe(0o700);
  });

  it('a SIGTERM while the CLI\'s modules load stops it cleanly once it has started (exit 0), not by the default action', async () => {
    execFileSync('npx', ['tsc', '-p', '.'], { cwd: ROOT }); // bin/updraft.js runs the compiled CLI
    const dir = await tempDir();
    const child = spawn(process.execPath, ['--import', path.join(ROOT, 'test/fixtures/slow-import.mjs'), path.join(ROOT, 'bin/updraft.js'), 'serve', '--port', '0', '--dir', dir], {
      cwd: ROOT,
      env: { ...process.env, UPDRAFT_LOG_LEVEL: 'info', UPDRAFT_DEMO: '0', SLOW_IMPORT_MS: '1500' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const stderr = collect(child);
    let stdout = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    const end = Date.now() + 20_000;
    while (Date.now() < end && !stderr().includes('slow-import: loading the CLI')) await new Promise((r) => setTimeout(r, 10));
    child.kill('SIGTERM'); // the CLI module is still loading: only bin/updraft.js runs
    const { code, signal } = await waitExit(child, 20_000);
    expect({ code, signal }, stderr()).toEqual({ code: 0, signal: null });
    expect(stderr()).toMatch(/"event":"server.stopped"/);
    expect(stdout).toBe(''); // a server going away is not announced
  }, 60_000);

  it('refuses a fixed port another engine listens on (no silent SO_REUSEPORT sharing), saying it is in use', async () => {
    // A fixed port (the engine on port 0 would get an exclusive one anyway): find a free one, then take it twice.
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const first = createUploadEngine({ dir: await tempDir(), logLevel: 'silent', workers: 1 });
    await first.listen(port, '127.0.0.1');
    try {
      const second = createUploadEngine({ dir: await tempDir(), logLevel: 'silent', workers: 1 });
      await expect(second.listen(port, '127.0.0.1')).rejects.toThrow(`could not listen on 127.0.0.1:${port} (the port is in use)`);
      // Every request still reaches the first engine.
      for (let i = 0; i < 8; i++) expect((await call(`http://127.0.0.1:${port}`, 'GET', '/healthz')).status).toBe(200);
    } finally {
      await first.close();
    }
  });

  // A read-only bind mount needs root and mount(8); elsewhere (an unprivileged CI) the test says so and is skipped.
  const canMount = (() => {
    if (process.getuid?.() !== 0) return false;
    try {
      execFileSync('mount', ['--version'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  })();
  /** Runs `check` on a read-only bind mount of `src` (unmounted after); nothing when this container cannot mount. */
  async function onReadOnlyMount(src: string, check: (mnt: string) => Promise<void>): Promise<void> {
    const mnt = await tempDir();
    try {
      execFileSync('mount', ['--bind', src, mnt]);
    } catch {
      return; // no mount in this container: nothing to test here
    }
    try {
      execFileSync('mount', ['-o', 'remount,ro,bind', mnt]);
      await check(mnt);
    } finally {
      execFileSync('umount', [mnt]);
    }
  }

  it.runIf(canMount)('refuses to start on a read-only root whose staging folder exists, instead of failing every init or completion', async () => {
    const src = await tempDir();
    await fsp.mkdir(path.join(src, '.updraft-staging'), { mode: 0o700 });
    await onReadOnlyMount(src, async (mnt) => {
      const engine = createUploadEngine({ dir: mnt, logLevel: 'silent', workers: 1 });
      await expect(engine.listen(0, '127.0.0.1')).rejects.toThrow(`staging folder ${path.join(mnt, '.updraft-staging')} is not writable (EROFS)`);
      // The CLI says it on one line and exits 1.
      await expect(startCli(['--dir', mnt])).rejects.toThrow(/CLI exited with 1: updraft serve: staging folder .* is not writable \(EROFS\)/);
    });
    expect(await fsp.readdir(src)).toEqual(['.updraft-staging']);
  });

  it.runIf(canMount)('refuses to start on a read-only root without a staging folder, saying the root is not writable', async () => {
    const src = await tempDir();
    await onReadOnlyMount(src, async (mnt) => {
      const engine = createUploadEngine({ dir: mnt, logLevel: 'silent', workers: 1 });
      await expect(engine.listen(0, '127.0.0.1')).rejects.toThrow(`upload root ${mnt} is not writable (EROFS)`);
    });
    expect(await fsp.readdir(src)).toEqual([]);
  });

  it('removes staging files that have no state at start', async () => {
    const dir = await tempDir();
    await fsp.mkdir(path.join(dir, '.updraft-staging'), { recursive: true });
    await fsp.writeFile(path.join(dir, '.updraft-staging', '00000000-0000-4000-8000-000000000000.part'), 'orphan');
    await fsp.writeFile(path.join(dir, '.updraft-staging', 'junk.meta.tmp'), 'x');
    server = await startServer({ dir });
    expect(await fsp.readdir(path.join(dir, '.updraft-staging'))).toEqual([]);
  });
});
