/**
 * One engine per upload root on a host. An engine reloads every upload in its staging folder and removes files
 * without state there, so a second engine on the same root would take over, or delete, the first one's uploads.
 *
 * The guard is an abstract Unix socket (Linux) named after the staging folder's device and inode: binding it fails
 * with EADDRINUSE while another engine, in this process or another, holds it, and the kernel lets go of it when its
 * process ends however it ends (SIGKILL included), so no lock file can go stale and block a restart. It cannot see
 * engines on other hosts, or in another network namespace, sharing a root over a network filesystem
 * (docs/OPERATIONS.md). Where abstract sockets do not exist (not Linux), the engine starts unguarded and says so.
 */
import fsp from 'node:fs/promises';
import net from 'node:net';
import type { Logger } from 'pino';

/** Thrown by start when another engine uses the same upload root. */
export class RootInUseError extends Error {
  readonly code = 'ERR_ROOT_IN_USE';
  constructor(dir: string) {
    super(`another Updraft engine on this host uses the upload root ${dir}: give each engine its own --dir`);
    this.name = 'RootInUseError';
  }
}

export interface RootGuard {
  release(): Promise<void>;
}

/** Holds the staging folder `stagingDir` (which must exist) for this engine; `dir` is named in the error. */
export async function holdRoot(stagingDir: string, dir: string, log: Logger): Promise<RootGuard | null> {
  const st = await fsp.stat(stagingDir, { bigint: true });
  const name = `\0updraft-root:${st.dev.toString(16)}:${st.ino.toString(16)}`;
  const server = net.createServer((s) => s.destroy());
  const bound = await new Promise<NodeJS.ErrnoException | null>((resolve) => {
    server.once('error', resolve);
    // exclusive: in a cluster worker, listen() would otherwise hand the socket to the primary, shared by all workers.
    server.listen({ path: name, exclusive: true }, () => {
      server.off('error', resolve);
      resolve(null);
    });
  });
  if (bound?.code === 'EADDRINUSE') throw new RootInUseError(dir);
  if (bound !== null) {
    log.warn({ err: bound }, 'cannot guard the upload root against a second engine on this host (no abstract sockets); make sure no other engine uses it');
    return null;
  }
  server.unref(); // the guard alone must not keep the process alive
  return {
    release: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
