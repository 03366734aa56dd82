/**
 * The benchmark's goal lines (bench/macro/goals.ts) on made-up figures: a goal must not pass on a failed Updraft run
 * or on the median of a bound that must hold in every run.
 */
import { describe, expect, it } from 'vitest';
import type { Aggregate } from '../../bench/macro/aggregate.js';
import { evaluateGoals } from '../../bench/macro/goals.js';
import { fullScenarios } from '../../bench/macro/scenarios.js';

function agg(scenario: string, target: string, mbPerSecond: number, extra: Partial<Aggregate> = {}): Aggregate {
  return { scenario, target, client: 'curl', runs: 3, okRuns: 3, errors: [], mbPerSecond, peakRssWindowOnly: true, verified: 'size', ...extra };
}

const scenarios = fullScenarios(3, 2);
const line = (aggs: Aggregate[], start: string): string => {
  const l = evaluateGoals(aggs, scenarios).find((g) => g.text.startsWith(start));
  if (!l) throw new Error(`no goal line starting with ${start}`);
  return `${l.pass === undefined ? 'n/a' : l.pass ? 'PASS' : 'FAIL'} ${l.text}`;
};

describe('bench goals', () => {
  it('a failed run of Updraft in a goal scenario fails the goal; a failed run of the reference leaves no figure there', () => {
    const base = [agg('1x1GiB', 'nginx', 800), agg('16x64MiB', 'nginx', 1000), agg('1x1GiB', 'updraft-chunk', 1600)];
    expect(line([...base, agg('16x64MiB', 'updraft-chunk', 1500)], 'updraft-chunk >= 1.3x nginx')).toBe('PASS updraft-chunk >= 1.3x nginx: 1x1GiB 2.00x, 16x64MiB 1.50x');
    expect(line([...base, agg('16x64MiB', 'updraft-chunk', 1500, { okRuns: 2, errors: ['HTTP 500'] })], 'updraft-chunk >= 1.3x nginx')).toBe(
      'FAIL updraft-chunk >= 1.3x nginx: 1x1GiB 2.00x, 16x64MiB 1 of 3 runs failed',
    );
    const peerFailed = [agg('1x1GiB', 'nginx', 800), agg('16x64MiB', 'nginx', 1000, { okRuns: 1 }), agg('1x1GiB', 'updraft-chunk', 1600), agg('16x64MiB', 'updraft-chunk', 900)];
    expect(line(peerFailed, 'updraft-chunk >= 1.3x nginx')).toBe('PASS updraft-chunk >= 1.3x nginx: 1x1GiB 2.00x, 16x64MiB n/a (nginx: 2 of 3 runs failed)');
  });

  it('judges "event-loop p99 < 10 ms in every run" on the worst repetition, not the median', () => {
    const aggs = [agg('1x1GiB', 'updraft-chunk', 1600, { loopDelayP99Ms: 8.8, loopDelayP99WorstMs: 10.02 }), agg('16x64MiB', 'updraft-chunk', 1500, { loopDelayP99Ms: 3, loopDelayP99WorstMs: 4 })];
    expect(line(aggs, 'Updraft event-loop p99')).toBe('FAIL Updraft event-loop p99 < 10 ms in every run (2 target/scenario pairs): 1 over: updraft-chunk 1x1GiB 10.0 ms');
    aggs[0] = agg('1x1GiB', 'updraft-chunk', 1600, { loopDelayP99Ms: 8.8, loopDelayP99WorstMs: 9.5 });
    expect(line(aggs, 'Updraft event-loop p99')).toBe('PASS Updraft event-loop p99 < 10 ms in every run (2 target/scenario pairs): worst 9.5 ms (updraft-chunk, 1x1GiB)');
  });
});
