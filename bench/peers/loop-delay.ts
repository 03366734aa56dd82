/**
 * Main-thread event-loop delay, the figure behind the "p99 < 10 ms while uploading" goal. Every Node target serves
 * it the same way so the harness reads them alike:
 *
 *   GET  /__bench/eld        -> 200 {"p99Ms","maxMs","meanMs","samples","resolutionMs"}
 *   POST /__bench/eld/reset  -> 204 (the harness resets after warm-up, right before the measured window)
 *
 * `monitorEventLoopDelay` records the interval between timer ticks, which includes the resolution itself (an idle
 * loop records about 1.1 ms at resolution 1). We report the excess over the resolution: how late the loop was.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';

export const ELD_PATH = '/__bench/eld';
export const ELD_RESET_PATH = '/__bench/eld/reset';

/** 1 ms gives 1000 samples a second, enough for a p99 of a one-second upload; each tick costs a few microseconds. */
const RESOLUTION_MS = 1;

export interface LoopDelaySnapshot {
  readonly p99Ms: number;
  readonly maxMs: number;
  readonly meanMs: number;
  readonly samples: number;
  readonly resolutionMs: number;
}

export interface LoopDelayMonitor {
  reset(): void;
  snapshot(): LoopDelaySnapshot;
}

export function startLoopDelayMonitor(): LoopDelayMonitor {
  const histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  histogram.enable();
  const excessMs = (ns: number): number => (histogram.count === 0 ? 0 : Math.max(0, ns / 1e6 - RESOLUTION_MS));
  return {
    reset: () => histogram.reset(),
    snapshot: () => ({
      p99Ms: round3(excessMs(histogram.percentile(99))),
      maxMs: round3(excessMs(histogram.max)),
      meanMs: round3(excessMs(histogram.mean)),
      samples: histogram.count,
      resolutionMs: RESOLUTION_MS,
    }),
  };
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
