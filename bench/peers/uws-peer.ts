/**
 * The uWS skeleton shared by the discard, sync-main and sync-main-durable peers: routes, validation and replies are the
 * same, and only the `ChunkSink` (what happens to each onData piece) differs. Keeping the rest identical is what makes
 * the figures comparable: discard is the HTTP ingest ceiling, sync-main adds exactly one `fs.writeSync` per piece.
 */
import uWS from 'uWebSockets.js';
import type { HttpRequest, HttpResponse, us_listen_socket } from 'uWebSockets.js';
import { announceListening, type ServerArgs } from './server-args.js';
import { ELD_PATH, ELD_RESET_PATH, startLoopDelayMonitor } from './loop-delay.js';
import {
  PeerRequestError, UploadTable, chunkReply, failReply, initReply, type ChunkPlace, type PeerUpload,
} from './upload-table.js';

/** Init bodies are a few dozen bytes; anything past this is refused instead of buffered. */
const MAX_INIT_BODY = 64 * 1024;

export interface ChunkSink {
  /** Called with every onData piece of a chunk body. `piece` is valid only during the call (uWS frees it after). */
  write(piece: ArrayBuffer, position: number): void;
}

export interface UwsPeerBehaviour {
  /** Called once per upload at init, before the reply (create the file here). */
  onInit(upload: PeerUpload): void;
  /** Returns the sink for one chunk body. */
  openChunk(upload: PeerUpload, place: ChunkPlace): ChunkSink;
  /** Called when the last missing chunk has arrived whole, before that chunk's reply. */
  onComplete(upload: PeerUpload): void;
}

export function startUwsPeer(args: ServerArgs, behaviour: UwsPeerBehaviour): void {
  if (typeof uWS.SSLApp !== 'function') throw new Error('uWebSockets.js native binary not loaded (JS fallback active)');
  const table = new UploadTable(args.dir);
  const eld = startLoopDelayMonitor();
  const route = `${args.prefix}/upload-chunk`;
  const app = uWS.App();

  app.post(route, (res) => readInit(res, table, behaviour, args.prefix));
  app.put(route, (res, req) => receiveChunk(res, req, table, behaviour));
  app.get(ELD_PATH, (res) => {
    res.writeStatus('200 OK').writeHeader('content-type', 'application/json').end(JSON.stringify(eld.snapshot()));
  });
  app.post(ELD_RESET_PATH, (res) => {
    eld.reset();
    res.writeStatus('204 No Content').end();
  });
  app.any('/*', (res) => {
    res.writeStatus('404 Not Found').writeHeader('content-type', 'application/json').end(failReply('no such route'));
  });

  app.listen(args.host, args.port, (socket: us_listen_socket | false) => {
    if (socket === false) {
      process.stderr.write(`cannot listen on ${args.host}:${args.port}\n`);
      process.exit(1);
    }
    // A listen socket is a us_socket underneath; the 20.30 typings keep the two types apart.
    announceListening(args.host, uWS.us_socket_local_port(socket as unknown as uWS.us_socket));
  });
}

function readInit(res: HttpResponse, table: UploadTable, behaviour: UwsPeerBehaviour, prefix: string): void {
  let aborted = false;
  res.onAborted(() => {
    aborted = true;
  });
  const pieces: Buffer[] = [];
  let size = 0;
  res.onData((piece, isLast) => {
    if (aborted) return;
    size += piece.byteLength;
    if (size <= MAX_INIT_BODY) pieces.push(Buffer.from(piece.slice(0))); // copy: the piece dies with the callback
    if (!isLast) return;
    let status = '200 OK';
    let body: string;
    try {
      if (size > MAX_INIT_BODY) throw new PeerRequestError(413, 'init body too large');
      let parsed: unknown;
      try {
        parsed = JSON.parse(Buffer.concat(pieces).toString('utf8'));
      } catch {
        throw new PeerRequestError(400, 'body is not valid JSON');
      }
      const upload = table.create(parsed);
      behaviour.onInit(upload);
      body = initReply(upload, prefix);
    } catch (error) {
      ({ status, body } = errorReply(error));
    }
    res.cork(() => res.writeStatus(status).writeHeader('content-type', 'application/json').end(body));
  });
}

function receiveChunk(res: HttpResponse, req: HttpRequest, table: UploadTable, behaviour: UwsPeerBehaviour): void {
  // Query and headers are readable only now, before the handler returns.
  const guid = req.getQuery('guid') ?? '';
  const chunkParam = req.getQuery('chunk') ?? '';
  let located: ReturnType<UploadTable['locate']>;
  let sink: ChunkSink;
  try {
    located = table.locate(guid, chunkParam);
    sink = behaviour.openChunk(located.upload, located.place);
  } catch (error) {
    const { status, body } = errorReply(error);
    // Answering before the body is read: uWS then closes the connection after the reply, which is fine for a refusal.
    res.writeStatus(status).writeHeader('content-type', 'application/json').end(body, true);
    return;
  }
  const { upload, chunk, place } = located;
  let aborted = false;
  let received = 0;
  res.onAborted(() => {
    aborted = true;
  });
  res.onData((piece, isLast) => {
    if (aborted) return;
    const length = piece.byteLength;
    if (received + length <= place.length) sink.write(piece, place.offset + received);
    received += length;
    if (!isLast) return;
    let status = '200 OK';
    let body: string;
    if (received > place.length) {
      ({ status, body } = errorReply(new PeerRequestError(413, `chunk body is ${received} bytes, expected ${place.length}`)));
    } else if (received < place.length) {
      ({ status, body } = errorReply(new PeerRequestError(400, `chunk body is ${received} bytes, expected ${place.length}`)));
    } else {
      const complete = table.markReceived(upload, chunk);
      try {
        if (complete) behaviour.onComplete(upload);
        body = chunkReply(upload, chunk, complete);
      } catch (error) {
        ({ status, body } = errorReply(error));
      }
    }
    res.cork(() => res.writeStatus(status).writeHeader('content-type', 'application/json').end(body));
  });
}

const STATUS_TEXT: Readonly<Record<number, string>> = {
  400: 'Bad Request', 404: 'Not Found', 413: 'Payload Too Large', 500: 'Internal Server Error',
};

function errorReply(error: unknown): { status: string; body: string } {
  if (error instanceof PeerRequestError) {
    return { status: `${error.status} ${STATUS_TEXT[error.status] ?? 'Error'}`, body: failReply(error.message) };
  }
  process.stderr.write(`peer error: ${error instanceof Error ? error.stack : String(error)}\n`);
  return { status: '500 Internal Server Error', body: failReply('internal error') };
}
