/** Repetitions of one target in one scenario, folded into the figures the report prints (medians, worst peaks). */
import type { RunResult } from './measure.js';

export interface Aggregate {
  readonly scenario: string;
  readonly target: string;
  readonly client: string;
  readonly runs: number;
  readonly okRuns: number;
  readonly errors: readonly string[];
  readonly mbPerSecond?: number;
  readonly mbPerSecondMin?: number;
  readonly mbPerSecondMax?: number;
  readonly cpuSecondsPerGiB?: number;
  readonly clientCpuSecondsPerGiB?: number;
  /** Worst (largest) share of CPU taken by other processes during a repetition. */
  readonly otherCpuShare?: number;
  /** Worst peak over the repetitions. */
  readonly peakRssBytes?: number;
  readonly peakRssWindowOnly: boolean;
  /** Median p99 and worst max over the repetitions; undefined = the target serves no loop-delay endpoint. */
  readonly loopDelayP99Ms?: number;
  /** The highest p99 of any repetition (the goal "p99 < 10 ms in every run" is judged on it; tables show the median). */
  readonly loopDelayP99WorstMs?: number;
  readonly loopDelayMaxMs?: number;
  readonly verified: 'sha256' | 'size' | 'none' | 'failed';
}

export function aggregate(results: readonly RunResult[]): Aggregate[] {
  const groups = new Map<string, RunResult[]>();
  for (const r of results) {
    if (r.superseded === true) continue;
    const key = `${r.scenario}\u0000${r.target}`;
    const list = groups.get(key);
    if (list === undefined) groups.set(key, [r]);
    else list.push(r);
  }
  const out: Aggregate[] = [];
  for (const runs of groups.values()) {
    const ok = runs.filter((r) => r.ok);
    const first = runs[0]!;
    const defined = (xs: Array<number | undefined>): number[] => xs.filter((x): x is number => x !== undefined);
    const speeds = ok.map((r) => r.mbPerSecond);
    const rss = defined(ok.map((r) => r.peakRssBytes));
    const eldP99 = defined(ok.map((r) => r.loopDelay?.p99Ms));
    const eldMax = defined(ok.map((r) => r.loopDelay?.maxMs));
    const order = { failed: 0, none: 1, size: 2, sha256: 3 } as const;
    let verified: Aggregate['verified'] = ok.length === runs.length ? 'none' : 'failed';
    if (verified !== 'failed') for (const r of ok) if (order[r.verified] > order[verified]) verified = r.verified;
    out.push({
      scenario: first.scenario,
      target: first.target,
      client: (ok[0] ?? first).client,
      runs: runs.length,
      okRuns: ok.length,
      errors: runs.filter((r) => !r.ok).map((r) => r.error ?? 'failed'),
      mbPerSecond: median(speeds),
      mbPerSecondMin: speeds.length > 0 ? Math.min(...speeds) : undefined,
      mbPerSecondMax: speeds.length > 0 ? Math.max(...speeds) : undefined,
      cpuSecondsPerGiB: median(defined(ok.map((r) => r.cpuSecondsPerGiB))),
      clientCpuSecondsPerGiB: median(defined(ok.map((r) => r.clientCpuSecondsPerGiB))),
      otherCpuShare: maxOf(defined(ok.map((r) => r.otherCpuShare))),
      peakRssBytes: rss.length > 0 ? Math.max(...rss) : undefined,
      peakRssWindowOnly: ok.length > 0 && ok.every((r) => r.peakRssWindowOnly),
      loopDelayP99Ms: median(eldP99),
      loopDelayP99WorstMs: maxOf(eldP99),
      loopDelayMaxMs: eldMax.length > 0 ? Math.max(...eldMax) : undefined,
      verified,
    });
  }
  return out;
}

function maxOf(xs: readonly number[]): number | undefined {
  return xs.length > 0 ? Math.max(...xs) : undefined;
}

export function median(xs: readonly number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** a's throughput over b's in one scenario, when both ran cleanly. */
export function speedRatio(aggs: readonly Aggregate[], scenario: string, a: string, b: string): number | undefined {
  const x = aggs.find((g) => g.scenario === scenario && g.target === a);
  const y = aggs.find((g) => g.scenario === scenario && g.target === b);
  if (x?.mbPerSecond === undefined || y?.mbPerSecond === undefined || x.okRuns < x.runs || y.okRuns < y.runs) return undefined;
  return x.mbPerSecond / y.mbPerSecond;
}
