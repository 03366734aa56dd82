/**
 * The Node peers in bench/peers/, each started as `node dist/bench/peers/<name>.js --host 127.0.0.1 --port 0
 * --dir <dataDir>` (or `node --import tsx bench/peers/<name>.ts` when the build is not usable, see build.ts) and
 * ready when it prints `listening on http://HOST:PORT`. Like Updraft, they run compiled so that neither side pays
 * for the tsx loader.
 */
import path from 'node:path';
import { startServer, StartFailed } from '../child-server.js';
import { ChunkPutClient } from '../clients/chunk-put.js';
import { TusPatchClient } from '../clients/tus-patch.js';
import { TargetUnavailable, type RunningTarget, type TargetContext, type TargetSpec } from '../model.js';

export const WIRE_PREFIX = '/api/v1/files';
const READY_LINE = /^listening on (http:\/\/\S+)$/;

async function startPeer(context: TargetContext, script: string): Promise<{ pid: number; url: string; stop(): Promise<void> }> {
  try {
    const server = await startServer({
      label: script,
      command: process.execPath,
      args: [...context.runtime.nodeArgs(path.join('bench', 'peers', script)), '--host', '127.0.0.1', '--port', '0', '--dir', context.dataDir],
      cwd: context.repoRoot,
      ready: { kind: 'line', pattern: READY_LINE },
      timeoutMs: context.startTimeoutMs,
    });
    return { pid: server.pid, url: server.readyMatch ?? '', stop: () => server.stop() };
  } catch (error) {
    if (error instanceof StartFailed) throw new TargetUnavailable(`${error.message}\n${error.output.trim()}`);
    throw error;
  }
}

function chunkPeer(id: string, label: string, description: string, options: { stores: boolean }): TargetSpec {
  return {
    id,
    label,
    role: id === 'discard' ? 'limit' : 'peer',
    description,
    async start(context): Promise<RunningTarget> {
      const peer = await startPeer(context, `${id}.ts`);
      return {
        client: new ChunkPutClient({ baseUrl: peer.url, prefix: WIRE_PREFIX, timeoutMs: context.requestTimeoutMs }),
        server: { pid: peer.pid, rssScope: 'root' },
        eldBaseUrl: peer.url,
        stored: (job) =>
          options.stores
            ? { kind: 'file', path: path.join(context.dataDir, job.fileName) }
            : { kind: 'not-stored', why: 'discarded; the server checked every chunk length and curl every reply' },
        stop: () => peer.stop(),
      };
    },
  };
}

export const discardTarget = chunkPeer(
  'discard', 'uWS discard', 'uWS reads each PUT body with onData and drops it: the HTTP ingest ceiling', { stores: false },
);

export const syncMainTarget = chunkPeer(
  'sync-main', 'uWS writeSync on main',
  'uWS, fs.writeSync of every onData piece at its offset on the main thread, one file per upload, no fsync (no workers)',
  { stores: true },
);

export const syncMainDurableTarget = chunkPeer(
  'sync-main-durable', 'uWS writeSync on main + fdatasync',
  'sync-main, and the last chunk of each upload answered after an fdatasync of the file on the main thread: as durable as Updraft with durability=upload (no workers)',
  { stores: true },
);

export const nodeHttpTarget = chunkPeer(
  'node-http', 'node:http pipe',
  "node:http, each PUT body piped to fs.createWriteStream(file, { flags: 'r+', start }), no fsync",
  { stores: true },
);

export const tusTarget: TargetSpec = {
  id: 'tus',
  label: '@tus/server',
  role: 'peer',
  description: '@tus/server 2.4 + @tus/file-store 2.1 on node:http; POST then sequential PATCHes of the chunk size, no fsync',
  async start(context): Promise<RunningTarget> {
    const peer = await startPeer(context, 'tus.ts');
    return {
      client: new TusPatchClient(`${peer.url}/files`, context.requestTimeoutMs),
      server: { pid: peer.pid, rssScope: 'root' },
      eldBaseUrl: peer.url,
      stored: (_job, receipt) => ({ kind: 'file', path: path.join(context.dataDir, receipt.id) }),
      stop: () => peer.stop(),
    };
  },
};
