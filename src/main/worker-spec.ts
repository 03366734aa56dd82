/**
 * Where a worker's code lives and how to load it, for piscina or a bare worker_threads Worker.
 *
 * A worker thread gets neither vitest's transform nor type stripping (Node 20 has none), so a `.ts` worker needs
 * the tsx loader in its execArgv. Three cases (notes/dependencies.md, "Loading .ts piscina workers"):
 *   - compiled (`node dist/...`): the caller is a .js file, the worker is its sibling .js file, no loader;
 *   - dev (`tsx x.ts`, `node --import tsx x.ts`): the worker inherits process.execArgv, which already has tsx;
 *   - tests (vitest): the caller is .ts but tsx is not in execArgv, so we add `--import <tsx loader URL>`.
 *
 * Two traps, both seen on Node 20.20 with tsx 4.23: in a worker thread only tsx's require() hook works, not its
 * import() hook. piscina loads a module with require() first and falls back to import(), so
 *   - every .ts worker module must have the export named by the pool's `name` option (piscina resolves it once at
 *     worker start-up, default 'default'); a missing export sends piscina to import() and the worker fails with
 *     ERR_UNKNOWN_FILE_EXTENSION;
 *   - a bare `new Worker(url-of-a-.ts-file)` fails the same way: run .ts worker code through piscina.
 */
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

export interface WorkerSpec {
  /** A file: URL (href) of the worker module. */
  filename: string;
  /** Set only when the worker must load through tsx and would not inherit it. */
  execArgv?: string[];
}

/**
 * @param relNoExt the worker's path relative to `callerUrl`, without extension (`'../workers/write-task'`)
 * @param callerUrl the caller's `import.meta.url`
 */
export function workerSpec(relNoExt: string, callerUrl: string): WorkerSpec {
  const fromSource = /\.[cm]?ts$/.test(new URL(callerUrl).pathname);
  const filename = new URL(`${relNoExt}${fromSource ? '.ts' : '.js'}`, callerUrl).href;
  if (!fromSource) return { filename };
  // `--import tsx`, `--import=tsx`, `--loader .../tsx/...`, or the tsx CLI's own flags: the worker inherits them.
  if (process.execArgv.some((a) => /(^|[\\/=])tsx([\\/]|$)/.test(a))) return { filename };
  // Resolves to tsx's package entry (dist/loader.mjs), which registers the loader in the worker before its code runs.
  const tsxLoader = pathToFileURL(createRequire(callerUrl).resolve('tsx')).href;
  return { filename, execArgv: [...process.execArgv, '--import', tsxLoader] };
}
