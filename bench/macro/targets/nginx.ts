/**
 * nginx WebDAV PUT: the C server a user might put in front instead. Started from a config generated here, in the
 * foreground (`-g 'daemon off;'`) as our child, with its own pid file, error log and body temp folder, on a loopback
 * port picked free just before. nginx buffers each request body in `client_body_temp_path` and renames it into place,
 * so that folder sits inside the data directory (same filesystem: a rename, not a copy). No fsync.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { freeLoopbackPort, startServer, StartFailed, type StartedServer } from '../child-server.js';
import { DavPutClient } from '../clients/dav-put.js';
import { TargetUnavailable, type RunningTarget, type TargetContext, type TargetSpec } from '../model.js';

const PORT_ATTEMPTS = 3;

export function findNginx(): string | undefined {
  for (const candidate of ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx', '/usr/bin/nginx']) {
    if (fs.existsSync(candidate)) return candidate;
  }
  try {
    const found = execFileSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8', timeout: 2000 }).trim();
    return found === '' ? undefined : found;
  } catch {
    return undefined;
  }
}

export function nginxVersion(binary: string): string | undefined {
  // nginx prints its version on stderr.
  const result = spawnSync(binary, ['-v'], { encoding: 'utf8', timeout: 2000 });
  const text = `${result.stderr ?? ''}${result.stdout ?? ''}`.trim();
  return text === '' ? undefined : text;
}

function nginxConfig(confDir: string, dataDir: string, port: number): string {
  const q = (p: string): string => `"${p.replace(/"/g, '\\"')}"`;
  return [
    // As root the workers would switch to `nobody` and could not write our temp folders.
    process.getuid?.() === 0 ? 'user root;' : '',
    'worker_processes auto;',
    `pid ${q(path.join(confDir, 'nginx.pid'))};`,
    `error_log ${q(path.join(confDir, 'error.log'))} warn;`,
    'events { worker_connections 1024; }',
    'http {',
    '  access_log off;',
    `  client_body_temp_path ${q(path.join(dataDir, '.client-body'))};`,
    '  client_max_body_size 0;',
    `  server {`,
    `    listen 127.0.0.1:${port};`,
    '    location /dav/ {',
    `      root ${q(dataDir)};`,
    '      dav_methods PUT;',
    '      create_full_put_path on;',
    '      dav_access user:rw;',
    '    }',
    '  }',
    '}',
    '',
  ].join('\n');
}

let configs = 0;

export const nginxTarget: TargetSpec = {
  id: 'nginx',
  label: 'nginx WebDAV PUT',
  role: 'peer',
  description: 'nginx dav_methods PUT, worker_processes auto, each chunk PUT to its own file <upload>/<chunk>, no fsync',
  async start(context: TargetContext): Promise<RunningTarget> {
    const binary = findNginx();
    if (binary === undefined) throw new TargetUnavailable('nginx is not installed (apt-get install -y nginx)');
    const confDir = path.join(context.workDir, `nginx-${configs++}`);
    fs.mkdirSync(confDir, { recursive: true });
    fs.mkdirSync(path.join(context.dataDir, '.client-body'), { recursive: true });
    let server: StartedServer | undefined;
    let port = 0;
    let lastError = '';
    for (let attempt = 0; attempt < PORT_ATTEMPTS && server === undefined; attempt++) {
      port = await freeLoopbackPort();
      const confPath = path.join(confDir, 'nginx.conf');
      fs.writeFileSync(confPath, nginxConfig(confDir, context.dataDir, port));
      try {
        server = await startServer({
          label: 'nginx',
          command: binary,
          args: ['-p', confDir, '-e', path.join(confDir, 'error.log'), '-c', confPath, '-g', 'daemon off;'],
          ready: { kind: 'tcp', host: '127.0.0.1', port },
          timeoutMs: context.startTimeoutMs,
        });
      } catch (error) {
        if (!(error instanceof StartFailed)) throw error;
        lastError = `${error.message}\n${error.output.trim()}\n${readTail(path.join(confDir, 'error.log'))}`;
        // Another process took the port between our probe and nginx's bind: try a new one.
        if (!/Address already in use/.test(lastError)) break;
      }
    }
    if (server === undefined) throw new TargetUnavailable(`nginx did not start: ${lastError.trim()}`);
    const started = server;
    return {
      client: new DavPutClient(`http://127.0.0.1:${port}`, context.requestTimeoutMs),
      server: { pid: started.pid, rssScope: 'tree' },
      stored: (job, receipt) => ({
        kind: 'chunk-files',
        paths: job.content.chunkPaths.map((_, n) => path.join(context.dataDir, 'dav', receipt.id, String(n))),
      }),
      stop: () => started.stop(),
    };
  },
};

function readTail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').slice(-2000);
  } catch {
    return '';
  }
}
