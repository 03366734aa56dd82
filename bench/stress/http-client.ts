/**
 * A minimal HTTP/1.1 client over raw sockets, one connection per request, always through the fault proxy.
 *
 * Raw rather than fetch/undici because the harness needs to know exactly which bytes left: where the proxy cuts a
 * body is a byte offset into the request, a slow sender writes the body in timed pieces, and a vanishing client
 * drops the socket after a prefix of the body. The server (uWS) always answers with a Content-Length, so a reply is
 * read until its body is complete and the socket is then closed.
 */
import type net from 'node:net';
import type { FaultPlan, FaultProxy } from './fault-proxy.js';

export interface Reply {
  status: number;
  /** The JSON envelope ({status, message, code?, data?}); null when the body was not JSON. */
  json: Envelope | null;
  text: string;
}

export interface Envelope {
  status: 'success' | 'fail' | 'error';
  message: string;
  code?: string;
  data?: Record<string, any>;
}

export type Outcome =
  | { kind: 'reply'; reply: Reply }
  /** No (complete) reply: refused, reset, cut, timed out. The request may or may not have taken effect. */
  | { kind: 'network'; error: string }
  /** The client dropped the connection on purpose (a vanishing client); no reply was awaited. */
  | { kind: 'vanished' };

export interface RequestOptions {
  /** What the proxy does to this connection. */
  plan?: FaultPlan;
  /** Write the body in pieces of this many bytes with `delayMs` between them (a slow sender). */
  slow?: { pieceBytes: number; delayMs: number };
  /** Drop the connection after writing this many bytes of the request (head included). */
  vanishAfter?: number;
  /** Give up on a reply after this long (the socket is destroyed). */
  timeoutMs: number;
  /** Bearer token. */
  auth?: string;
  /** An init's Idempotency-Key header. */
  idempotencyKey?: string;
}

export function requestHead(method: string, path: string, bodyLength: number, contentType?: string, auth?: string, idempotencyKey?: string): Buffer {
  let head = `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${bodyLength}\r\n`;
  if (contentType) head += `Content-Type: ${contentType}\r\n`;
  if (auth) head += `Authorization: Bearer ${auth}\r\n`;
  if (idempotencyKey) head += `Idempotency-Key: ${idempotencyKey}\r\n`;
  return Buffer.from(`${head}\r\n`, 'latin1');
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function request(
  proxy: FaultProxy,
  method: string,
  path: string,
  body: Buffer | null,
  opts: RequestOptions,
  contentType?: string,
): Promise<Outcome> {
  let socket: net.Socket;
  try {
    socket = await proxy.connect(opts.plan ?? { kind: 'none' });
  } catch (e) {
    return { kind: 'network', error: `connect: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` };
  }
  const head = requestHead(method, path, body?.length ?? 0, contentType, opts.auth, opts.idempotencyKey);
  return new Promise<Outcome>((resolve) => {
    let settled = false;
    let buf: Buffer = Buffer.alloc(0);
    let headEnd = -1;
    let status = 0;
    let contentLength = -1;
    const finish = (o: Outcome): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(o);
    };
    const timer = setTimeout(() => finish({ kind: 'network', error: 'timeout' }), opts.timeoutMs);
    const tryParse = (): void => {
      if (headEnd < 0) {
        headEnd = buf.indexOf('\r\n\r\n');
        if (headEnd < 0) return;
        const lines = buf.subarray(0, headEnd).toString('latin1').split('\r\n');
        status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')?.[1] ?? 0);
        for (const l of lines.slice(1)) {
          const m = /^content-length:\s*(\d+)\s*$/i.exec(l);
          if (m) contentLength = Number(m[1]);
        }
        if (contentLength < 0) {
          finish({ kind: 'network', error: 'reply without content-length' });
          return;
        }
      }
      const bodyStart = headEnd + 4;
      if (buf.length - bodyStart < contentLength) return;
      const text = buf.subarray(bodyStart, bodyStart + contentLength).toString('utf8');
      let json: Envelope | null = null;
      try {
        json = JSON.parse(text) as Envelope;
      } catch {
        json = null;
      }
      finish({ kind: 'reply', reply: { status, json, text } });
    };
    socket.on('data', (d: Buffer) => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      tryParse();
    });
    socket.on('error', (e: NodeJS.ErrnoException) => finish({ kind: 'network', error: e.code ?? e.message }));
    socket.on('close', () => finish({ kind: 'network', error: 'closed before a complete reply' }));

    void (async () => {
      const total = head.length + (body?.length ?? 0);
      const limit = opts.vanishAfter !== undefined ? Math.min(opts.vanishAfter, total) : total;
      const whole = body && body.length > 0 ? Buffer.concat([head, body]) : head;
      const piece = opts.slow ? Math.max(1, opts.slow.pieceBytes) : whole.length;
      let off = 0;
      while (off < limit && !settled && !socket.destroyed) {
        const end = Math.min(limit, off + piece);
        const ok = socket.write(whole.subarray(off, end));
        off = end;
        if (!ok) {
          await new Promise<void>((r) => {
            const done = (): void => {
              socket.off('drain', done);
              socket.off('close', done);
              r();
            };
            socket.once('drain', done);
            socket.once('close', done);
          });
        }
        if (opts.slow && off < limit) await sleep(opts.slow.delayMs);
      }
      if (opts.vanishAfter !== undefined && !settled) finish({ kind: 'vanished' });
    })();
  });
}

/** Total request bytes (head + body) of a request, for choosing where a fault lands. */
export function requestLength(method: string, path: string, bodyLength: number, contentType?: string, auth?: string): number {
  return requestHead(method, path, bodyLength, contentType, auth).length + bodyLength;
}
