/**
 * `npm run stress`: many simulated clients against a running Updraft (`--url`) or one started here, through a fault
 * proxy, optionally killing the server at random moments (`--crash`). Prints the counts and exits non-zero when
 * anything was corrupted, lost, leaked or answered against the protocol. See bench/stress/*.ts; the invariants it
 * tries to break are ../shared/notes/durability.md and the per-chunk rules in bench/stress/ledger.ts.
 */
import fsp from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { DEFAULTS } from './stress/plan.js';
import type { StressConfig, Transport } from './stress/plan.js';
import { randomSeed } from './stress/prng.js';
import { formatReport } from './stress/report.js';
import { runStress } from './stress/run.js';

const HELP = `Usage: npm run stress -- [options]

  --seed N              replay a run (default: random, printed)
  --uploads N           uploads to run (default ${DEFAULTS.uploads})
  --duration SECONDS    stop starting and retrying uploads after this long (default ${DEFAULTS.durationMs / 1000})
  --concurrency N       uploads at once (default ${DEFAULTS.concurrency})
  --chunk-size BYTES    chunk size (default ${DEFAULTS.chunkSize}; suffixes K, M: 1M)
  --max-size BYTES      largest file (default ${DEFAULTS.maxSize}; 64M)
  --transports LIST     put,ws (default both; ws is skipped when the server does not speak updraft.v1; a quarter
                        of the ws uploads speak the PSWebHost protocol)
  --crash               SIGKILL the server at random moments and restart it (self-started server only)
  --crashes N           at most N kills (default: no limit)
  --crash-every MIN-MAX seconds between a start and the next kill (default 1.5-6)
  --faults X            scale of fault probabilities, 0 = none (default 1)
  --url URL             drive a running server on 127.0.0.1 instead of starting one
  --dir PATH            the server's upload root: with --url, to check files; otherwise used instead of a temp dir
  --token TOKEN         bearer token for --url (repeatable: one simulated user each)
  --workers N           writer threads of a self-started server (default ${DEFAULTS.workers})
  --keep                keep the temp folder of a self-started server
  --json PATH           write the full result as JSON
  --quiet               no progress lines
`;

function size(flag: string, v: string): number {
  const m = /^(\d+(?:\.\d+)?)([kKmMgG]?)(?:i?B)?$/.exec(v.trim());
  if (!m) throw new Error(`${flag}: expected a size like 1048576, 512K or 1M, got "${v}"`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Math.round(Number(m[1]) * mult);
}

function int(flag: string, v: string, min = 0): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new Error(`${flag}: expected an integer >= ${min}, got "${v}"`);
  return n;
}

export function parseStressArgs(argv: string[]): StressConfig | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      seed: { type: 'string' },
      uploads: { type: 'string' },
      duration: { type: 'string' },
      concurrency: { type: 'string' },
      'chunk-size': { type: 'string' },
      'max-size': { type: 'string' },
      transports: { type: 'string' },
      crash: { type: 'boolean' },
      crashes: { type: 'string' },
      'crash-every': { type: 'string' },
      faults: { type: 'string' },
      url: { type: 'string' },
      dir: { type: 'string' },
      token: { type: 'string', multiple: true },
      workers: { type: 'string' },
      keep: { type: 'boolean' },
      json: { type: 'string' },
      quiet: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return 'help';
  const c: StressConfig = { ...DEFAULTS, seed: values.seed !== undefined ? int('--seed', values.seed) >>> 0 : randomSeed() };
  if (values.uploads !== undefined) c.uploads = int('--uploads', values.uploads, 1);
  if (values.duration !== undefined) c.durationMs = Math.round(Number(values.duration) * 1000);
  if (!(c.durationMs > 0)) throw new Error('--duration: expected seconds > 0');
  if (values.concurrency !== undefined) c.concurrency = int('--concurrency', values.concurrency, 1);
  if (values['chunk-size'] !== undefined) c.chunkSize = size('--chunk-size', values['chunk-size']);
  if (c.chunkSize < 1024) throw new Error('--chunk-size: at least 1K (the server\'s smallest chunk size)');
  if (values['max-size'] !== undefined) c.maxSize = size('--max-size', values['max-size']);
  if (values.transports !== undefined) {
    const ts = values.transports.split(',').map((t) => t.trim()).filter(Boolean);
    for (const t of ts) if (t !== 'put' && t !== 'ws') throw new Error(`--transports: unknown transport "${t}" (put, ws)`);
    c.transports = ts as Transport[];
  }
  c.crash = values.crash === true;
  if (values.crashes !== undefined) c.maxCrashes = int('--crashes', values.crashes);
  if (values['crash-every'] !== undefined) {
    const m = /^(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)$/.exec(values['crash-every']);
    if (!m || Number(m[1]) > Number(m[2])) throw new Error('--crash-every: expected MIN-MAX seconds, e.g. 1.5-6');
    c.crashEveryMs = [Math.round(Number(m[1]) * 1000), Math.round(Number(m[2]) * 1000)];
  }
  if (values.faults !== undefined) c.faultScale = Number(values.faults);
  if (!(c.faultScale >= 0)) throw new Error('--faults: expected a number >= 0');
  if (values.url !== undefined) c.url = values.url;
  if (values.dir !== undefined) c.dir = values.dir;
  if (values.token !== undefined) c.tokens = values.token;
  if (values.workers !== undefined) c.workers = int('--workers', values.workers, 1);
  c.keepDir = values.keep === true;
  if (values.json !== undefined) c.jsonPath = values.json;
  c.progress = values.quiet !== true;
  if (c.crash && c.url) throw new Error('--crash needs a self-started server (drop --url)');
  return c;
}

/** The command that replays `c` (the seed plus every flag that changes the plan). */
export function replayCommand(c: StressConfig): string {
  const a = [`npm run stress -- --seed ${c.seed}`];
  if (c.uploads !== DEFAULTS.uploads) a.push(`--uploads ${c.uploads}`);
  if (c.chunkSize !== DEFAULTS.chunkSize) a.push(`--chunk-size ${c.chunkSize}`);
  if (c.maxSize !== DEFAULTS.maxSize) a.push(`--max-size ${c.maxSize}`);
  if (c.concurrency !== DEFAULTS.concurrency) a.push(`--concurrency ${c.concurrency}`);
  if (c.transports.join(',') !== DEFAULTS.transports.join(',')) a.push(`--transports ${c.transports.join(',')}`);
  if (c.faultScale !== DEFAULTS.faultScale) a.push(`--faults ${c.faultScale}`);
  if (c.crash) a.push('--crash');
  if (c.crash && Number.isFinite(c.maxCrashes)) a.push(`--crashes ${c.maxCrashes}`);
  if (c.crash && c.crashEveryMs.join('-') !== DEFAULTS.crashEveryMs.join('-')) a.push(`--crash-every ${c.crashEveryMs[0] / 1000}-${c.crashEveryMs[1] / 1000}`);
  if (c.durationMs !== DEFAULTS.durationMs) a.push(`--duration ${c.durationMs / 1000}`);
  if (c.url) a.push(`--url ${c.url}`);
  return a.join(' ');
}

async function main(): Promise<number> {
  let config: StressConfig | 'help';
  try {
    config = parseStressArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`stress: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (config === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  process.stdout.write(`updraft stress: seed ${config.seed} (replay: ${replayCommand(config)})\n`);
  const progress = config.progress;
  const result = await runStress(config, (l) => {
    if (progress) process.stderr.write(`${l}\n`);
  });
  process.stdout.write(`${formatReport(result, replayCommand(config))}\n`);
  if (config.jsonPath) await fsp.writeFile(config.jsonPath, JSON.stringify(result, (_k, v: unknown) => (v === Number.POSITIVE_INFINITY ? null : v), 2));
  return result.ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`stress: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exit(2);
  },
);
