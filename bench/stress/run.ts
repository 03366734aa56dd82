/**
 * One stress run: start (or reach) the server, put the fault proxy in front of it, run every planned upload with a
 * bounded number at once, kill and restart the server at random moments in crash mode, then check everything
 * (verify.ts) and return the counts. `bench/stress.ts` is the command line around it; the CI test calls it directly.
 */
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { parseJournal } from '../../src/main/state-store.js';
import { UploadContent } from './content.js';
import { cancelUpload, checkPlaced, initUpload, uploadStatus } from './control.js';
import type { ClientContext } from './control.js';
import { FaultProxy } from './fault-proxy.js';
import type { ProxyStats } from './fault-proxy.js';
import { UploadRecord, emptyFaults } from './ledger.js';
import type { FaultCounts } from './ledger.js';
import { SELF_TOKENS, planUploads } from './plan.js';
import type { StressConfig, Transport, UploadPlan } from './plan.js';
import { Prng } from './prng.js';
import { PsClient } from './ps-client.js';
import { PutClient } from './put-client.js';
import { ServerProcess } from './server-process.js';
import { STAGING, checkCompletedFile, listFiles, stagingGuids, stagingLeftovers } from './verify.js';
import { WsClient, wsAvailable } from './ws-client.js';

export interface StressResult {
  seed: number;
  config: Omit<StressConfig, 'dir'> & { dir: string | undefined };
  /** `pswebhost`: WebSocket uploads that spoke PSWebHost's protocol instead of updraft.v1. */
  transports: { used: Transport[]; skipped: Array<{ transport: Transport; why: string }>; pswebhost: number };
  durationMs: number;
  uploads: number;
  bytesPlanned: number;
  counts: {
    completed: number;
    /** Completed with every byte exactly what the client meant (no different bytes were acknowledged first). */
    completedIntended: number;
    cancelled: number;
    failedExplicit: number;
    vanished: number;
    unfinished: number;
    /** Stopped by the deadline halfway, then finished (or found stuck) by the fault-free drain. */
    drained: number;
    /** Still incomplete after the drain: a liveness failure. */
    stuck: number;
    gaveUp: number;
    corrupted: number;
    strayFiles: number;
    ackedChunksLost: number;
    /** Acknowledgements sent before the chunk was in the journal (a crash at that moment would lose them). */
    acksNotDurable: number;
    completedBeforePlaced: number;
    completionsLost: number;
    /** Cancels the client was told about (200, 410 or 4001) that a later status contradicts. */
    cancelsLost: number;
    leftoverStaging: number;
    /** Uploads the server created for an init whose reply was lost (crash mode); cancelled at the end. */
    orphanedInits: number;
    violations: number;
  };
  failedCodes: Record<string, number>;
  faults: FaultCounts;
  proxy: ProxyStats;
  crashes: number;
  serverStarts: number;
  serverErrorLines: string[];
  corrupted: string[];
  strayFiles: string[];
  leftoverStaging: string[];
  violations: string[];
  unexpected: string[];
  ok: boolean;
  dirKept: string | undefined;
}

type Log = (line: string) => void;

/** How long the drain gives the uploads the deadline stopped to complete without faults. */
const DRAIN_MS = 60_000;

export async function runStress(config: StressConfig, log: Log = (l) => process.stderr.write(`${l}\n`)): Promise<StressResult> {
  const started = Date.now();
  const selfStarted = config.url === undefined;
  const dir = config.dir ?? (selfStarted ? await fsp.mkdtemp(path.join(os.tmpdir(), 'updraft-stress-')) : undefined);
  let server: ServerProcess | null = null;
  let upstreamPort: number;
  const tokens = selfStarted ? SELF_TOKENS : config.tokens;
  if (selfStarted) {
    const extraArgs = SELF_TOKENS.flatMap((t, i) => ['--token', `stress${i}:${t}`]);
    server = new ServerProcess({ dir: dir!, chunkSize: config.chunkSize, durability: 'chunk', workers: config.workers, extraArgs });
    await server.start();
    upstreamPort = server.port;
    log(`server: pid ${server.pid}, port ${server.port}, dir ${dir}`);
  } else {
    const u = new URL(config.url!);
    if (u.hostname !== '127.0.0.1' && u.hostname !== 'localhost') throw new Error('--url must point at 127.0.0.1');
    upstreamPort = Number(u.port || 80);
  }
  const proxy = new FaultProxy(upstreamPort);
  await proxy.listen();

  // Transports: WebSocket only once the server speaks updraft.v1.
  const used: Transport[] = [];
  const skipped: Array<{ transport: Transport; why: string }> = [];
  for (const t of config.transports) {
    if (t === 'put') used.push(t);
    else {
      const why = await wsAvailable(`http://127.0.0.1:${upstreamPort}`, config.prefix, tokens[0]);
      if (why === null) used.push(t);
      else skipped.push({ transport: t, why });
    }
  }
  if (used.length === 0) used.push('put');
  for (const s of skipped) log(`transport ${s.transport}: skipped (${s.why})`);
  // The server started here serves every transport: one it cannot serve is a failure, not a skip.
  const setupViolations = selfStarted ? skipped.map((s) => `transport ${s.transport} is not served by the self-started server: ${s.why}`) : [];

  const plans = planUploads(config, used);
  const runFolder = `stress-${config.seed}-${Date.now().toString(36)}`;
  const deadline = started + config.durationMs;
  const ctx: ClientContext = { config, proxy, deadline };
  if (selfStarted && dir) {
    const stagingDir = path.join(dir, STAGING);
    // Read in one go (a completion may remove it any time), and parsed as the engine parses it at a restart.
    ctx.journal = async (guid) => {
      const buf = await fsp.readFile(path.join(stagingDir, `${guid}.journal`)).catch(() => null);
      return buf === null ? null : new Set(parseJournal(buf, crc32(guid)).chunks);
    };
  }
  if (dir) {
    const folder = path.join(dir, runFolder);
    const stagingDir = path.join(dir, STAGING);
    ctx.placed = async (guid, finalName, size) => {
      if (finalName === undefined) return 'the reply names no file';
      const st = await fsp.stat(path.join(folder, finalName)).catch((e: NodeJS.ErrnoException) => e.code ?? 'error');
      if (typeof st === 'string') return `${runFolder}/${finalName}: ${st}`;
      if (st.size !== size) return `${runFolder}/${finalName} has ${st.size} bytes, not ${size}`;
      const part = await fsp.stat(path.join(stagingDir, `${guid}.part`)).then(() => true, () => false);
      return part ? 'its staging data is still there' : null;
    };
  }
  const records = plans.map((p) => {
    const rec = new UploadRecord(p.index, p.size, p.chunkSize, p.transport);
    if (tokens.length > 0) rec.token = tokens[p.index % tokens.length];
    return rec;
  });
  const contents = plans.map((p) => new UploadContent(config.seed, p.index, p.size, p.chunkSize));

  // --- crash loop -----------------------------------------------------------------------------------------------------
  let clientsDone = false;
  let crashes = 0;
  let crashLoop: Promise<void> = Promise.resolve();
  if (config.crash) {
    if (!server) throw new Error('--crash needs a self-started server (no --url)');
    const rng = new Prng(config.seed, 'crash');
    const srv = server;
    crashLoop = (async () => {
      while (!clientsDone && crashes < config.maxCrashes) {
        const wait = rng.int(config.crashEveryMs[0], config.crashEveryMs[1]);
        const until = Date.now() + wait;
        while (!clientsDone && Date.now() < until) await new Promise((r) => setTimeout(r, Math.min(100, until - Date.now())));
        if (clientsDone) break;
        await srv.kill();
        crashes++;
        const down = rng.int(0, 400);
        await new Promise((r) => setTimeout(r, down));
        await srv.start();
        log(`crash ${crashes}: SIGKILL, down ${down} ms, restarted as pid ${srv.pid}`);
      }
    })();
  }

  // --- progress -------------------------------------------------------------------------------------------------------
  let finished = 0;
  const progress = config.progress
    ? setInterval(() => {
        const c = records.filter((r) => r.outcome === 'completed').length;
        log(`… ${finished}/${plans.length} uploads done (${c} completed), ${Math.round((Date.now() - started) / 1000)} s, ${crashes} crashes`);
      }, 5000)
    : null;

  // --- clients --------------------------------------------------------------------------------------------------------
  let next = 0;
  const runOne = async (plan: UploadPlan): Promise<void> => {
    const rec = records[plan.index]!;
    const rng = new Prng(config.seed, `client ${plan.index}`);
    const content = contents[plan.index]!;
    try {
      // Every other upload's init carries an Idempotency-Key (and keeps its name on a retry): a lost reply must not
      // leave a second upload behind (checked with the orphans below), crashes included.
      const key = keyedInit(plan.index) ? `${runFolder}-${plan.index}` : undefined;
      const init = await initUpload(ctx, rng.split('init jitter'), rec, `u${String(plan.index).padStart(4, '0')}-${plan.size}.bin`, runFolder, key);
      if (!init) {
        if (rec.outcome === 'pending') rec.outcome = 'unfinished';
        return;
      }
      if (init.complete) {
        rec.completed(init.finalName);
        await checkPlaced(ctx, rec, init.finalName, 'init of a 0-byte file');
        return;
      }
      if (plan.transport === 'ws' && plan.wsProtocol === 'pswebhost') await new PsClient(ctx, plan, rec, content, rng).run();
      else if (plan.transport === 'ws') await new WsClient(ctx, plan, rec, content, rng).run();
      else await new PutClient(ctx, plan, rec, content, rng).run();
    } catch (e) {
      rec.violation(`client crashed: ${(e as Error).stack ?? String(e)}`);
      rec.outcome = 'failed';
    }
  };
  await Promise.all(
    Array.from({ length: Math.min(config.concurrency, plans.length) }, async () => {
      while (next < plans.length) {
        const p = plans[next++]!;
        await runOne(p);
        finished++;
      }
    }),
  );
  clientsDone = true;
  await crashLoop;
  if (progress) clearInterval(progress);
  if (server && !server.running) await server.start();

  // --- drain: liveness ------------------------------------------------------------------------------------------------
  // Uploads the deadline stopped halfway are finished over PUT with every fault off. One that still does not complete
  // within DRAIN_MS is stuck: a liveness failure (a claim never released, a chunk busy for good), which the deadline
  // alone would pass off as "unfinished".
  const drainStarted = Date.now();
  const drainCtx: ClientContext = { ...ctx, config: { ...config, faultScale: 0 }, deadline: drainStarted + DRAIN_MS };
  const toDrain = records.filter((r) => r.outcome === 'unfinished' && r.guid !== null);
  let drainNext = 0;
  await Promise.all(
    Array.from({ length: Math.min(config.concurrency, toDrain.length) }, async () => {
      while (drainNext < toDrain.length) {
        const rec = toDrain[drainNext++]!;
        const plan: UploadPlan = { ...plans[rec.index]!, transport: 'put', psForm: 0, alt: false, slow: false, cancelAtSend: undefined, vanishAtSend: undefined };
        rec.outcome = 'pending';
        rec.drained = true;
        try {
          await new PutClient(drainCtx, plan, rec, contents[rec.index]!, new Prng(config.seed, `drain ${rec.index}`)).run(true);
        } catch (e) {
          rec.violation(`drain client crashed: ${(e as Error).stack ?? String(e)}`);
        }
        if (rec.outcome === 'pending' || rec.outcome === 'unfinished' || rec.outcome === 'gaveup') {
          // (a client that gave up has already said so, and after how many rounds)
          if ((rec.outcome as string) !== 'gaveup') rec.violation(`still not complete after ${Math.round(DRAIN_MS / 1000)} s of fault-free sending (stuck)`);
          rec.outcome = 'stuck';
        }
      }
    }),
  );
  const drainMs = toDrain.length > 0 ? Date.now() - drainStarted : 0;
  if (toDrain.length > 0) {
    const done = toDrain.filter((r) => r.outcome === 'completed').length;
    const stuck = toDrain.filter((r) => r.outcome === 'stuck').length;
    log(`drain: ${toDrain.length} upload(s) stopped by the deadline, sent again without faults in ${drainMs} ms: ${done} completed, ${stuck} stuck`);
  }

  // --- final checks ---------------------------------------------------------------------------------------------------
  const checkRng = new Prng(config.seed, 'check');
  const finalCtx: ClientContext = { ...ctx, deadline: Date.now() + 120_000 };
  const corrupted: string[] = [];
  const violations: string[] = [...setupViolations];
  const unexpected: string[] = [];
  let completionsLost = 0;
  let completedIntended = 0;

  // A completion must survive everything that happened after it (crashes included).
  for (const rec of records) {
    if (rec.outcome !== 'completed' || rec.guid === null) continue;
    const st = await uploadStatus(finalCtx, checkRng, rec);
    if (st.kind === 'completed') rec.completed(st.finalName);
    else {
      completionsLost++;
      rec.lostCompletion = true;
      rec.violation(`completed upload later reads as ${st.kind === 'ended' ? st.code : st.kind}`);
    }
  }
  // A cancel the client was told about must survive everything after it (crashes included): the upload stays gone.
  let cancelsLost = 0;
  for (const rec of records) {
    if (rec.outcome !== 'cancelled' || rec.guid === null) continue;
    const st = await uploadStatus(finalCtx, checkRng, rec);
    if (st.kind === 'ended' && st.code === 'ERR_UPLOAD_CANCELLED') continue;
    cancelsLost++;
    rec.violation(`cancelled upload later reads as ${st.kind === 'ended' ? st.code : st.kind} (an acknowledged cancel was lost)`);
    if (st.kind === 'active') await cancelUpload(finalCtx, checkRng, rec, 'DELETE'); // so that its files do not count as leftovers too
  }
  // Uploads abandoned by their client (vanished, unfinished, gave up) are cancelled, so that what remains in staging
  // afterwards is a leak. A real server keeps them until the TTL; cancelling them also exercises cancel after crashes.
  for (const rec of records) {
    if (rec.guid === null || !['vanished', 'unfinished', 'gaveup', 'stuck'].includes(rec.outcome)) continue;
    const r = await cancelUpload(finalCtx, checkRng, rec, 'DELETE');
    if (r === 'ended') rec.endedByServer(rec.errorCode!); // failed, expired or forgotten on its own
    if (r === 'completed') {
      // A vanished client's last chunk may have completed the upload after all.
      const st = await uploadStatus(finalCtx, checkRng, rec);
      if (st.kind === 'completed') {
        rec.completed(st.finalName);
      }
    }
  }
  // Uploads created for an init whose reply never arrived (the server died, or the reply was lost).
  let orphanedInits = 0;
  const keyedNames = new Set(records.filter((r) => keyedInit(r.index)).flatMap((r) => r.inits.map((i) => i.fileName)));
  const known = new Set(records.map((r) => r.guid).filter((g): g is string => g !== null));
  if (selfStarted && dir) {
    for (const guid of await stagingGuids(dir)) {
      if (known.has(guid)) continue;
      // The guid names no user: ask as each one (another user's upload reads as 404).
      for (const token of tokens.length > 0 ? tokens : [undefined]) {
        const probe = new UploadRecord(-1, 0, config.chunkSize, 'put');
        probe.guid = guid;
        probe.token = token;
        const st = await uploadStatus(finalCtx, checkRng, probe);
        if (st.kind === 'ended' && st.code === 'ERR_UPLOAD_NOT_FOUND') continue;
        if (st.kind === 'active') {
          orphanedInits++;
          if (keyedNames.has(st.fileName)) violations.push(`upload ${guid} (${st.fileName}) is a second upload of an init repeated with its Idempotency-Key`);
          await cancelUpload(finalCtx, checkRng, probe, 'DELETE');
        }
        break;
      }
    }
    if (orphanedInits > 0 && crashes === 0) violations.push(`${orphanedInits} upload(s) exist that no client's init was answered for, without any crash`);
  }

  // Files: every completed upload byte-exact; nothing else under a final name.
  const expectedFiles = new Set<string>();
  if (dir) {
    for (const rec of records) {
      if (rec.outcome !== 'completed') continue;
      if (rec.finalName === undefined) {
        rec.violation('completed without a file name');
        continue;
      }
      const rel = `${runFolder}/${rec.finalName}`;
      expectedFiles.add(rel);
      const check = await checkCompletedFile(path.join(dir, runFolder, rec.finalName), rec, contents[rec.index]!);
      if (!check.ok) corrupted.push(`upload #${rec.index} (${rec.guid}, ${rec.size} bytes, ${rec.transport}): ${check.reason}`);
      else if (check.intended) completedIntended++;
    }
  }
  const strayFiles: string[] = [];
  if (dir) {
    const zeroOrphans = new Set<string>();
    for (const rec of records) {
      for (const i of rec.inits) if (!i.answered && rec.size === 0) zeroOrphans.add(`${runFolder}/${i.fileName}`);
    }
    for (const f of await listFiles(dir)) {
      if (!selfStarted && !f.startsWith(`${runFolder}/`)) continue;
      if (expectedFiles.has(f)) continue;
      // A 0-byte upload completes at init: an init whose reply was lost leaves a complete empty file.
      if (zeroOrphans.has(f) && (await fsp.stat(path.join(dir, f))).size === 0) continue;
      strayFiles.push(f);
    }
  }
  let leftover: string[] = [];
  if (dir) leftover = await stagingLeftovers(dir, selfStarted ? undefined : known);

  // --- totals ---------------------------------------------------------------------------------------------------------
  const faults = emptyFaults();
  const failedCodes: Record<string, number> = {};
  for (const rec of records) {
    for (const k of Object.keys(faults) as Array<keyof FaultCounts>) faults[k] += rec.faults[k];
    violations.push(...rec.violations);
    unexpected.push(...rec.unexpected.map((u) => `upload #${rec.index}: ${u}`));
    if (rec.outcome === 'failed') failedCodes[rec.errorCode ?? 'unknown'] = (failedCodes[rec.errorCode ?? 'unknown'] ?? 0) + 1;
  }
  const count = (o: string): number => records.filter((r) => r.outcome === o).length;
  const ackedChunksLost = records.reduce((s, r) => s + r.lostChunks, 0);
  const counts: StressResult['counts'] = {
    completed: count('completed'),
    completedIntended,
    cancelled: count('cancelled'),
    failedExplicit: count('failed'),
    vanished: count('vanished'),
    unfinished: count('unfinished'),
    drained: toDrain.length,
    stuck: count('stuck'),
    gaveUp: count('gaveup'),
    corrupted: corrupted.length,
    strayFiles: strayFiles.length,
    ackedChunksLost,
    acksNotDurable: records.reduce((s, r) => s + r.acksNotDurable, 0),
    completedBeforePlaced: records.reduce((s, r) => s + r.completedBeforePlaced, 0),
    completionsLost,
    cancelsLost,
    leftoverStaging: leftover.length,
    orphanedInits,
    violations: violations.length,
  };
  // A run that proved nothing fails too: no SIGKILL in crash mode, or nothing completed that could have.
  if (config.crash && crashes === 0) violations.push('crash mode, but the server was never killed (the run ended before the first crash: raise --duration or lower --crash-every)');
  if (counts.completed === 0 && plans.some((p) => p.cancelAtSend === undefined && p.vanishAtSend === undefined)) {
    violations.push('no upload completed, though some were meant to');
  }
  counts.violations = violations.length;
  const ok =
    counts.completedBeforePlaced === 0 &&
    counts.corrupted === 0 &&
    counts.strayFiles === 0 &&
    counts.ackedChunksLost === 0 &&
    counts.acksNotDurable === 0 &&
    counts.completionsLost === 0 &&
    counts.cancelsLost === 0 &&
    counts.leftoverStaging === 0 &&
    counts.gaveUp === 0 &&
    counts.stuck === 0 &&
    counts.violations === 0;

  await proxy.close();
  const serverErrorLines = server ? [...server.errorLines] : [];
  if (server) await server.stop();
  let dirKept: string | undefined;
  if (selfStarted && config.dir === undefined && dir) {
    if (ok && !config.keepDir) await fsp.rm(dir, { recursive: true, force: true });
    else dirKept = dir;
  }
  return {
    seed: config.seed,
    config: { ...config, dir },
    transports: { used, skipped, pswebhost: plans.filter((p) => p.transport === 'ws' && p.wsProtocol === 'pswebhost').length },
    durationMs: Date.now() - started,
    uploads: plans.length,
    bytesPlanned: plans.reduce((s, p) => s + p.size, 0),
    counts,
    failedCodes,
    faults,
    proxy: { ...proxy.stats },
    crashes,
    serverStarts: server?.starts ?? 0,
    serverErrorLines,
    corrupted,
    strayFiles,
    leftoverStaging: leftover,
    violations,
    unexpected,
    ok,
    dirKept,
  };
}

/** Uploads whose init carries an Idempotency-Key: every other one, so both kinds meet every fault and crash. */
function keyedInit(index: number): boolean {
  return index % 2 === 1;
}
