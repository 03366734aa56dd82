/**
 * Updraft itself, started through its CLI exactly as a user would run it from source:
 *
 *   UPDRAFT_LOCK_MODE=<chunk|upload> UPDRAFT_BENCH=1 \
 *     node --import tsx src/cli/main.ts serve --host 127.0.0.1 --port 0 --dir <dataDir> --durability <chunk|upload>
 *
 * Ready when it prints `listening on http://HOST:PORT`. Driven over the HTTP wire API (ChunkPutClient, prefix
 * /api/v1/files); the finished file is expected at <dataDir>/<fileName> (found anywhere up to 3 folders deep).
 * With UPDRAFT_BENCH=1 it is expected to serve GET /__bench/eld and POST /__bench/eld/reset like the peers; a 404
 * makes the event-loop figure "n/a". Until src/cli/main.ts exists or when it fails to start, the target is skipped.
 *
 * The WebSocket transport (`updraft.v1`, msgpack frames, a window of chunks in flight) plugs in here: write a
 * `clients/updraft-ws.ts` implementing UploadClient and add variants whose `transport` is 'ws'.
 */
import fs from 'node:fs';
import path from 'node:path';
import { startServer, StartFailed } from '../child-server.js';
import { ChunkPutClient } from '../clients/chunk-put.js';
import { TargetUnavailable, type RunningTarget, type TargetSpec, type UploadClient } from '../model.js';
import { WIRE_PREFIX } from './node-peers.js';

export const UPDRAFT_CLI = path.join('src', 'cli', 'main.ts');
const READY_LINE = /^listening on (http:\/\/\S+)$/;

export type Durability = 'chunk' | 'upload';
export type LockMode = 'chunk' | 'upload';
export type Transport = 'http';

export interface UpdraftVariant {
  readonly durability: Durability;
  readonly lockMode: LockMode;
  readonly transport: Transport;
}

export function updraftTargetId(v: UpdraftVariant): string {
  return `updraft-${v.durability}${v.lockMode === 'upload' ? '-lockupload' : ''}${v.transport === 'http' ? '' : `-${v.transport}`}`;
}

export function updraftTarget(variant: UpdraftVariant): TargetSpec {
  const { durability, lockMode, transport } = variant;
  return {
    id: updraftTargetId(variant),
    label: `Updraft ${transport.toUpperCase()} d=${durability} lock=${lockMode}`,
    role: 'updraft',
    description: `Updraft CLI, --durability ${durability}, UPDRAFT_LOCK_MODE=${lockMode}, ${transport} transport`,
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
            '--import', 'tsx', UPDRAFT_CLI, 'serve',
            '--host', '127.0.0.1', '--port', '0', '--dir', context.dataDir, '--durability', durability,
          ],
          cwd: context.repoRoot,
          env: { ...process.env, UPDRAFT_LOCK_MODE: lockMode, UPDRAFT_BENCH: '1' },
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
      const client: UploadClient = new ChunkPutClient({
        baseUrl: url, prefix: WIRE_PREFIX, workDir: context.workDir, timeoutMs: context.requestTimeoutMs,
      });
      const started = server;
      return {
        client,
        server: { pid: started.pid, rssScope: 'root' },
        eldBaseUrl: url,
        stored: (job) => {
          const found = findFile(context.dataDir, job.fileName, 3);
          return found === undefined
            ? { kind: 'file', path: path.join(context.dataDir, job.fileName) } // verification then reports it missing
            : { kind: 'file', path: found };
        },
        stop: () => started.stop(),
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
