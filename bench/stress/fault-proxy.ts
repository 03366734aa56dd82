/**
 * An in-process TCP proxy on 127.0.0.1 that sits between the simulated clients and the server and misbehaves on
 * purpose, per connection: it stalls the request stream, cuts the connection after N request bytes (FIN both
 * ways, so the server sees a body that ends mid-chunk), resets it (RST both ways), or passes the whole request on
 * and resets the connection when the reply begins (the server acted; the client never hears of it).
 *
 * The client decides the fault, not the proxy, so that the decision comes from the client's seeded PRNG stream and
 * a run replays: the client registers a plan under its socket's local port in its `connect` callback, before it
 * writes a byte, and the proxy looks the plan up when the first request bytes arrive (the accepted socket's remote
 * port is the client's local port). A connection without a plan is passed through untouched.
 *
 * When the server is down (crash mode), the upstream connect fails and the client connection is reset, as a real
 * load balancer in front of a dead backend would do.
 */
import net from 'node:net';

export type FaultPlan =
  | { kind: 'none' }
  /** Forward `afterBytes` request bytes, then close both sides (FIN). */
  | { kind: 'cut'; afterBytes: number }
  /** Forward `afterBytes` request bytes, then reset both sides (RST). */
  | { kind: 'reset'; afterBytes: number }
  /** Forward `atBytes` request bytes, hold the rest for `ms`, then go on. */
  | { kind: 'stall'; atBytes: number; ms: number }
  /** Forward the whole request, then reset both sides as the reply begins: a reply lost on its way back. */
  | { kind: 'loseReply' };

export interface ProxyStats {
  connections: number;
  cuts: number;
  resets: number;
  stalls: number;
  upstreamRefused: number;
  repliesLost: number;
}

export class FaultProxy {
  readonly stats: ProxyStats = { connections: 0, cuts: 0, resets: 0, stalls: 0, upstreamRefused: 0, repliesLost: 0 };
  readonly #plans = new Map<number, FaultPlan>();
  readonly #sockets = new Set<net.Socket>();
  readonly #timers = new Set<NodeJS.Timeout>();
  #server: net.Server | null = null;
  #port = 0;

  constructor(
    public upstreamPort: number,
    readonly upstreamHost = '127.0.0.1',
  ) {}

  get port(): number {
    return this.#port;
  }

  async listen(): Promise<number> {
    const server = net.createServer({ noDelay: true }, (c) => this.#accept(c));
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    this.#port = (server.address() as net.AddressInfo).port;
    return this.#port;
  }

  /** Registers the plan for the client socket whose local port is `localPort` (call it in the connect callback). */
  plan(localPort: number, plan: FaultPlan): void {
    if (plan.kind !== 'none') this.#plans.set(localPort, plan);
  }

  /** Opens a client connection to the proxy with `plan`; resolves once it is connected and the plan registered. */
  connect(plan: FaultPlan): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port: this.#port, host: '127.0.0.1', noDelay: true });
      s.once('error', reject);
      s.once('connect', () => {
        s.off('error', reject);
        this.plan(s.localPort!, plan);
        resolve(s);
      });
    });
  }

  /**
   * The same, synchronously (for libraries that want a socket from `createConnection`): the plan is registered in
   * a `connect` listener added before the caller can add its own, so it is in place before the first byte is sent.
   */
  connectSync(plan: FaultPlan): net.Socket {
    const s = net.connect({ port: this.#port, host: '127.0.0.1', noDelay: true });
    s.once('connect', () => this.plan(s.localPort!, plan));
    return s;
  }

  #accept(c: net.Socket): void {
    this.stats.connections++;
    this.#sockets.add(c);
    c.pause();
    const clientPort = c.remotePort ?? -1;
    const u = net.connect({ port: this.upstreamPort, host: this.upstreamHost, noDelay: true });
    this.#sockets.add(u);
    let plan: FaultPlan | null = null;
    let forwarded = 0;
    let over = false;
    let stalled = false;
    const held: Buffer[] = [];

    /** Ends both sides: 'rst' at once; 'fin' after what is queued has been written (then a hard stop). */
    const end = (how: 'fin' | 'rst'): void => {
      if (over) return;
      over = true;
      this.#plans.delete(clientPort);
      for (const s of [c, u]) {
        if (s.destroyed) continue;
        if (how === 'rst') {
          s.resetAndDestroy();
          continue;
        }
        s.end();
        const t = setTimeout(() => s.destroy(), 2000);
        t.unref();
        s.once('close', () => clearTimeout(t));
      }
    };
    c.on('error', () => end('rst'));
    u.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ECONNREFUSED') this.stats.upstreamRefused++;
      end('rst');
    });
    // Either side going away ends the other the same way: a FIN after the bytes already forwarded, so a reply the
    // server wrote just before closing still reaches the client.
    c.on('close', () => {
      this.#sockets.delete(c);
      end('fin');
    });
    u.on('close', () => {
      this.#sockets.delete(u);
      end('fin');
    });
    u.on('data', (d: Buffer) => {
      if (plan?.kind === 'loseReply' && !over) {
        this.stats.repliesLost++;
        end('rst');
        return;
      }
      if (!over && !c.write(d)) {
        u.pause();
        c.once('drain', () => u.resume());
      }
    });
    // A half-close is passed on as a half-close: the other direction keeps flowing (a reply after the request).
    u.on('end', () => {
      if (!over && !c.destroyed) c.end();
    });
    c.on('end', () => {
      if (!over && !u.destroyed) u.end();
    });

    const push = (d: Buffer): void => {
      if (over) return;
      if (!u.write(d)) {
        c.pause();
        u.once('drain', () => {
          if (!stalled) c.resume();
        });
      }
    };

    const onData = (d: Buffer): void => {
      if (over) return;
      if (stalled) {
        held.push(d);
        return;
      }
      plan ??= this.#plans.get(clientPort) ?? { kind: 'none' };
      if (plan.kind === 'none' || plan.kind === 'loseReply') {
        push(d);
        return;
      }
      if (plan.kind === 'cut' || plan.kind === 'reset') {
        const room = plan.afterBytes - forwarded;
        if (d.length < room) {
          forwarded += d.length;
          push(d);
          return;
        }
        if (room > 0) push(d.subarray(0, room));
        forwarded += Math.max(0, room);
        if (plan.kind === 'cut') {
          this.stats.cuts++;
          // The server gets the forwarded bytes, then a FIN: a body that ends mid-chunk. The client's socket is
          // dropped, so it never sees a reply.
          c.destroy();
          end('fin');
        } else {
          this.stats.resets++;
          end('rst');
        }
        return;
      }
      // stall
      const room = plan.atBytes - forwarded;
      if (d.length < room || plan.ms <= 0) {
        forwarded += d.length;
        push(d);
        return;
      }
      if (room > 0) push(d.subarray(0, room));
      forwarded += Math.max(0, room) + (d.length - Math.max(0, room));
      held.push(d.subarray(Math.max(0, room)));
      stalled = true;
      this.stats.stalls++;
      const ms = plan.ms;
      plan = { kind: 'none' };
      c.pause();
      const t = setTimeout(() => {
        this.#timers.delete(t);
        stalled = false;
        for (const h of held.splice(0)) push(h);
        if (!over) c.resume();
      }, ms);
      this.#timers.add(t);
    };

    u.once('connect', () => {
      c.on('data', onData);
      c.resume();
    });
  }

  /** Drops every connection and stops listening. */
  async close(): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
    const server = this.#server;
    this.#server = null;
    if (server) await new Promise<void>((r) => server.close(() => r()));
  }
}
