/**
 * Updraft itself, started through its CLI as a user would run it, from the compiled output (build.ts):
 *
 *   UPDRAFT_LOCK_MODE=<chunk|upload> UPDRAFT_BENCH=1 UPDRAFT_TOKENS=bench00:...,bench15:... \
 *     node dist/src/cli/main.js serve --host 127.0.0.1 --port 0 --dir <dataDir> --durability <chunk|upload>
 *
 * (`node --import tsx src/cli/main.ts serve ...` when the build is not usable; the log and report say which.)
 * Ready when it prints `listening on http://HOST:PORT`. The finished file is expected at <dataDir>/<fileName> (found
 * anywhere up to 3 folders deep). With UPDRAFT_BENCH=1 it serves GET /__bench/eld and POST /__bench/eld/reset like
 * the peers; a 404 makes the event-loop figure "n/a". When src/cli/main.ts is missing or fails to start, the target
 * is skipped.
 *
 * Users: Updraft limits what one user may do at once (8 WebSockets, 256 MiB of PUT chunk bytes in flight; issue 6),
 * and 16 uploads of 4 x 8 MiB PUTs from one user would be refused with 429. So the server knows BENCH_USERS bearer
 * tokens and the clients send each upload as the next user in turn: 16 uploads at once are 16 users, as in use.
 *
 * Transports (the client the target is driven by):
 *   - `http`: the PUT wire API through curl (ChunkPutClient, prefix /api/v1/files), the scenario's PUTs in flight;
 *   - `ws`: `updraft.v1` WebSocket frames, window 8, each chunk as `part` frames of 2 MiB (what the Updraft client
 *     sends by default; WsUploadClient over the ws-runner child process);
 *   - `ps-serial`, `ps-pipelined`: the PSWebHost WebSocket protocol, one chunk at a time / 8 in flight.
 */
import fs from 'node:fs';
import path from 'node:path';
import { startServer, StartFailed } from '../child-server.js';
import { ChunkPutClient } from '../clients/chunk-put.js';
import { WsRunner, WsUploadClient } from '../clients/updraft-ws.js';
import { TargetUnavailable, type RunningTarget, type TargetSpec, type UploadClient } from '../model.js';
import { WIRE_PREFIX } from './node-peers.js';

export const UPDRAFT_CLI = path.join('src', 'cli', 'main.ts');
const READY_LINE = /^listening on (http:\/\/\S+)$/;

/** Users the server knows (bearer tokens); uploads take them in turn. At least the most uploads run at once. */
export const BENCH_USERS = 16;
const BENCH_TOKENS = Array.from({ length: BENCH_USERS }, (_, i) => `bench-token-${String(i).padStart(2, '0')}`);
const TOKENS_ENV = BENCH_TOKENS.map((t, i) => `bench${String(i).padStart(2, '0')}:${t}`).join(',');
/** updraft.v1 window and PSWebHost pipelining depth: the server's default `wsWindow`. */
export const WS_WINDOW = 8;
/** updraft.v1 part size: the Updraft client's default (UploadOptions.partSize). */
export const WS_PART_SIZE = 2 * 1024 * 1024;

export type Durability = 'chunk' | 'upload';
export type LockMode = 'chunk' | 'upload';
/** http: PUT; ws: updraft.v1; ps-serial / ps-pipelined: the PSWebHost WebSocket protocol. */
export type Transport = 'http' | 'ws' | 'ps-serial' | 'ps-pipelined';

export interface UpdraftVariant {
  readonly durability: Durability;
  readonly lockMode: LockMode;
  readonly transport: Transport;
}

export function updraftTargetId(v: UpdraftVariant): string {
  return `updraft-${v.durability}${v.lockMode === 'upload' ? '-lockupload' : ''}${v.transport === 'http' ? '' : `-${v.transport}`}`;
}

const TRANSPORT_LABEL: Record<Transport, string> = {
  http: 'PUT',
  ws: `updraft.v1 w${WS_WINDOW} p${WS_PART_SIZE / (1024 * 1024)}M`,
  'ps-serial': 'PSWebHost WS serial',
  'ps-pipelined': `PSWebHost WS x${WS_WINDOW}`,
};

export function updraftTarget(variant: UpdraftVariant): TargetSpec {
  const { durability, lockMode, transport } = variant;
  return {
    id: updraftTargetId(variant),
    label: `Updraft ${TRANSPORT_LABEL[transport]} d=${durability} lock=${lockMode}`,
    role: 'updraft',
    description: `Updraft CLI, --durability ${durability}, UPDRAFT_LOCK_MODE=${lockMode}, ${TRANSPORT_LABEL[transport]} ` +
      `(${transport === 'http' ? 'curl' : 'ws-runner child process'})`,
    async start(context): Promise<RunningTarget> {
      if (!fs.existsSync(path.join(context.repoRoot, UPDRAFT_CLI))) {
        throw new TargetUnavailable(`${UPDRAFT_CLI} does not exist yet (the engine has not landed)`);
      }
      let server;
      try {
        server = await startServer({
          label: 'updraft',
          command: process.execPath,
          args: [
            ...context.runtime.nodeArgs(UPDRAFT_CLI), 'serve',
            '--host', '127.0.0.1', '--port', '0', '--dir', context.dataDir, '--durability', durability,
          ],
          cwd: context.repoRoot,
          env: { ...process.env, UPDRAFT_LOCK_MODE: lockMode, UPDRAFT_BENCH: '1', UPDRAFT_TOKENS: TOKENS_ENV },
          ready: { kind: 'line', pattern: READY_LINE },
          timeoutMs: context.startTimeoutMs,
        });
      } catch (error) {
        if (error instanceof StartFailed) {
          throw new TargetUnavailable(`${UPDRAFT_CLI} failed to start: ${error.message}\n${error.output.trim().slice(-1500)}`);
        }
        throw error;
      }
      const url = server.readyMatch ?? '';
      const started = server;
      let runner: WsRunner | undefined;
      let client: UploadClient;
      if (transport === 'http') {
        client = new ChunkPutClient({
          baseUrl: url, prefix: WIRE_PREFIX, timeoutMs: context.requestTimeoutMs, tokens: BENCH_TOKENS,
        });
      } else {
        try {
          runner = await WsRunner.start(context.repoRoot, context.runtime);
        } catch (error) {
          await started.stop();
          throw new TargetUnavailable(`the WebSocket client did not start: ${(error as Error).message}`);
        }
        client = new WsUploadClient({
          baseUrl: url,
          prefix: WIRE_PREFIX,
          protocol: transport === 'ws' ? 'updraft.v1' : 'pswebhost',
          inFlight: transport === 'ps-serial' ? 1 : WS_WINDOW,
          ...(transport === 'ws' ? { partSize: WS_PART_SIZE } : {}),
          timeoutMs: context.requestTimeoutMs,
          runner,
          tokens: BENCH_TOKENS,
        });
      }
      const wsRunner = runner;
      return {
        client,
        server: { pid: started.pid, rssScope: 'root' },
        ...(wsRunner === undefined ? {} : { clientProcess: { pid: wsRunner.pid } }),
        eldBaseUrl: url,
        stored: (job) => {
          const found = findFile(context.dataDir, job.fileName, 3);
          return found === undefined
            ? { kind: 'file', path: path.join(context.dataDir, job.fileName) } // verification then reports it missing
            : { kind: 'file', path: found };
        },
        stop: async () => {
          await wsRunner?.stop();
          await started.stop();
        },
      };
    },
  };
}

/** `dir/name` if it exists, else the first file called `name` up to `depth` folders down (bounded walk). */
function findFile(dir: string, name: string, depth: number): string | undefined {
  const direct = path.join(dir, name);
  if (fs.existsSync(direct) && fs.statSync(direct).isFile()) return direct;
  if (depth === 0) return undefined;
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return undefined;
  }
  for (const entry of entries.slice(0, 1000)) {
    if (!entry.isDirectory()) continue;
    const found = findFile(path.join(dir, entry.name), name, depth - 1);
    if (found !== undefined) return found;
  }
  return undefined;
}
