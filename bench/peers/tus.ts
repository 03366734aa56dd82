/**
 * The tus reference server as a user would deploy it: @tus/server with @tus/file-store (one data file plus a JSON
 * metadata file per upload in --dir). tus appends: PATCH requests carry Upload-Offset and must arrive in order, so
 * the harness sends each upload's chunks one after another (uploads still run side by side). No fsync.
 *
 *   node --import tsx bench/peers/tus.ts --host 127.0.0.1 --port 0 --dir <dir>     (tus endpoint: /files/)
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';
import { announceListening, readServerArgs } from './server-args.js';
import { ELD_PATH, ELD_RESET_PATH, startLoopDelayMonitor } from './loop-delay.js';

const TUS_PATH = '/files'; // the harness's TusPatchClient posts to <base>/files

const args = readServerArgs();
const eld = startLoopDelayMonitor();
const tus = new Server({ path: TUS_PATH, datastore: new FileStore({ directory: args.dir }) });

const server = http.createServer((req, res) => {
  if (req.url === ELD_PATH && req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(eld.snapshot()));
    return;
  }
  if (req.url === ELD_RESET_PATH && req.method === 'POST') {
    eld.reset();
    res.writeHead(204).end();
    return;
  }
  tus.handle(req, res).catch((error: unknown) => {
    process.stderr.write(`tus error: ${error instanceof Error ? error.stack : String(error)}\n`);
    if (!res.headersSent) res.writeHead(500).end();
  });
});

server.listen(args.port, args.host, () => {
  announceListening(args.host, (server.address() as AddressInfo).port);
});
