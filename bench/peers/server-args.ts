/**
 * Flags shared by every peer server, the same ones the Updraft CLI takes, so the harness starts them alike:
 *   --host 127.0.0.1 --port 0 --dir <directory> [--prefix /api/v1/files]
 * When listening, a peer prints exactly one line `listening on http://HOST:PORT` on stdout.
 */
import { parseArgs } from 'node:util';
import { DEFAULT_PREFIX } from './upload-table.js';

export interface ServerArgs {
  readonly host: string;
  readonly port: number;
  readonly dir: string;
  readonly prefix: string;
}

export function readServerArgs(argv: readonly string[] = process.argv.slice(2)): ServerArgs {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      dir: { type: 'string' },
      prefix: { type: 'string', default: DEFAULT_PREFIX },
    },
    strict: true,
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port must be 0..65535, got ${values.port}`);
  if (values.dir === undefined || values.dir === '') throw new Error('--dir is required');
  return { host: values.host, port, dir: values.dir, prefix: values.prefix.replace(/\/+$/, '') };
}

export function announceListening(host: string, port: number): void {
  process.stdout.write(`listening on http://${host}:${port}\n`);
}
