/**
 * The minimal node:http server a user might write: each PUT body is piped into
 * `fs.createWriteStream(file, { flags: 'r+', start: offset })`, so every chunk opens, writes and closes the file on
 * libuv's thread pool. Same routes and replies as the uWS peers (upload-table.ts); no fsync.
 *
 *   node --import tsx bench/peers/node-http.ts --host 127.0.0.1 --port 0 --dir <dir>
 */
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { pipeline } from 'node:stream';
import { announceListening, readServerArgs } from './server-args.js';
import { ELD_PATH, ELD_RESET_PATH, startLoopDelayMonitor } from './loop-delay.js';
import { PeerRequestError, UploadTable, chunkReply, failReply, initReply } from './upload-table.js';

const MAX_INIT_BODY = 64 * 1024;

const args = readServerArgs();
const table = new UploadTable(args.dir);
const eld = startLoopDelayMonitor();
const route = `${args.prefix}/upload-chunk`;

const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://peer');
  try {
    if (url.pathname === route && req.method === 'PUT') return receiveChunk(req, res, url);
    if (url.pathname === route && req.method === 'POST') return readInit(req, res);
    if (url.pathname === ELD_PATH && req.method === 'GET') return send(res, 200, JSON.stringify(eld.snapshot()));
    if (url.pathname === ELD_RESET_PATH && req.method === 'POST') {
      eld.reset();
      res.writeHead(204).end();
      return;
    }
    throw new PeerRequestError(404, 'no such route');
  } catch (error) {
    sendError(res, error);
  }
});

function readInit(req: http.IncomingMessage, res: http.ServerResponse): void {
  const pieces: Buffer[] = [];
  let size = 0;
  req.on('data', (piece: Buffer) => {
    size += piece.length;
    if (size <= MAX_INIT_BODY) pieces.push(piece);
  });
  req.on('end', () => {
    try {
      if (size > MAX_INIT_BODY) throw new PeerRequestError(413, 'init body too large');
      let parsed: unknown;
      try {
        parsed = JSON.parse(Buffer.concat(pieces).toString('utf8'));
      } catch {
        throw new PeerRequestError(400, 'body is not valid JSON');
      }
      const upload = table.create(parsed);
      fs.closeSync(fs.openSync(upload.filePath, 'w')); // 'r+' streams below need the file to exist
      send(res, 200, initReply(upload, args.prefix));
    } catch (error) {
      sendError(res, error);
    }
  });
}

function receiveChunk(req: http.IncomingMessage, res: http.ServerResponse, url: URL): void {
  const { upload, chunk, place } = table.locate(url.searchParams.get('guid') ?? '', url.searchParams.get('chunk') ?? '');
  const declared = Number(req.headers['content-length']);
  if (declared !== place.length) {
    throw new PeerRequestError(400, `Content-Length ${req.headers['content-length']} does not match chunk length ${place.length}`);
  }
  const file = fs.createWriteStream(upload.filePath, { flags: 'r+', start: place.offset });
  pipeline(req, file, (error) => {
    if (error) return sendError(res, error);
    if (file.bytesWritten !== place.length) {
      return sendError(res, new PeerRequestError(400, `wrote ${file.bytesWritten} bytes, expected ${place.length}`));
    }
    const complete = table.markReceived(upload, chunk);
    send(res, 200, chunkReply(upload, chunk, complete));
  });
}

function send(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
}

function sendError(res: http.ServerResponse, error: unknown): void {
  if (res.headersSent) return;
  if (error instanceof PeerRequestError) return send(res, error.status, failReply(error.message));
  process.stderr.write(`peer error: ${error instanceof Error ? error.stack : String(error)}\n`);
  send(res, 500, failReply('internal error'));
}

server.listen(args.port, args.host, () => {
  announceListening(args.host, (server.address() as AddressInfo).port);
});
