/**
 * HTTP routes of the upload API (PSWebHost compatible; docs/PROTOCOL.md "HTTP API").
 *
 * uWS rules followed throughout: headers and query are read synchronously before any await, `onAborted` is set
 * before the handler returns, and every reply after an await is corked (respond.ts). A request body is only valid
 * inside `onData`: pieces that arrive while an async step runs (auth hook, waiting for another writer of the same
 * chunk) are copied into a small queue and the request is paused, so at most a piece or two wait.
 */
import type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js';
import type { Logger } from 'pino';
import { UploadError } from '../protocol/errors.js';
import { PS_HEADER_SIZE, PsHeaderReader } from '../protocol/codec.js';
import { checkChunkInRange, namesChunkSize, parseChunkNumber, parseIdempotencyKey, parseInitRequest, validateFileName, validateTargetPath } from '../protocol/validate.js';
import { chunkLength } from '../workers/shared-layout.js';
import { authenticate, bearer, sameSecret } from './auth.js';
import { clientView, parseTrustProxy } from './forwarded.js';
import type { ClientView } from './forwarded.js';
import { corsHeaders, logValue, originRefusal, preflightHeaders, requestId } from './http-policy.js';
import type { Metrics } from './metrics.js';
import type { UserLimits } from './user-limits.js';
import { ChunkReceiver, claimChunk, nextWriterId } from './chunk-ingest.js';
import type { ChunkAck, IngestContext } from './chunk-ingest.js';
import type { AuthRequest, ResolvedOptions, UploadPlacement } from './options.js';
import { sendError, sendJson, sendSuccess } from './respond.js';
import type { ResponseState } from './respond.js';
import type { Upload } from './upload.js';
import { initDigest } from './upload-registry.js';

export interface RouteContext extends IngestContext {
  readonly log: Logger;
  /** Event-loop delay figures for the benchmark endpoint. */
  readonly eventLoopDelay: () => { p99Ms: number; maxMs: number; meanMs: number; resolutionMs: number };
  readonly resetEventLoopDelay: () => void;
  readonly isClosing: () => boolean;
  readonly metrics: Metrics | null;
  readonly userLimits: UserLimits;
}

const NO_PROXY_TRUST = parseTrustProxy([]);

/** Largest JSON control body (init, cancel). */
const MAX_JSON_BODY = 64 * 1024;

export interface RequestInfo extends AuthRequest {
  readonly contentLength: number | null;
  /**
   * Content-Length came more than once. uWS frames the body by the first one while a header map keeps the last, so
   * such a request is refused before its body is used (ERR_BAD_REQUEST, connection closed).
   */
  readonly repeatedContentLength: boolean;
  /** The client as seen through trusted proxies (trustProxy), or the socket peer. */
  readonly client: ClientView;
  readonly requestId: string;
}

/**
 * Reads everything needed from `req` synchronously (it is invalid after the handler returns or awaits). With the
 * options, forwarded headers are interpreted under `trustProxy`; without, the socket peer is the client.
 */
export function readRequest(res: HttpResponse, req: HttpRequest, o?: ResolvedOptions): RequestInfo {
  const headers: Record<string, string> = {};
  let lengths = 0;
  req.forEach((k, v) => {
    if (k === 'content-length') lengths++;
    headers[k] = v;
  });
  const cl = headers['content-length'];
  const peer = Buffer.from(res.getRemoteAddressAsText()).toString();
  const client = clientView(o?.trustProxy ?? NO_PROXY_TRUST, peer, headers);
  return {
    method: req.getMethod().toUpperCase(),
    url: req.getUrl(),
    headers,
    query: new URLSearchParams(req.getQuery() ?? ''),
    remoteAddress: client.ip,
    contentLength: cl !== undefined && /^[0-9]{1,15}$/.test(cl) ? Number(cl) : null,
    repeatedContentLength: lengths > 1,
    client,
    requestId: requestId(headers),
  };
}

/** Absolute URLs as the client addressed us (scheme and host through trusted proxies). */
export function absoluteUrls(info: RequestInfo, path: string): { location: string; webSocketUrl: string } {
  const { proto, host } = info.client;
  return { location: `${proto}://${host}${path}`, webSocketUrl: `${proto === 'https' ? 'wss' : 'ws'}://${host}${path}` };
}

/**
 * A request's reply state: its id and CORS headers on every reply, error codes counted in the metrics. Also used by
 * the WebSocket upgrade (ws-routes.ts), so a refused upgrade is answered and counted like any other reply.
 */
export function responseState(ctx: RouteContext, info?: RequestInfo): ResponseState {
  const st: ResponseState = { aborted: false, done: false };
  if (info) {
    st.headers = { 'X-Request-Id': info.requestId, ...corsHeaders(ctx.options, info.headers) };
    st.requestId = info.requestId;
    if (info.method === 'HEAD') st.head = true;
  }
  const metrics = ctx.metrics;
  if (metrics) st.onError = (code) => metrics.httpErrors.inc({ code });
  return st;
}

/**
 * A request that changes something, sent by a browser page of another origin that is not allowed: refused before its
 * body is read, with its connection closed (the body is not drained). See originAllowed.
 */
function refusedOrigin(o: ResolvedOptions, res: HttpResponse, st: ResponseState, info: RequestInfo, log: Logger): boolean {
  const refusal = originRefusal(o, info.headers);
  if (refusal === null) return false;
  sendError(res, st, refusal, log, true);
  return true;
}

/** How often a request the server holds paused is resumed and paused again, to restart uWS's 10 s request timer. */
const PAUSED_KEEPALIVE_MS = 4000;

function repeatedLength(): UploadError {
  return new UploadError('ERR_BAD_REQUEST', 'Content-Length is given more than once');
}

function methodNotAllowed(allow: string): UploadError {
  return new UploadError('ERR_METHOD_NOT_ALLOWED', undefined, { allow });
}

function chunkReply(a: ChunkAck): { message: string; data: Record<string, unknown> } {
  const base = {
    chunkNumber: a.chunk,
    receivedChunks: a.receivedChunks,
    totalChunks: a.totalChunks,
    receivedBytes: a.receivedBytes,
  };
  if (a.completion) {
    return {
      message: a.duplicate ? 'Chunk already received' : 'Upload completed successfully',
      data: { ...base, complete: true, guid: a.completion.guid, fileName: a.completion.fileName, size: a.completion.size, targetPath: a.completion.targetPath },
    };
  }
  return { message: a.duplicate ? 'Chunk already received' : 'Chunk received', data: { ...base, complete: false } };
}


/**
 * Routes an engine registers outside its prefix (`/healthz`, `/metrics`, the demo's), and the prefixes, per uWS app:
 * uWS aborts the process when a route is registered twice, so a second engine attached to the same app leaves the
 * shared ones to the first (logged) and may not take a prefix already taken (refused with an Error).
 */
const takenRoutes = new WeakMap<TemplatedApp, Set<string>>();

/** Takes `key` on `app` for this engine; false when another engine on the app has it. */
export function takeRoute(app: TemplatedApp, key: string): boolean {
  let taken = takenRoutes.get(app);
  if (taken === undefined) takenRoutes.set(app, (taken = new Set()));
  if (taken.has(key)) return false;
  taken.add(key);
  return true;
}

/**
 * `ownApp`: the engine's own server (listen). Mounted on a host's app (attach), the routes outside the prefix are
 * only GET/HEAD /healthz and GET /metrics (and the demo's, when `demo` is on): the 405s on those paths and the
 * catch-all 404 would take the host's own unmatched requests, and uWS aborts the process on a route registered twice.
 */
export function registerHttpRoutes(app: TemplatedApp, ctx: RouteContext, ownApp = true): void {
  const { options: o, registry, log } = ctx;
  const chunkRoute = `${o.prefix}/upload-chunk`;
  const statusRoute = `${o.prefix}/upload-status`;

  const begin = (res: HttpResponse, info?: RequestInfo): ResponseState => {
    const st = responseState(ctx, info);
    res.onAborted(() => {
      st.aborted = true;
    });
    return st;
  };

  // --- POST upload-chunk: init | cancel ----------------------------------------------------------------------------
  app.post(chunkRoute, (res, req) => {
    const info = readRequest(res, req, o);
    const st = begin(res, info);
    if (refusedOrigin(o, res, st, info, log)) return;
    if (info.repeatedContentLength) {
      sendError(res, st, repeatedLength(), log, true);
      return;
    }
    if (info.contentLength !== null && info.contentLength > MAX_JSON_BODY) {
      sendError(res, st, new UploadError('ERR_BODY_TOO_LARGE'), log, true);
      return;
    }
    const parts: Buffer[] = [];
    let size = 0;
    res.onData((ab, isLast) => {
      if (st.done) return;
      size += ab.byteLength;
      if (size > MAX_JSON_BODY) {
        sendError(res, st, new UploadError('ERR_BODY_TOO_LARGE'), log, true);
        return;
      }
      parts.push(Buffer.from(new Uint8Array(ab).slice()));
      if (!isLast) return;
      void (async () => {
        try {
          const user = await authenticate(o, info);
          let body: unknown;
          try {
            body = JSON.parse(Buffer.concat(parts).toString('utf8'));
          } catch {
            throw new UploadError('ERR_INVALID_JSON');
          }
          if (typeof body !== 'object' || body === null || Array.isArray(body)) {
            throw new UploadError('ERR_INVALID_JSON', 'Request body must be a JSON object');
          }
          const action = (body as { action?: unknown }).action;
          if (action === 'init') await handleInit(res, st, info, user, body);
          else if (action === 'cancel') await handleCancel(res, st, user, (body as { guid?: unknown }).guid);
          else throw new UploadError('ERR_UNKNOWN_ACTION', `Unknown action; expected "init" or "cancel"`);
        } catch (e) {
          sendError(res, st, e, log);
        }
      })();
    });
  });

  async function handleInit(res: HttpResponse, st: ResponseState, info: RequestInfo, user: string, body: object): Promise<void> {
    if (ctx.isClosing()) throw new UploadError('ERR_SHUTTING_DOWN');
    let req = parseInitRequest(body, {
      defaultChunkSize: o.chunkSize,
      minChunkSize: o.minChunkSize,
      maxChunkSize: o.maxChunkSize,
      maxFileSize: o.maxFileSize,
      maxChunks: o.maxChunks,
    });
    const key = parseIdempotencyKey(info.headers['idempotency-key']);
    const idempotency = key === undefined ? undefined : { key, digest: initDigest(req, namesChunkSize(body)) };
    if (idempotency !== undefined) {
      // The same init again (its reply was lost): the upload it made, not a second one. Before the limits, which
      // that upload already passed.
      const earlier = registry.earlierInit(user, idempotency);
      if (earlier !== undefined) {
        const u = await earlier;
        log.info({ event: 'upload.init-repeated', reqId: info.requestId, guid: u.guid }, 'init repeated with its Idempotency-Key: answered with the upload it made');
        await replyInit(res, st, info, u);
        return;
      }
    }
    // Inits still being created count too: they take a place before their first await, so a burst of them cannot
    // all pass the check before any is in the registry.
    let open = registry.creating.total;
    let mine = registry.creating.of(user);
    for (const u of registry.uploads()) {
      if (u.status !== 'active' && u.status !== 'finalizing') continue;
      open++;
      if (u.user === user) mine++;
    }
    if (open >= o.maxUploads) throw new UploadError('ERR_SERVER_BUSY', 'The server has too many open uploads; retry later');
    if (mine >= o.maxUploadsPerUser) throw new UploadError('ERR_RATE_LIMITED', 'Too many open uploads for this user; finish or cancel some first');
    // The place among pending inits is held through the hook and the files (see PendingCreations).
    const place = registry.creating.take(user, req.fileSize);
    const creation = (async (): Promise<Upload> => {
      if (o.onUploadCreate) {
        let placement: void | UploadPlacement;
        try {
          placement = await o.onUploadCreate(
            {
              user,
              fileName: req.fileName,
              fileSize: req.fileSize,
              chunkSize: req.chunkSize,
              totalChunks: req.totalChunks,
              targetPath: req.targetPath.join('/'),
              ...(req.uploadMethod !== undefined ? { uploadMethod: req.uploadMethod } : {}),
              clientIp: info.client.ip,
            },
            info,
          );
        } catch (e) {
          if (e instanceof UploadError) throw e;
          log.warn({ err: e, reqId: info.requestId }, 'onUploadCreate refused an upload');
          throw new UploadError('ERR_UPLOAD_REFUSED');
        }
        if (placement) {
          req = {
            ...req,
            ...(placement.fileName !== undefined ? { fileName: validateFileName(placement.fileName) } : {}),
            ...(placement.targetPath !== undefined ? { targetPath: validateTargetPath(placement.targetPath) } : {}),
          };
        }
      }
      return await registry.create(user, req, info.requestId, place, idempotency);
    })().finally(() => place.release());
    // Registered before the first await: a repeat arriving while this one creates waits for it.
    if (idempotency !== undefined) registry.rememberInit(user, idempotency, creation);
    await replyInit(res, st, info, await creation);
  }

  /** The reply to an init: the upload made (a 0-byte one completes here), or the one an earlier init made. */
  async function replyInit(res: HttpResponse, st: ResponseState, info: RequestInfo, u: Upload): Promise<void> {
    const uploadUrl = `${o.prefix}/upload-chunk?guid=${encodeURIComponent(u.guid)}`;
    const data: Record<string, unknown> = {
      guid: u.guid,
      uploadUrl,
      ...absoluteUrls(info, uploadUrl),
      fileName: u.fileName,
      fileSize: u.fileSize,
      chunkSize: u.chunkSize,
      totalChunks: u.totalChunks,
    };
    if (u.status === 'completed') {
      Object.assign(data, { complete: true, finalName: u.finalName ?? u.fileName, size: u.fileSize });
      sendSuccess(res, st, 'Upload completed successfully', data);
      return;
    }
    if (u.totalChunks === 0) {
      // A 0-byte file has no chunk to wait for: it completes at init.
      const done = await registry.finalize(u);
      Object.assign(data, { complete: true, finalName: done.fileName, size: 0 });
      sendSuccess(res, st, 'Upload completed successfully', data);
      return;
    }
    sendSuccess(res, st, 'Upload initialized', data);
  }

  async function handleCancel(res: HttpResponse, st: ResponseState, user: string, guid: unknown): Promise<void> {
    if (guid !== undefined && guid !== null && typeof guid !== 'string') {
      throw new UploadError('ERR_INVALID_FIELD', 'guid must be a string');
    }
    const u = registry.find(guid ?? undefined, user);
    await registry.cancel(u);
    sendSuccess(res, st, 'Upload cancelled', { guid: u.guid });
  }

  // --- DELETE upload-chunk?guid= -------------------------------------------------------------------------------------
  app.del(chunkRoute, (res, req) => {
    const info = readRequest(res, req, o);
    const st = begin(res, info);
    if (refusedOrigin(o, res, st, info, log)) return;
    void (async () => {
      try {
        const user = await authenticate(o, info);
        await handleCancel(res, st, user, info.query.get('guid') ?? undefined);
      } catch (e) {
        sendError(res, st, e, log);
      }
    })();
  });

  // --- GET upload-status?guid= and GET upload-chunk?guid= (no Upgrade) ------------------------------------------------
  const status = (res: HttpResponse, req: HttpRequest): void => {
    const info = readRequest(res, req, o);
    const st = begin(res, info);
    void (async () => {
      try {
        const user = await authenticate(o, info);
        const u = registry.find(info.query.get('guid'), user, true);
        sendSuccess(res, st, 'Upload status', u.statusData());
      } catch (e) {
        sendError(res, st, e, log);
      }
    })();
  };
  app.get(statusRoute, status);
  app.get(chunkRoute, status);
  app.head(statusRoute, status); // the same headers, no body (respond.ts)
  app.head(chunkRoute, status);

  // --- PUT upload-chunk?guid=G[&chunk=N] ------------------------------------------------------------------------------
  app.put(chunkRoute, (res, req) => putChunk(ctx, res, readRequest(res, req, o)));

  // --- everything else ------------------------------------------------------------------------------------------------
  const notAllowed = (allow: string) => (res: HttpResponse, req: HttpRequest) => {
    const info = readRequest(res, req, o);
    const st = begin(res, info);
    sendError(res, st, methodNotAllowed(allow), log);
  };
  // CORS preflight for the API routes: answered for allowed origins, refused (403) for others. An OPTIONS without
  // Origin is no preflight (no browser sent it; such requests are never refused): it is told the route's methods.
  // uWS prefers an exact path over a wildcard whatever the method, so the API routes get their own OPTIONS handlers;
  // other paths under the prefix answer 404 like any other method there.
  const preflight = (allow: string) => (res: HttpResponse, req: HttpRequest): void => {
    const info = readRequest(res, req, o);
    const st = begin(res, info);
    const origin = info.headers['origin'];
    const headers = origin === undefined || origin === '' ? { Allow: allow } : preflightHeaders(o, info.headers);
    if (!headers) {
      sendError(res, st, new UploadError('ERR_FORBIDDEN_ORIGIN'), log);
      return;
    }
    st.done = true;
    res.cork(() => {
      res.writeStatus('204 No Content');
      for (const [k, v] of Object.entries({ ...headers, 'X-Request-Id': info.requestId })) res.writeHeader(k, v);
      res.endWithoutBody();
    });
  };
  app.options(chunkRoute, preflight('GET, HEAD, POST, PUT, DELETE, OPTIONS'));
  app.options(statusRoute, preflight('GET, HEAD, OPTIONS'));
  const shared = (key: string): boolean => {
    if (takeRoute(app, key)) return true;
    log.warn({ route: key }, `${key} on this app is served by another engine attached to it; this engine's is not registered`);
    return false;
  };
  if (o.metrics && ctx.metrics && shared('/metrics')) {
    const metrics = ctx.metrics;
    app.get('/metrics', (res, req) => {
      const info = readRequest(res, req, o);
      const st = begin(res, info);
      // The scheme is case-insensitive (RFC 9110), as on the API routes; the token is compared in constant time.
      if (o.metricsToken !== undefined && !sameSecret(o.metricsToken, bearer(info.headers['authorization']))) {
        sendError(res, st, new UploadError('ERR_UNAUTHORIZED'), log);
        return;
      }
      metrics.text().then(
        (text) => {
          if (st.aborted) return;
          st.done = true;
          res.cork(() => {
            res.writeStatus('200 OK');
            for (const [k, v] of Object.entries(st.headers ?? {})) res.writeHeader(k, v);
            res.writeHeader('Content-Type', metrics.contentType);
            res.end(text);
          });
        },
        (e: unknown) => sendError(res, st, e, log),
      );
    });
    if (ownApp) app.any('/metrics', notAllowed('GET'));
  }
  app.any(chunkRoute, notAllowed('GET, HEAD, POST, PUT, DELETE'));
  app.any(statusRoute, notAllowed('GET, HEAD'));
  const health = (res: HttpResponse, req: HttpRequest): void => {
    const st = begin(res, readRequest(res, req, o));
    const data = { uploads: registry.size, inFlightBytes: ctx.slabs.inUseBytes };
    if (ctx.isClosing()) sendError(res, st, new UploadError('ERR_SHUTTING_DOWN', undefined, data), log);
    else sendJson(res, st, 200, { status: 'success', message: 'ok', data });
  };
  if (shared('/healthz')) {
    app.get('/healthz', health);
    app.head('/healthz', health);
    if (ownApp) app.any('/healthz', notAllowed('GET, HEAD'));
  }
  if (o.benchEndpoints && shared('/__bench')) {
    app.get('/__bench/eld', (res) => {
      const st = begin(res);
      sendJson(res, st, 200, { status: 'success', message: 'event loop delay', data: ctx.eventLoopDelay() });
    });
    app.post('/__bench/eld/reset', (res) => {
      const st = begin(res);
      ctx.resetEventLoopDelay();
      sendJson(res, st, 200, { status: 'success', message: 'reset' });
    });
  }
  const notFound = (res: HttpResponse, req: HttpRequest): void => {
    const info = readRequest(res, req, o);
    const st = begin(res, info);
    sendError(res, st, new UploadError('ERR_NOT_FOUND'), log);
  };
  if (ownApp) {
    app.any('/*', notFound);
  } else if (o.prefix !== '') {
    // On a host's app the prefix is still the engine's: an unknown route under it is answered like on its own server.
    app.any(o.prefix, notFound);
    app.any(`${o.prefix}/*`, notFound);
  }
}

/**
 * One chunk as a PUT body: raw (`?chunk=N`) or in the PSWebHost form (10-byte header carrying the chunk number).
 * The body is streamed into the chunk receiver piece by piece; nothing holds the whole chunk in memory.
 */
function putChunk(ctx: RouteContext, res: HttpResponse, info: RequestInfo): void {
  const { options: o, log } = ctx;
  const st = responseState(ctx, info);
  const refusal = originRefusal(o, info.headers);
  if (refusal !== null) {
    res.onAborted(() => {});
    sendError(res, st, refusal, log, true);
    return;
  }
  if (info.repeatedContentLength) {
    res.onAborted(() => {});
    sendError(res, st, repeatedLength(), log, true);
    return;
  }
  const abort = new AbortController();
  let user = '';
  let reserved = 0; // chunk bytes counted against the user's in-flight limit
  const unreserve = (): void => {
    if (reserved > 0) ctx.userLimits.release(user, reserved);
    reserved = 0;
  };
  type Phase = 'setup' | 'header' | 'body' | 'drain' | 'finishing' | 'over';
  let phase: Phase = 'setup';
  let busy = true; // an async step runs: pieces are queued (copied), the request is paused
  let budgetPaused = false;
  const queue: Array<{ bytes: Uint8Array; isLast: boolean }> = [];
  let receiver: ChunkReceiver | null = null;
  let upload: Upload | null = null;
  let psReader: PsHeaderReader | null = null;
  let dupAck: ChunkAck | null = null;
  let drained = 0;
  let expected = 0;
  let deferredError: unknown = null; // an error answered once the body has been read (keeps the connection usable)

  res.onAborted(() => {
    st.aborted = true;
    phase = 'over';
    abort.abort();
    receiver?.abort();
    unreserve();
  });

  const fail = (e: unknown): void => {
    if (phase === 'over') return;
    receiver?.abort();
    receiver = null;
    unreserve();
    // Once the body is read, the connection stays usable; otherwise close it rather than read an unwanted body.
    const bodyRead = queue.some((q) => q.isLast) || phase === 'finishing';
    phase = 'over';
    sendError(res, st, e, log, !bodyRead);
  };

  /** Answer `e` after reading (and discarding) the rest of a body of sane size, or at once and close. */
  const failAfterBody = (e: unknown): void => {
    const bodyFits = info.contentLength !== null && info.contentLength <= o.maxChunkSize + PS_HEADER_SIZE;
    if (!bodyFits) return fail(e);
    receiver?.abort();
    receiver = null;
    unreserve();
    deferredError = e;
    phase = 'drain';
    for (const q of queue.splice(0)) handle(q.bytes, q.isLast, true);
  };

  // uWS's own request timer (10 s, its slow-loris guard) keeps running while a request is paused, and closed a request
  // the server held longer (the second writer of a chunk waiting for the first, a body waiting for memory or for a
  // reading place) without a reply. A resume restarts that timer, and a resume and pause in the same turn read
  // nothing: so a request held paused is nudged that way every PAUSED_KEEPALIVE_MS until it is resumed or answered.
  let keepAlive: ReturnType<typeof setInterval> | null = null;
  const stopKeepAlive = (): void => {
    if (keepAlive !== null) clearInterval(keepAlive);
    keepAlive = null;
  };
  const pause = (): void => {
    if (st.aborted || st.done || st.paused) return;
    st.paused = true;
    res.pause();
    keepAlive ??= setInterval(() => {
      if (st.aborted || st.done || !st.paused) return stopKeepAlive();
      res.resume();
      res.pause();
    }, PAUSED_KEEPALIVE_MS);
    keepAlive.unref?.();
  };
  const resume = (): void => {
    if (busy || budgetPaused || st.aborted || st.done || !st.paused) return;
    stopKeepAlive();
    st.paused = false;
    // After a yield for silence, the silence before it still counts (see below); after any other pause, none does.
    lastLife = performance.now() - (silentFor ?? 0);
    silentFor = null;
    res.resume();
  };

  // The body idle watchdog (bodyIdleTimeout) counts time spent reading without a byte, never time the request is
  // paused: then the client's bytes wait unread in the kernel. But a body that lost its reading place for sending
  // nothing keeps the silence it had (`silentFor`, carried over the wait until its next byte): a silent body would
  // otherwise start from zero at every turn and live forever, taking a place again and again while others wait.
  let lastLife = performance.now();
  let silentFor: number | null = null;
  const watchIdle = (): void => {
    const idle = performance.now() - lastLife;
    if (phase === 'over' || st.aborted || st.done) return;
    if (st.paused || idle < o.bodyIdleTimeout) {
      setTimeout(watchIdle, st.paused ? o.bodyIdleTimeout : o.bodyIdleTimeout - idle).unref?.();
      return;
    }
    fail(new UploadError('ERR_CHUNK_INCOMPLETE', `No body bytes for ${Math.round(idle / 1000)} s`));
  };
  setTimeout(watchIdle, o.bodyIdleTimeout).unref?.();

  /** Runs an async step with the request paused; queued pieces are handled afterwards, in order. */
  const step = (fn: () => Promise<void>): void => {
    busy = true;
    pause();
    fn().then(
      () => {
        busy = false;
        while (!busy && queue.length > 0 && phase !== 'over') {
          const q = queue.shift()!;
          handle(q.bytes, q.isLast, true);
        }
        resume();
      },
      (e: unknown) => {
        busy = false;
        if (phase === 'setup' || phase === 'header') {
          failAfterBody(e); // known before the body was used: answer after reading a sane-sized body
          resume();
        } else {
          fail(e);
        }
      },
    );
  };

  const startChunk = async (chunk: number): Promise<void> => {
    const u = upload!;
    checkChunkInRange(chunk, u.totalChunks);
    expected = chunkLength(u.fileSize, u.chunkSize, chunk);
    const bodyLen = info.contentLength === null ? null : info.contentLength - (psReader ? PS_HEADER_SIZE : 0);
    if (bodyLen !== null && bodyLen > expected) {
      throw new UploadError('ERR_CHUNK_TOO_LARGE', `Chunk ${chunk} is ${expected} bytes; the body is ${bodyLen}`);
    }
    if (bodyLen !== null && bodyLen < expected) {
      throw new UploadError('ERR_CHUNK_TOO_SMALL', `Chunk ${chunk} is ${expected} bytes; the body is ${bodyLen}`);
    }
    const writerId = nextWriterId();
    const dup = await claimChunk(ctx, u, chunk, writerId, abort.signal);
    if (st.aborted) {
      if (!dup) u.releaseClaim(chunk, writerId);
      return;
    }
    if (dup) {
      dupAck = dup;
      phase = 'drain';
      return;
    }
    try {
      ctx.userLimits.reserve(user, expected);
      reserved = expected;
    } catch (e) {
      u.releaseClaim(chunk, writerId);
      throw e;
    }
    receiver = new ChunkReceiver(
      ctx,
      u,
      chunk,
      writerId,
      (silent) => {
        budgetPaused = true;
        if (silent) {
          silentFor = performance.now() - lastLife;
          // Its silence may reach the limit only at a yield (it is read for a moment between waits): answer then,
          // once the receiver has finished pausing.
          if (silentFor >= o.bodyIdleTimeout) {
            const idle = silentFor;
            queueMicrotask(() => fail(new UploadError('ERR_CHUNK_INCOMPLETE', `No body bytes for ${Math.round(idle / 1000)} s`)));
          }
        }
        pause();
      },
      () => {
        budgetPaused = false;
        resume();
      },
    );
    phase = 'body';
  };

  const finish = (): void => {
    const r = receiver!;
    phase = 'finishing';
    // Counted once the body is read to its end, whatever becomes of it (as a WebSocket chunk is when it arrives).
    ctx.metrics?.bytesReceived.inc(r.received);
    step(async () => {
      const a = await r.finish().finally(unreserve);
      receiver = null;
      phase = 'over';
      const { message, data } = chunkReply(a);
      sendSuccess(res, st, message, data);
    });
  };

  /** One piece of the body. `owned`: a copy made for the queue, which the receiver may keep instead of copying. */
  function handle(bytes: Uint8Array, isLast: boolean, owned = false): void {
    switch (phase) {
      case 'header': {
        const got = psReader!.push(bytes);
        if (!got) {
          if (isLast) fail(new UploadError('ERR_CHUNK_HEADER_INVALID', `Body is shorter than the ${PS_HEADER_SIZE}-byte chunk header`));
          return;
        }
        queue.unshift({ bytes: got.rest.slice(), isLast });
        step(() => startChunk(got.header.chunkNumber));
        return;
      }
      case 'body':
        try {
          receiver!.push(bytes, owned);
        } catch (e) {
          failAfterBody(e);
          return;
        }
        if (isLast) finish();
        return;
      case 'drain':
        drained += bytes.length;
        // A body without Content-Length (chunked) is read to its end only while it fits the chunk; past that it is
        // refused at once (a duplicate must not let a client stream bytes for as long as it likes).
        if (drained > expected && deferredError === null) {
          fail(new UploadError('ERR_CHUNK_TOO_LARGE', `Chunk is ${expected} bytes; the body is longer`));
          return;
        }
        if (!isLast) return;
        if (deferredError !== null) {
          phase = 'over';
          sendError(res, st, deferredError, log);
        } else if (drained !== expected) {
          fail(new UploadError(drained > expected ? 'ERR_CHUNK_TOO_LARGE' : 'ERR_CHUNK_TOO_SMALL', `Chunk is ${expected} bytes; the body is ${drained}`));
        } else {
          phase = 'over';
          const { message, data } = chunkReply(dupAck!);
          sendSuccess(res, st, message, data);
        }
        return;
      default:
        return;
    }
  }

  res.onData((ab, isLast) => {
    if (phase === 'over') return;
    lastLife = performance.now();
    silentFor = null;
    const piece = new Uint8Array(ab);
    if (busy) {
      queue.push({ bytes: piece.slice(), isLast }); // copy: `ab` is only valid during this callback
      return;
    }
    handle(piece, isLast);
  });

  // Setup: who, which upload, which chunk. Synchronous with token auth; the hook may make it async.
  step(async () => {
    user = await authenticate(o, info);
    if (ctx.isClosing()) throw new UploadError('ERR_SHUTTING_DOWN');
    upload = ctx.registry.find(info.query.get('guid'), user);
    const raw = info.query.get('chunk');
    if (raw !== null) {
      await startChunk(parseChunkNumber(raw));
    } else {
      psReader = new PsHeaderReader();
      phase = 'header';
    }
  });
}
