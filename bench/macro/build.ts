/**
 * How the Node processes of a run are started: from the compiled output (`node dist/...js`) or through the tsx
 * loader (`node --import tsx ...ts`). tsx compiles every module on load in the main thread and again in every
 * worker thread, which inflates RSS and CPU, so the harness builds once (`tsc -p .`) and runs compiled code.
 *
 * tsc may exit non-zero because of type errors in files other sessions are editing and still emit everything, so
 * its exit code is not trusted: a group of sources runs compiled when every one of its .ts files has a .js in dist/
 * that is at least as new as the source. A group that is not fresh (tsc missing, crashed, or emitted nothing) falls
 * back to tsx, and the report says which was used.
 *
 * Groups: `updraft` (src/**, also the protocol codec the WebSocket client imports), `peers` (bench/peers/**),
 * `ws-client` (bench/macro/clients/ws-runner.ts and src/protocol/**).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export type Group = 'updraft' | 'peers' | 'ws-client';

export interface Runtime {
  /** One line per group, for the log and the report: which way it runs and why. */
  readonly summary: readonly string[];
  /** True when the group runs from dist/. */
  compiled(group: Group): boolean;
  /** Node arguments that run `tsRelPath` (relative to the repo root): the dist .js, or tsx and the .ts. */
  nodeArgs(tsRelPath: string): string[];
}

const GROUP_SOURCES: Record<Group, readonly string[]> = {
  updraft: ['src'],
  peers: ['bench/peers'],
  'ws-client': ['bench/macro/clients/ws-runner.ts', 'src/protocol'],
};

export function groupOf(tsRelPath: string): Group {
  const p = tsRelPath.split(path.sep).join('/');
  if (p.startsWith('bench/peers/')) return 'peers';
  if (p.startsWith('bench/macro/clients/')) return 'ws-client';
  return 'updraft';
}

/** dist/<path>.js for <path>.ts */
export function distPathOf(repoRoot: string, tsRelPath: string): string {
  return path.join(repoRoot, 'dist', tsRelPath.replace(/\.ts$/, '.js'));
}

/** The runtime when everything runs through tsx (the `--tsx` flag, or no build at all). */
export function tsxRuntime(why: string): Runtime {
  return {
    summary: [`all Node processes run from source through tsx (${why})`],
    compiled: () => false,
    nodeArgs: (tsRelPath) => ['--import', 'tsx', tsRelPath],
  };
}

/** Runs `tsc -p .` once (bounded), then decides per group whether dist/ can be used. */
export function buildRuntime(repoRoot: string, log: (line: string) => void): Runtime {
  const started = Date.now();
  const tscBin = path.join(repoRoot, 'node_modules', '.bin', 'tsc');
  const [command, args] = fs.existsSync(tscBin) ? [tscBin, ['-p', '.']] : ['npx', ['--no-install', 'tsc', '-p', '.']];
  const result = spawnSync(command, args, { cwd: repoRoot, encoding: 'utf8', timeout: 300_000, maxBuffer: 16 * 1024 * 1024 });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const output = `${result.stdout ?? ''}${result.stderr ?? ''}`;
  const errors = output.split('\n').filter((l) => /error TS\d+/.test(l));
  let tscLine: string;
  if (result.error !== undefined) tscLine = `tsc -p . could not run: ${result.error.message}`;
  else if (result.status === 0) tscLine = `tsc -p . built dist/ in ${seconds} s`;
  else {
    const files = [...new Set(errors.map((l) => l.split('(')[0]))];
    tscLine = `tsc -p . exited ${result.status ?? result.signal} in ${seconds} s with ${errors.length} type error(s)` +
      (files.length > 0 ? ` in ${files.slice(0, 3).join(', ')}${files.length > 3 ? ', ...' : ''}` : '') +
      ' (not trusted either way: dist/ is checked file by file)';
  }
  log(`build: ${tscLine}`);

  const fresh = new Map<Group, string | undefined>();
  for (const group of Object.keys(GROUP_SOURCES) as Group[]) fresh.set(group, staleness(repoRoot, GROUP_SOURCES[group]));
  const mainJs = distPathOf(repoRoot, path.join('src', 'cli', 'main.ts'));
  if (!fs.existsSync(mainJs)) fresh.set('updraft', `${path.relative(repoRoot, mainJs)} is missing`);

  const summary = [tscLine];
  const describe: Record<Group, string> = {
    updraft: 'Updraft: node dist/src/cli/main.js serve',
    peers: 'Node peers: node dist/bench/peers/<peer>.js',
    'ws-client': 'WebSocket client: node dist/bench/macro/clients/ws-runner.js',
  };
  for (const [group, stale] of fresh) {
    const line = stale === undefined
      ? `${describe[group]} (compiled)`
      : `${describe[group].split(':')[0]}: through tsx, because ${stale}`;
    summary.push(line);
    log(`build: ${line}`);
  }
  return {
    summary,
    compiled: (group) => fresh.get(group) === undefined,
    nodeArgs: (tsRelPath) => fresh.get(groupOf(tsRelPath)) === undefined
      ? [path.relative(repoRoot, distPathOf(repoRoot, tsRelPath))]
      : ['--import', 'tsx', tsRelPath],
  };
}

/** undefined when every .ts under `roots` has a dist .js at least as new; else why not (the first stale file). */
function staleness(repoRoot: string, roots: readonly string[]): string | undefined {
  let count = 0;
  for (const root of roots) {
    for (const rel of listTs(repoRoot, root)) {
      if (++count > 5000) return 'too many source files to check';
      const js = distPathOf(repoRoot, rel);
      let jsTime: number;
      try {
        jsTime = fs.statSync(js).mtimeMs;
      } catch {
        return `${path.relative(repoRoot, js)} is missing`;
      }
      if (jsTime < fs.statSync(path.join(repoRoot, rel)).mtimeMs) return `${path.relative(repoRoot, js)} is older than ${rel}`;
    }
  }
  return count === 0 ? `no sources found under ${roots.join(', ')}` : undefined;
}

/** .ts files (not .d.ts) at `rel` (a file or a folder, walked up to 6 levels), relative to the repo root. */
function listTs(repoRoot: string, rel: string, depth = 0): string[] {
  const full = path.join(repoRoot, rel);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(full);
  } catch {
    return [];
  }
  if (stat.isFile()) return /\.ts$/.test(rel) && !/\.d\.ts$/.test(rel) ? [rel] : [];
  if (!stat.isDirectory() || depth > 6) return [];
  return fs.readdirSync(full).flatMap((name) => listTs(repoRoot, path.join(rel, name), depth + 1));
}
