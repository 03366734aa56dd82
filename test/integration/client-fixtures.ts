/**
 * Fault injection for the client tests: a small proxy on 127.0.0.1 port 0 between the client and a real engine.
 * It forwards HTTP requests and WebSocket upgrades byte for byte, and on demand
 *   - answers 503 (with Retry-After) to the first N chunk PUTs, without passing them on;
 *   - cuts a WebSocket connection (both TCP sockets) after it has carried N bytes from the client: to the client this
 *     is the server dropping the connection mid-upload (close code 1006, like a crashed or killed server);
 *   - refuses WebSocket upgrades after the first N with an HTTP 503, so a reconnect fails;
 *   - serves the engine under a path prefix (`mount`), like a reverse proxy that strips it;
 *   - loses the reply to the first N POSTs (inits): the server gets and answers the request, the client's connection
 *     is reset instead of getting that answer, as when a network drops a reply on its way back.
 * The engine behind it is unchanged: everything that reaches it is real. `setTarget` lets a test restart the engine
 * (on a new port) behind the same client-facing address.
 */
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';

export interface ProxyOptions {
  /** Answer 503 to this many chunk PUTs first. */
  failPuts?: number;
  /** Retry-After sent with those 503s (seconds as a string), or none. */
  retryAfter?: string;
  /** Cut each WebSocket after it carried this many bytes from the client (only the first `dropConnections`). */
  dropWsAfterBytes?: number;
  /** How many WebSocket connections get cut (default: all). */
  dropConnections?: number;
  /** Allow this many WebSocket upgrades; later ones get a 503. Default: all. */
  allowWsConnections?: number;
  /**
   * Serve the engine under this path prefix (e.g. `/updraft`), stripped before passing a request on, as nginx's
   * `location /updraft/ { proxy_pass http://backend/; }` does; a request outside it gets 404.
   */
  mount?: string;
  /** Pass on this many POSTs, read the server's reply to each, and reset the client's connection instead of answering. */
  loseReplies?: number;
}

export interface ProxyStats {
  puts: number;
  injected503: number;
  wsConnections: number;
  wsRefused: number;
  wsDropped: number;
  /** Server replies the proxy read and did not pass on (loseReplies). */
  repliesLost: number;
}

export interface TestProxy {
  base: string;
  stats: ProxyStats;
  /** Points the proxy at another server (e.g. the same one restarted on a new port). */
  setTarget(target: string): void;
  close(): Promise<void>;
}

export async function startProxy(target: string, o: ProxyOptions = {}): Promise<TestProxy> {
  let up = new URL(target);
  const stats: ProxyStats = { puts: 0, injected503: 0, wsConnections: 0, wsRefused: 0, wsDropped: 0, repliesLost: 0 };
  const sockets = new Set<net.Socket>();

  const mount = o.mount ?? '';
  /** The path passed on, or null outside the mount. */
  const unmount = (url: string | undefined): string | null => (url !== undefined && url.startsWith(`${mount}/`) ? url.slice(mount.length) : null);
  const server = http.createServer((req, res) => {
    const path = unmount(req.url);
    if (path === null) {
      res.writeHead(404).end();
      return;
    }
    if (req.method === 'PUT') {
      stats.puts++;
      if (stats.injected503 < (o.failPuts ?? 0)) {
        stats.injected503++;
        req.resume(); // read and drop the body so the keep-alive connection stays usable
        req.on('end', () => {
          const headers: Record<string, string> = { 'content-type': 'application/json' };
          if (o.retryAfter !== undefined) headers['retry-after'] = o.retryAfter;
          res.writeHead(503, headers);
          res.end(JSON.stringify({ status: 'error', message: 'injected by the test proxy', code: 'ERR_SERVER_BUSY', data: { retryable: true } }));
        });
        return;
      }
    }
    const lose = req.method === 'POST' && stats.repliesLost < (o.loseReplies ?? 0);
    if (lose) stats.repliesLost++;
    const fwd = http.request(
      { host: up.hostname, port: up.port, method: req.method, path, headers: req.headers },
      (r) => {
        if (lose) {
          r.resume();
          r.on('end', () => req.socket.destroy());
          return;
        }
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      },
    );
    fwd.on('error', () => res.destroy());
    req.pipe(fwd);
  });

  server.on('upgrade', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => {});
    const path = unmount(req.url);
    if (path === null) {
      client.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    const n = ++stats.wsConnections;
    if (o.allowWsConnections !== undefined && n > o.allowWsConnections) {
      stats.wsRefused++;
      client.end('HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    const upstream = net.connect(Number(up.port), up.hostname);
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    let lines = `${req.method} ${path} HTTP/1.1\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    upstream.write(`${lines}\r\n`);
    if (head.length > 0) upstream.write(head);
    const cut = o.dropWsAfterBytes !== undefined && n <= (o.dropConnections ?? Infinity);
    let carried = 0;
    client.on('data', (d: Buffer) => {
      carried += d.length;
      if (cut && carried > o.dropWsAfterBytes!) {
        stats.wsDropped++;
        client.destroy();
        upstream.destroy();
        return;
      }
      if (!upstream.write(d)) client.pause();
    });
    upstream.on('drain', () => client.resume());
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    base: `http://127.0.0.1:${port}`,
    stats,
    setTarget: (t: string) => {
      up = new URL(t);
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
