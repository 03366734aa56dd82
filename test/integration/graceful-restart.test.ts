/**
 * Graceful restart under load (issue 6): a real `updraft serve` process (chunk durability) takes 20 uploads at once,
 * 15 over PUT (3 chunks in flight each) and 5 over updraft.v1 WebSockets (its window; three of them send each
 * chunk as `part` frames). A third of the way through it gets SIGTERM: it must stop accepting, finish the writes in
 * flight, persist state and exit 0. It is started again on the same folder and port, and the clients, which retry
 * like real ones (on a connection error or a retryable reply: back off, ask upload-status or reconnect for a hello,
 * send what is missing), finish.
 *
 * Checked: no acknowledged chunk is lost (every status and hello a client gets, before and after the restart, lists
 * none of the chunks it has seen acknowledged as missing, and each client that was still uploading has made that
 * check against the restarted server), and every file is byte-exact.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  PREFIX,
  bytesOf,
  call,
  initUpload,
  listFiles,
  putChunk,
  shuffled,
  slice,
  startCli,
  tempDir,
  waitExit,
} from '../fixtures/server.js';
import type { CliServer } from '../fixtures/server.js';
import { freePort } from '../fixtures/nginx.js';
import { TestSocket } from '../fixtures/ws-client.js';

const CS = 64 * 1024;
const UPLOADS = 20;
const WS_UPLOADS = 5;
const PUTS_IN_FLIGHT = 3;
/** SIGTERM once this share of all chunks has been acknowledged. */
const TERM_AT = 1 / 3;
/** Every client gives up after this long (the test then fails on its missing file). */
const CLIENT_DEADLINE_MS = 40_000;

const servers: CliServer[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    if (s.child.exitCode === null && s.child.signalCode === null) {
      s.child.kill('SIGKILL');
      await waitExit(s.child);
    }
  }
  for (const d of dirs.splice(0)) await fsp.rm(d, { recursive: true, force: true });
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Client {
  guid: string;
  name: string;
  data: Buffer;
  total: number;
  transport: 'put' | 'v1';
  /** updraft.v1: chunks go as `part` frames (every other client), so the stop also lands between the parts of one. */
  parts: boolean;
  /** Chunks a reply (200 or ack) said were stored. */
  acked: Set<number>;
  ackedBeforeTerm: number;
  /** Statuses or hellos from the restarted server that were checked against `acked`. */
  checkedAfterRestart: number;
  completedOnOldServer: boolean;
  done: boolean;
  violations: string[];
  retries: number;
}

describe('graceful restart under load', () => {
  it('SIGTERM with 20 uploads running: exit 0, no acknowledged chunk lost, clients resume and finish byte-exact', async () => {
    const dir = await tempDir('updraft-graceful-');
    dirs.push(dir);
    // A fixed port, as in production (a port the kernel picked for the listener could not be bound again while the
    // old connections linger in TIME_WAIT); the restarted server must get it back at once.
    const args = ['--dir', dir, '--durability', 'chunk', '--workers', '2', '--no-demo', '--port', String(await freePort())];
    servers.push(await startCli(args));
    const base = servers[0]!.base;
    /** 1 until the restarted server is listening; a request sent while it is 2 reaches the new process. */
    let generation = 1;
    let termSent = false;
    let ackedTotal = 0;

    const clients: Client[] = [];
    for (let i = 0; i < UPLOADS; i++) {
      const data = bytesOf((20 + (i % 7) * 3) * CS + 1000 * i + 1);
      const name = `upload-${String(i).padStart(2, '0')}.bin`;
      const init = await initUpload(base, { fileName: name, fileSize: data.length, chunkSize: CS });
      expect(init.status, JSON.stringify(init.json)).toBe(200);
      clients.push({
        guid: init.json.data!.guid as string,
        name,
        data,
        total: init.json.data!.totalChunks as number,
        transport: i < UPLOADS - WS_UPLOADS ? 'put' : 'v1',
        parts: i % 2 === 1,
        acked: new Set(),
        ackedBeforeTerm: 0,
        checkedAfterRestart: 0,
        completedOnOldServer: false,
        done: false,
        violations: [],
        retries: 0,
      });
    }
    const allChunks = clients.reduce((n, c) => n + c.total, 0);

    let term!: () => void;
    const termTime = new Promise<void>((resolve) => (term = resolve));
    const onAck = (cl: Client, c: number): void => {
      if (cl.acked.has(c)) return;
      cl.acked.add(c);
      if (!termSent) cl.ackedBeforeTerm++;
      if (++ackedTotal >= allChunks * TERM_AT && !termSent) term();
    };
    /** A status or hello listing `missing`: none of the chunks acknowledged before it was asked for may be there. */
    const check = (cl: Client, ackedBefore: number[], missing: number[], gen: number, what: string): void => {
      const lost = ackedBefore.filter((c) => missing.includes(c));
      if (lost.length > 0) cl.violations.push(`${what} (server ${gen}) lists acknowledged chunks ${lost.join(',')} as missing`);
      if (gen === 2) cl.checkedAfterRestart++;
    };

    /** PUT client: send, and on any failure back off, ask upload-status, send what it lists. */
    async function runPut(cl: Client): Promise<void> {
      let todo = shuffled([...Array(cl.total).keys()], cl.total);
      const deadline = Date.now() + CLIENT_DEADLINE_MS;
      while (Date.now() < deadline) {
        let failed = false;
        let next = 0;
        await Promise.all(
          Array.from({ length: PUTS_IN_FLIGHT }, async () => {
            while (!failed && next < todo.length) {
              const c = todo[next++]!;
              try {
                const r = await putChunk(base, cl.guid, c, slice(cl.data, CS, c));
                if (r.status === 200) onAck(cl, c);
                else if (r.json.data?.retryable === true) failed = true; // 503 ERR_SHUTTING_DOWN while it stops
                else throw new Error(`chunk ${c}: ${r.status} ${JSON.stringify(r.json)}`);
              } catch (e) {
                if (e instanceof Error && e.message.startsWith('chunk ')) throw e;
                failed = true; // connection refused or reset, or a reply cut off
              }
            }
          }),
        );
        if (!failed && cl.acked.size === cl.total) {
          if (generation === 1) cl.completedOnOldServer = true;
          else if (cl.checkedAfterRestart === 0) {
            // Its last status came from the stopping server and the rest went to the new one without a failure:
            // ask the restarted server once, so every acknowledged chunk is checked across the restart.
            const ackedBefore = [...cl.acked];
            const st = await call(base, 'GET', `${PREFIX}/upload-status?guid=${cl.guid}`);
            check(cl, ackedBefore, (st.json.data?.missingChunks as number[] | undefined) ?? [], 2, 'upload-status');
          }
          break;
        }
        cl.retries++;
        // Back off, then ask what the server has (retrying while it is down).
        let statusGen = 0;
        for (let wait = 50; Date.now() < deadline; wait = Math.min(500, wait * 2)) {
          await sleep(wait);
          const ackedBefore = [...cl.acked];
          const gen = generation;
          try {
            const st = await call(base, 'GET', `${PREFIX}/upload-status?guid=${cl.guid}`);
            if (st.status !== 200) continue;
            check(cl, ackedBefore, st.json.data!.missingChunks as number[], gen, 'upload-status');
            todo = st.json.data!.missingChunks as number[];
            statusGen = gen;
            break;
          } catch {
            // still down
          }
        }
        if (todo.length === 0) {
          // Every chunk stored; the completion is checked below. Learned from the stopping server, while it finished
          // the writes in flight: this upload ended on the old server.
          if (statusGen === 1) cl.completedOnOldServer = true;
          break;
        }
      }
      cl.done = true;
    }

    /** updraft.v1 client: on a close before complete, reconnect (backing off), read hello, send what it lists. */
    async function runV1(cl: Client): Promise<void> {
      const deadline = Date.now() + CLIENT_DEADLINE_MS;
      let wait = 50;
      while (Date.now() < deadline && !cl.done) {
        const ackedBefore = [...cl.acked];
        const gen = generation;
        let s: TestSocket;
        try {
          s = await TestSocket.open(base, cl.guid, { protocols: ['updraft.v1'] });
        } catch {
          cl.retries++;
          await sleep(wait);
          wait = Math.min(500, wait * 2);
          continue;
        }
        wait = 50;
        try {
          const hello = await s.nextFrame();
          if (hello.t !== 'hello') throw new Error(`expected hello, got ${hello.t}`);
          check(cl, ackedBefore, hello.missing, gen, 'hello');
          const todo = shuffled(hello.missing, cl.total + hello.missing.length);
          let next = 0;
          let inFlight = 0;
          let window = hello.window;
          const pump = (): void => {
            while (inFlight < window && next < todo.length) {
              const c = todo[next++]!;
              if (cl.parts) s.nativeParts(c, slice(cl.data, CS, c), 20_000);
              else s.nativeChunk(c, slice(cl.data, CS, c));
              inFlight++;
            }
          };
          pump();
          for (;;) {
            const m = await s.nextFrame(undefined, true);
            if (m.t === 'window') {
              window = m.window;
              pump();
            } else if (m.t === 'ack') {
              onAck(cl, m.c);
              inFlight--;
              pump();
            } else if (m.t === 'complete') {
              if (generation === 1) cl.completedOnOldServer = true;
              else if (cl.checkedAfterRestart === 0) {
                // Its last hello may have come from the new server while `generation` still said 1 (it starts
                // listening just before the test records the restart): ask the restarted server once.
                const ackedBefore = [...cl.acked];
                const st = await call(base, 'GET', `${PREFIX}/upload-status?guid=${cl.guid}`);
                check(cl, ackedBefore, (st.json.data?.missingChunks as number[] | undefined) ?? [], 2, 'upload-status');
              }
              cl.done = true;
              break;
            } else if (m.t === 'error' && m.c !== undefined) {
              inFlight--; // a retryable chunk error: it is sent again on the next connection
            }
            // error without c (ERR_SHUTTING_DOWN): the close follows and next() throws
          }
        } catch {
          cl.retries++; // closed (1001 on shutdown) or cut off: reconnect
        }
        await s.terminate().catch(() => {});
      }
      cl.done = true;
    }

    const started = Date.now();
    const running = Promise.all(clients.map((cl) => (cl.transport === 'put' ? runPut(cl) : runV1(cl))));

    // --- SIGTERM mid-way, exit 0, start again on the same folder (and port) -----------------------------------------
    await termTime;
    termSent = true;
    const ackedAtTerm = ackedTotal;
    const old = servers[0]!;
    old.child.kill('SIGTERM');
    expect(await waitExit(old.child, 20_000)).toEqual({ code: 0, signal: null });
    const ackedWhileStopping = ackedTotal - ackedAtTerm;
    expect(old.stderr()).not.toMatch(/"level":(50|60)/); // no error or fatal log line while stopping under load
    servers.push(await startCli(args));
    expect(servers[1]!.base).toBe(base);
    generation = 2;

    await running;
    const elapsed = Date.now() - started;

    const problems = clients.flatMap((cl) => cl.violations.map((v) => `${cl.name}: ${v}`));
    expect(problems).toEqual([]);
    expect(ackedAtTerm).toBeGreaterThan(0);
    expect(ackedAtTerm).toBeLessThan(allChunks);
    // Most uploads were still running at the stop (a few may finish while the signal is on its way).
    expect(clients.filter((cl) => cl.checkedAfterRestart > 0).length).toBeGreaterThanOrEqual(UPLOADS / 2);
    for (const cl of clients) {
      if (!cl.completedOnOldServer) expect(cl.checkedAfterRestart, `${cl.name} never asked the restarted server`).toBeGreaterThan(0);
      const st = await call(base, 'GET', `${PREFIX}/upload-status?guid=${cl.guid}`);
      expect(st.json.data, cl.name).toMatchObject({ uploadStatus: 'completed', receivedChunks: cl.total, missingChunks: [] });
      expect(Buffer.compare(await fsp.readFile(path.join(dir, cl.name)), cl.data), cl.name).toBe(0);
    }
    expect(await listFiles(dir)).toEqual(clients.map((cl) => cl.name).sort());
    expect(servers[1]!.stderr()).not.toMatch(/"level":(50|60)/);
    // Printed for the record (tests never time; this only shows the restart happened mid-way).
    console.log(
      `graceful restart: ${ackedAtTerm}/${allChunks} chunks acknowledged at SIGTERM, ${ackedWhileStopping} more while it stopped, ` +
        `${clients.reduce((n, c) => n + c.retries, 0)} client retries, ${clients.filter((c) => c.completedOnOldServer).length} uploads finished on the old server, ${elapsed} ms`,
    );
  });
});
