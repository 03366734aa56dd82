/**
 * `updraft serve`: flags (and matching UPDRAFT_* environment variables) -> createUploadEngine().listen().
 * No engine logic lives here.
 */
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { OptionsError, createUploadEngine } from '../index.js';
import type { UploadEngineOptions } from '../index.js';
import { UsageError, parseDuration, parseInteger, parseSize, parseTokenSpec } from './args.js';
import { uploadMain } from './upload.js';

const SERVE_HELP = `Usage: updraft serve [options]

Starts the upload server. Every flag has an environment variable; the flag wins.

  --host HOST             address to bind (UPDRAFT_HOST, default 127.0.0.1)
  --port N                port; 0 = any free port (UPDRAFT_PORT, default 8080)
  --dir PATH              upload root, one engine each (UPDRAFT_DIR, default ./uploads)
  --prefix PATH           route prefix (UPDRAFT_PREFIX, default /api/v1/files)
  --chunk-size SIZE       chunk size when a client sends none (UPDRAFT_CHUNK_SIZE, default 8MiB)
  --max-chunk-size SIZE   largest chunk accepted (UPDRAFT_MAX_CHUNK_SIZE, default 64MiB)
  --max-file-size SIZE    largest file accepted (UPDRAFT_MAX_FILE_SIZE, default 1TiB)
  --workers N             writer threads (UPDRAFT_WORKERS, default: 2 x CPUs, 4 to 16)
  --durability MODE       chunk | upload (UPDRAFT_DURABILITY, default chunk)
  --on-conflict POLICY    rename | overwrite | reject (UPDRAFT_ON_CONFLICT, default rename)
  --lock-mode MODE        chunk | upload (UPDRAFT_LOCK_MODE, default chunk)
  --token USER:TOKEN      accept "Authorization: Bearer TOKEN" as USER; repeatable
                          (UPDRAFT_TOKENS, comma-separated). Without any, everyone is "anonymous".
  --upload-ttl DURATION   expire uploads idle this long (UPDRAFT_UPLOAD_TTL, default 24h)
  --allowed-origin ORIGIN browser origin (https://app.example.com, or *) allowed to upload (WebSocket, POST, PUT,
                          DELETE) besides the server's own; repeatable (UPDRAFT_ALLOWED_ORIGINS, comma-separated)
  --trust-proxy ADDR      reverse proxy (IP address or CIDR, e.g. 127.0.0.1 or 10.0.0.0/8) whose X-Forwarded-*
                          and Forwarded headers are believed; repeatable (UPDRAFT_TRUST_PROXY, comma-separated).
                          Without any, forwarded headers are ignored.
  --instance-id ID        prefix of every guid (ID.<uuid>) for routing several instances behind one proxy;
                          up to 32 letters, digits or dashes (UPDRAFT_INSTANCE_ID)
  --log-level LEVEL       fatal|error|warn|info|debug|trace|silent (UPDRAFT_LOG_LEVEL, default info)
  --no-demo               do not serve the demo page at / and the browser client at /updraft-client.js
                          (UPDRAFT_DEMO=0, false, no or off; 1, true, yes or on: the demo)
  --no-prefault           take the in-flight budget (128 MiB) as uploads need it instead of making it resident at
                          start (UPDRAFT_PREFAULT=0, false, no or off; 1, true, yes or on: prefault)
  -h, --help              this text

Sizes take B, K/KiB, M/MiB, G/GiB, T/TiB (or KB/MB/GB/TB for powers of 1000); durations ms, s, m, h, d
(a bare number is milliseconds).
Prints "listening on http://HOST:PORT" when ready; logs are JSON lines on stderr.
SIGINT/SIGTERM: stop accepting, finish writes in flight, persist state, exit 0 (during the start: once it is over).

Exit status: 0 after a stop; 1 when it cannot start (the port in use, never shared; an address this host lacks; an
upload root in use, not a folder, not writable or inside another engine's staging folder), on a second signal, or
when a stop takes over 15 s; 2 for a bad option.
`;

const HELP = `Usage: updraft <command> [options]

Commands:
  serve      start the upload server (updraft serve --help)
  upload     upload files to a server (updraft upload --help)
`;

/** Where serveOptions() found each option it set: `--flag` or `UPDRAFT_NAME`, by option name. */
const sourcesOf = new WeakMap<UploadEngineOptions, Map<string, string>>();

/** An engine's OptionsError told under the flag or variable the value came from, e.g. `UPDRAFT_DURABILITY: ...`. */
export function optionErrorMessage(options: UploadEngineOptions, e: Error): string {
  const source = e instanceof OptionsError ? sourcesOf.get(options)?.get(e.field) : undefined;
  return source === undefined ? e.message : `${source}: ${(e as OptionsError).problem}`;
}

export function serveOptions(argv: string[], env: NodeJS.ProcessEnv): UploadEngineOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      dir: { type: 'string' },
      prefix: { type: 'string' },
      'chunk-size': { type: 'string' },
      'max-chunk-size': { type: 'string' },
      'max-file-size': { type: 'string' },
      workers: { type: 'string' },
      durability: { type: 'string' },
      'on-conflict': { type: 'string' },
      'lock-mode': { type: 'string' },
      token: { type: 'string', multiple: true },
      'allowed-origin': { type: 'string', multiple: true },
      'trust-proxy': { type: 'string', multiple: true },
      'instance-id': { type: 'string' },
      'upload-ttl': { type: 'string' },
      'log-level': { type: 'string' },
      'no-demo': { type: 'boolean' },
      'no-prefault': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return 'help';
  const o: UploadEngineOptions = {};
  // Where each option came from, so that an invalid value is reported under the name the operator wrote.
  const sources = new Map<string, string>();
  sourcesOf.set(o, sources);
  const pick = (key: string, flag: keyof typeof values, envName: string): string | undefined => {
    const v = values[flag];
    if (typeof v === 'string') {
      sources.set(key, `--${String(flag)}`);
      return v;
    }
    const e = env[envName];
    if (e === undefined || e === '') return undefined;
    sources.set(key, envName);
    return e;
  };
  const str = <K extends keyof UploadEngineOptions>(key: K, flag: keyof typeof values, envName: string): void => {
    const v = pick(key, flag, envName);
    if (v !== undefined) (o as Record<string, unknown>)[key] = v;
  };
  const num = <K extends keyof UploadEngineOptions>(key: K, flag: keyof typeof values, envName: string, parse: (f: string, v: string) => number): void => {
    const v = pick(key, flag, envName);
    if (v !== undefined) (o as Record<string, unknown>)[key] = parse(sources.get(key)!, v);
  };
  str('host', 'host', 'UPDRAFT_HOST');
  num('port', 'port', 'UPDRAFT_PORT', parseInteger);
  str('dir', 'dir', 'UPDRAFT_DIR');
  str('prefix', 'prefix', 'UPDRAFT_PREFIX');
  num('chunkSize', 'chunk-size', 'UPDRAFT_CHUNK_SIZE', parseSize);
  num('maxChunkSize', 'max-chunk-size', 'UPDRAFT_MAX_CHUNK_SIZE', parseSize);
  num('maxFileSize', 'max-file-size', 'UPDRAFT_MAX_FILE_SIZE', parseSize);
  num('workers', 'workers', 'UPDRAFT_WORKERS', parseInteger);
  str('durability', 'durability', 'UPDRAFT_DURABILITY');
  str('onConflict', 'on-conflict', 'UPDRAFT_ON_CONFLICT');
  str('lockMode', 'lock-mode', 'UPDRAFT_LOCK_MODE');
  num('uploadTtl', 'upload-ttl', 'UPDRAFT_UPLOAD_TTL', parseDuration);
  str('logLevel', 'log-level', 'UPDRAFT_LOG_LEVEL');
  str('instanceId', 'instance-id', 'UPDRAFT_INSTANCE_ID');
  // A repeatable flag, or else its variable as a comma-separated list.
  const list = (key: string, flag: 'token' | 'allowed-origin' | 'trust-proxy', envName: string): string[] => {
    const given = values[flag];
    const items = given ?? (env[envName] ?? '').split(',').map((v) => v.trim()).filter(Boolean);
    if (items.length > 0) sources.set(key, given ? `--${flag}` : envName);
    return items;
  };
  const specs = list('tokens', 'token', 'UPDRAFT_TOKENS');
  if (specs.length > 0) {
    const label = sources.get('tokens')!;
    const tokens: Record<string, string> = {};
    for (const [token, user] of specs.map((spec) => parseTokenSpec(label, spec))) {
      // A repeated token would quietly belong to the last user named with it.
      if (Object.hasOwn(tokens, token)) throw new UsageError(`${label}: the same token is given for "${tokens[token]}" and "${user}"`);
      tokens[token] = user;
    }
    o.tokens = tokens;
  }
  const origins = list('allowedOrigins', 'allowed-origin', 'UPDRAFT_ALLOWED_ORIGINS');
  if (origins.length > 0) o.allowedOrigins = origins;
  const proxies = list('trustProxy', 'trust-proxy', 'UPDRAFT_TRUST_PROXY');
  if (proxies.length > 0) o.trustProxy = proxies;
  if (env.UPDRAFT_BENCH === '1') o.benchEndpoints = true;
  // The CLI server shows the demo page unless told not to (an embedding app gets demo: false by default).
  o.demo = values['no-demo'] !== true && switchedOn(env, 'UPDRAFT_DEMO', 'the demo');
  if (values['no-prefault'] === true || !switchedOn(env, 'UPDRAFT_PREFAULT', 'prefault')) o.prefault = false;
  return o;
}

/** An on/off variable, on when unset or empty; anything but the words below is refused rather than read as on. */
function switchedOn(env: NodeJS.ProcessEnv, name: string, what: string): boolean {
  const v = (env[name] ?? '').trim().toLowerCase();
  if (['0', 'false', 'no', 'off'].includes(v)) return false;
  if (['', '1', 'true', 'yes', 'on'].includes(v)) return true;
  throw new UsageError(`${name}: expected 1, true, yes or on (${what}) or 0, false, no or off (none), got "${env[name]}"`);
}

/** `earlySignals`: stop signals that came before the CLI could handle them (bin/updraft.js keeps them while it loads). */
export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env, earlySignals: readonly string[] = []): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '-h' || cmd === '--help' || cmd === 'help') {
    // Asked for, the help goes to stdout; without a command it is a usage error, on stderr.
    (cmd === undefined ? process.stderr : process.stdout).write(HELP);
    return cmd === undefined ? 2 : 0;
  }
  if (cmd === 'upload') return uploadMain(rest, env);
  if (cmd !== 'serve') {
    process.stderr.write(`updraft: unknown command "${cmd}"\n${HELP}`);
    return 2;
  }
  let options: UploadEngineOptions | 'help';
  try {
    options = serveOptions(rest, env);
  } catch (e) {
    process.stderr.write(`updraft serve: ${(e as Error).message}\n(see updraft serve --help)\n`);
    return 2;
  }
  if (options === 'help') {
    process.stdout.write(SERVE_HELP);
    return 0;
  }
  let engine;
  try {
    engine = createUploadEngine(options);
  } catch (e) {
    process.stderr.write(`updraft serve: ${optionErrorMessage(options, e as Error)}\n`);
    return 2;
  }
  // The handlers come first: a start can take a while (it reloads every upload), and a signal then must not kill
  // the process with the default action. A stop asked for during the start happens once the start is over; a second
  // signal exits at once (the state on disk is crash-safe either way).
  let resolveExit!: (code: number) => void;
  const exit = new Promise<number>((resolve) => (resolveExit = resolve));
  let started = false;
  let stopping = false;
  let askedDuringStart = '';
  const stop = (signal: string): void => {
    if (stopping) {
      process.stderr.write(`updraft: second ${signal}, exiting now\n`);
      resolveExit(1);
      return;
    }
    stopping = true;
    if (!started) {
      askedDuringStart = signal;
      engine.log.info({ event: 'server.stopping', signal }, 'stop asked for during the start: stopping once it is over');
      return;
    }
    engine.log.info({ event: 'server.stopping', signal }, 'stopping');
    const timer = setTimeout(() => {
      engine.log.error({ event: 'server.stop_timeout' }, 'the stop took over 15 s: exiting without waiting for it (the state on disk is crash-safe)');
      resolveExit(1);
    }, 15_000);
    timer.unref();
    engine.close().then(
      () => {
        clearTimeout(timer);
        engine.log.info({ event: 'server.stopped' }, 'stopped');
        resolveExit(0);
      },
      (e: unknown) => {
        engine.log.error({ err: e }, 'error while stopping');
        resolveExit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  for (const signal of earlySignals) stop(signal);

  const listening = engine.listen().then(
    (info) => {
      started = true;
      if (stopping) {
        // Asked to stop while starting: stop now, without announcing a server that is going away.
        stopping = false;
        stop(askedDuringStart);
      } else {
        process.stdout.write(`listening on ${info.url}\n`);
      }
      return 0;
    },
    async (e: unknown) => {
      // Another engine on the root, the port taken, an address this host lacks, a --dir that is a file: one line.
      await engine.close().catch(() => {});
      process.stderr.write(`updraft serve: ${e instanceof Error ? e.message : String(e)}\n`);
      return 1;
    },
  );
  const failed = await Promise.race([listening.then((code) => (code === 1 ? 1 : null)), exit]);
  return failed ?? (await exit);
}

/** Runs the CLI with this process's arguments and exits with its code. */
export function run(earlySignals: readonly string[] = []): void {
  const argv = process.argv.slice(2);
  // Only `serve` stops gracefully; any other command asked to stop before it began just ends, as by the signal.
  if (earlySignals.length > 0 && argv[0] !== 'serve') process.exit(earlySignals[0] === 'SIGINT' ? 130 : 143);
  main(argv, process.env, earlySignals).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`updraft: ${e instanceof UsageError ? e.message : ((e as Error)?.stack ?? String(e))}\n`);
      process.exit(1);
    },
  );
}

// Run directly (`node --import tsx src/cli/main.ts serve`); the package bin imports run() instead.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) run();
