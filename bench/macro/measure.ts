/**
 * One measured run: a fresh data directory and a freshly started target, a small warm-up upload, then the scenario's
 * uploads inside the measured window, then the readings, verification, stop and delete.
 *
 * Window: from just before the first request of the first upload (init included) to the last reply of the last
 * upload. Throughput is bytes of file content / window (MB = 10^6 bytes).
 * Page cache: it cannot be dropped here, so every run writes into a new, empty directory, `sync` runs before the
 * window (no run pays for the previous run's writeback) and the stored files are deleted right after the run (their
 * dirty pages are discarded rather than written). Whether a target syncs is its own business: the disk limit
 * fdatasyncs, nginx and the peers do not, Updraft does per its --durability.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { sha256OfFiles, warmupSlice, type Dataset } from './dataset.js';
import { dropIdleCurls, killCurlsNow, openCurlGate, prespawnCurls } from './curl.js';
import { machineBusySeconds, peakRssBytes, reapedChildrenCpuSeconds, resetPeakRss, treeCpuSeconds } from './proc-stats.js';
import type { RunningTarget, Scenario, StoredLayout, TargetContext, TargetSpec, UploadJob } from './model.js';

const GIB = 1024 ** 3;
const WARMUP_CHUNKS = 2;

export interface LoopDelay {
  readonly p99Ms: number;
  readonly maxMs: number;
}

export interface RunResult {
  readonly scenario: string;
  readonly target: string;
  readonly rep: number;
  readonly ok: boolean;
  readonly error?: string;
  readonly client: string;
  readonly seconds: number;
  readonly bytes: number;
  readonly mbPerSecond: number;
  /** Server CPU (utime+stime of its process tree) per GiB of content; for the in-process disk limit, ours. */
  readonly cpuSecondsPerGiB?: number;
  /** CPU of the client per GiB: the curl processes that finished in the window, or the WebSocket runner's. */
  readonly clientCpuSecondsPerGiB?: number;
  /**
   * Share of the machine's CPU capacity (all cores x window) used by anything other than the target, curl and this
   * process: other sessions, kernel threads (writeback). High values flag a disturbed run.
   */
  readonly otherCpuShare?: number;
  readonly peakRssBytes?: number;
  /** True when VmHWM was reset after warm-up, so the peak is the window's own. */
  readonly peakRssWindowOnly: boolean;
  /** undefined = the target has no such endpoint (n/a). */
  readonly loopDelay?: LoopDelay;
  /** 'sha256' (every upload hashed and equal), 'size' (lengths only), 'none' (not stored: counted only). */
  readonly verified: 'sha256' | 'size' | 'none';
  /** Set when the run was disturbed and measured again; the report then uses the repeat. */
  readonly superseded?: boolean;
}

export interface RunOptions {
  readonly scenario: Scenario;
  readonly dataset: Dataset;
  readonly target: TargetSpec;
  readonly rep: number;
  readonly hash: boolean;
  readonly context: Omit<TargetContext, 'dataDir'>;
  readonly runDir: string;
  /** The measured window may last this long; then its curl processes are stopped and the run fails. */
  readonly runTimeoutMs: number;
}

/** Throws TargetUnavailable from start(); every other failure comes back as a result with ok=false. */
export async function measureRun(options: RunOptions): Promise<RunResult> {
  const { scenario, dataset, target, rep } = options;
  const dataDir = options.runDir;
  fs.mkdirSync(dataDir, { recursive: true });
  const base = { scenario: scenario.id, target: target.id, rep };
  let running: RunningTarget | undefined;
  openCurlGate();
  try {
    running = await target.start({ ...options.context, dataDir });
    const client = running.client.describe(scenario.inFlight);
    const failed = (error: unknown): RunResult => ({
      ...base, ok: false, error: (error as Error).message ?? String(error), client, seconds: 0, bytes: 0, mbPerSecond: 0,
      peakRssWindowOnly: false, verified: 'none',
    });

    try {
      const warmContent = warmupSlice(dataset.contents[0]!, WARMUP_CHUNKS);
      await running.client.upload({ fileName: `warmup-${scenario.id}.bin`, content: warmContent, inFlight: scenario.inFlight });
    } catch (error) {
      return failed(new Error(`warm-up upload failed: ${(error as Error).message}`));
    }

    const jobs: UploadJob[] = Array.from({ length: scenario.uploads }, (_, i) => ({
      fileName: `upload-${String(i).padStart(3, '0')}.bin`,
      content: dataset.contents[i % dataset.contents.length]!,
      inFlight: scenario.inFlight,
    }));
    const bytes = jobs.reduce((sum, job) => sum + job.content.fileSize, 0);

    execFileSync('sync', { timeout: 60_000 });
    // curl's fork and exec happen before the window, as the WebSocket runner's start does (curl.ts).
    if (running.client.startsCurl === true) {
      prespawnCurls(jobs.length);
      await new Promise((r) => setTimeout(r, 100)); // their start-up (libraries, TLS setup) done and idle
    }
    const eldAvailable = running.eldBaseUrl !== undefined && (await resetLoopDelay(running.eldBaseUrl));
    const server = running.server;
    const windowOnly = server !== undefined && resetPeakRss(server.pid, server.rssScope);
    const selfBefore = process.cpuUsage();
    const busyBefore = machineBusySeconds();
    const serverCpuBefore = server === undefined ? 0 : treeCpuSeconds(server.pid);
    const clientPid = running.clientProcess?.pid;
    const clientCpuBefore = reapedChildrenCpuSeconds() + (clientPid === undefined ? 0 : treeCpuSeconds(clientPid));
    const started = performance.now();

    openCurlGate();
    const limit = { expired: false };
    const timer = setTimeout(() => {
      limit.expired = true;
      killCurlsNow(); // only this run's uploads are in flight
      running?.client.abort?.();
    }, options.runTimeoutMs);
    const settled = await runPool(jobs, scenario.concurrentUploads, limit, (job) => running!.client.upload(job));
    clearTimeout(timer);
    dropIdleCurls(); // none is left when every upload ran

    const seconds = (performance.now() - started) / 1000;
    const selfCpu = cpuSeconds(process.cpuUsage(selfBefore));
    const serverCpu = server === undefined ? selfCpu : treeCpuSeconds(server.pid) - serverCpuBefore;
    const clientCpu = reapedChildrenCpuSeconds() + (clientPid === undefined ? 0 : treeCpuSeconds(clientPid)) - clientCpuBefore;
    const busy = machineBusySeconds() - busyBefore;
    const otherCpu = busy - clientCpu - selfCpu - (server === undefined ? 0 : serverCpu);
    const otherCpuShare = Math.max(0, otherCpu) / (seconds * os.availableParallelism());
    const rss = server === undefined ? undefined : peakRssBytes(server.pid, server.rssScope);
    const loopDelay = eldAvailable && running.eldBaseUrl !== undefined ? await readLoopDelay(running.eldBaseUrl) : undefined;

    if (limit.expired) {
      const done = settled.filter((s) => s?.status === 'fulfilled').length;
      return failed(new Error(`did not finish within ${options.runTimeoutMs / 1000} s (${done}/${jobs.length} uploads done)`));
    }
    const firstFailure = settled.find((s) => s?.status === 'rejected');
    if (firstFailure !== undefined) {
      const count = settled.filter((s) => s?.status === 'rejected').length;
      return failed(new Error(`${count}/${jobs.length} uploads failed: ${(firstFailure.reason as Error).message}`));
    }
    let verified: RunResult['verified'];
    try {
      verified = await verifyStored(running, jobs, settled as Array<PromiseFulfilledResult<{ id: string }>>, options.hash);
    } catch (error) {
      return failed(error);
    }
    return {
      ...base,
      ok: true,
      client,
      seconds,
      bytes,
      mbPerSecond: bytes / 1e6 / seconds,
      cpuSecondsPerGiB: serverCpu / (bytes / GIB),
      clientCpuSecondsPerGiB: server === undefined ? undefined : clientCpu / (bytes / GIB),
      otherCpuShare,
      peakRssBytes: rss,
      peakRssWindowOnly: windowOnly,
      loopDelay,
      verified,
    };
  } finally {
    await running?.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

async function verifyStored(
  running: RunningTarget,
  jobs: readonly UploadJob[],
  receipts: ReadonlyArray<PromiseFulfilledResult<{ id: string }>>,
  hash: boolean,
): Promise<RunResult['verified']> {
  let verified: RunResult['verified'] = hash ? 'sha256' : 'size';
  for (let i = 0; i < jobs.length; i++) {
    const job = jobs[i]!;
    const layout: StoredLayout = running.stored(job, receipts[i]!.value);
    if (layout.kind === 'not-stored') {
      verified = 'none';
      continue;
    }
    const paths = layout.kind === 'file' ? [layout.path] : layout.paths;
    let size = 0;
    for (const file of paths) {
      if (!fs.existsSync(file)) throw new Error(`${job.fileName}: stored file ${path.basename(file)} is missing`);
      size += fs.statSync(file).size;
    }
    if (size !== job.content.fileSize) throw new Error(`${job.fileName}: stored ${size} bytes, sent ${job.content.fileSize}`);
    if (!hash) continue;
    const { sha256 } = await sha256OfFiles(paths);
    if (sha256 !== job.content.sha256) throw new Error(`${job.fileName}: stored bytes differ from the bytes sent (sha256)`);
  }
  return verified;
}

/**
 * Runs fn over items with at most `limit` at once; never rejects (each outcome is reported). Starts nothing new once
 * `stop.expired` is set, so the slots of items never started stay empty.
 */
async function runPool<T, R>(
  items: readonly T[],
  limit: number,
  stop: { readonly expired: boolean },
  fn: (item: T) => Promise<R>,
): Promise<Array<PromiseSettledResult<R> | undefined>> {
  const results = new Array<PromiseSettledResult<R> | undefined>(items.length).fill(undefined);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length && !stop.expired) {
      const index = next++;
      try {
        results[index] = { status: 'fulfilled', value: await fn(items[index]!) };
      } catch (reason) {
        results[index] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return results;
}

function cpuSeconds(usage: NodeJS.CpuUsage): number {
  return (usage.user + usage.system) / 1e6;
}

/** POST /__bench/eld/reset; false when the target does not serve it (404 or anything not 2xx). */
async function resetLoopDelay(baseUrl: string): Promise<boolean> {
  try {
    const response = await fetch(`${baseUrl}/__bench/eld/reset`, { method: 'POST', signal: AbortSignal.timeout(5000) });
    await response.arrayBuffer();
    return response.ok;
  } catch {
    return false;
  }
}

async function readLoopDelay(baseUrl: string): Promise<LoopDelay | undefined> {
  try {
    const response = await fetch(`${baseUrl}/__bench/eld`, { signal: AbortSignal.timeout(5000) });
    if (!response.ok) {
      await response.arrayBuffer();
      return undefined;
    }
    // The peers answer the figures bare; an Updraft-style envelope {"status","data":{...}} is accepted too.
    const body = (await response.json()) as { p99Ms?: unknown; maxMs?: unknown; data?: { p99Ms?: unknown; maxMs?: unknown } };
    const figures = typeof body.p99Ms === 'number' ? body : body.data;
    if (typeof figures?.p99Ms !== 'number' || typeof figures.maxMs !== 'number') return undefined;
    return { p99Ms: figures.p99Ms, maxMs: figures.maxMs };
  } catch {
    return undefined;
  }
}
