/**
 * The performance goals from the issue, checked against one run's figures. A goal passes only where every scenario
 * that has the data passes; scenarios without the data are not counted, and a goal with no data at all is "n/a".
 */
import { speedRatio, type Aggregate } from './aggregate.js';
import type { Scenario } from './model.js';

export interface GoalLine {
  /** undefined = no data. */
  readonly pass: boolean | undefined;
  readonly text: string;
}

const MiB = 1024 * 1024;
const UPDRAFT_CHUNK = ['updraft-chunk', 'updraft-chunk-lockupload'];
const UPDRAFT_UPLOAD = ['updraft-upload', 'updraft-upload-lockupload'];

export function evaluateGoals(aggs: readonly Aggregate[], scenarios: readonly Scenario[]): GoalLine[] {
  const lines: GoalLine[] = [];
  const ran = (target: string): boolean => aggs.some((g) => g.target === target && g.okRuns > 0);
  const updraftIds = [...new Set(aggs.filter((g) => g.target.startsWith('updraft')).map((g) => g.target))];

  const ratioGoal = (target: string, ref: string, min: number, only?: (s: Scenario) => boolean, note = ''): void => {
    const parts: string[] = [];
    let pass: boolean | undefined;
    for (const s of scenarios) {
      if (only !== undefined && !only(s)) continue;
      const r = speedRatio(aggs, s.id, target, ref);
      if (r === undefined) continue;
      parts.push(`${s.id} ${r.toFixed(2)}x`);
      pass = (pass ?? true) && r >= min;
    }
    lines.push({ pass, text: `${target} >= ${min.toFixed(1)}x ${ref}${note}: ${parts.length > 0 ? parts.join(', ') : 'no data'}` });
  };

  if (updraftIds.length === 0) {
    for (const text of [
      'Updraft PUT durability=chunk >= 1.0x nginx',
      'Updraft PUT durability=upload >= 1.3x nginx and >= 0.7x discard ceiling',
      'Updraft with workers >= sync-main (>= 1.5x with 16 uploads at once)',
      'Updraft event-loop p99 < 10 ms while uploading',
      'Updraft peak RSS < 300 MiB',
      'Updraft >= 2x @tus/server',
    ]) lines.push({ pass: undefined, text: `${text}: no Updraft results` });
    return lines;
  }

  for (const id of UPDRAFT_CHUNK.filter(ran)) ratioGoal(id, 'nginx', 1.0);
  for (const id of UPDRAFT_UPLOAD.filter(ran)) {
    ratioGoal(id, 'nginx', 1.3);
    ratioGoal(id, 'discard', 0.7);
  }
  for (const id of updraftIds) {
    ratioGoal(id, 'sync-main', 1.0);
    ratioGoal(id, 'sync-main', 1.5, (s) => s.concurrentUploads >= 16, ' (16 uploads at once)');
    ratioGoal(id, 'tus', 2.0);

    const mine = aggs.filter((g) => g.target === id && g.okRuns > 0);
    const eld = mine.filter((g) => g.loopDelayP99Ms !== undefined);
    lines.push({
      pass: eld.length === 0 ? undefined : eld.every((g) => g.loopDelayP99Ms! < 10),
      text: `${id} event-loop p99 < 10 ms: ${eld.length === 0 ? 'n/a (no /__bench/eld)' : eld.map((g) => `${g.scenario} ${g.loopDelayP99Ms!.toFixed(1)} ms`).join(', ')}`,
    });
    const rss = mine.filter((g) => g.peakRssBytes !== undefined);
    lines.push({
      pass: rss.length === 0 ? undefined : rss.every((g) => g.peakRssBytes! < 300 * MiB),
      text: `${id} peak RSS < 300 MiB: ${rss.length === 0 ? 'no data' : rss.map((g) => `${g.scenario} ${(g.peakRssBytes! / MiB).toFixed(0)} MiB`).join(', ')}`,
    });
  }
  return lines;
}

export function goalMark(pass: boolean | undefined): string {
  return pass === undefined ? 'n/a ' : pass ? 'PASS' : 'FAIL';
}
