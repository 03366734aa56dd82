/**
 * The performance goals of issues 2, 3 and 5, checked against one run's figures. Ratio goals are checked in the
 * scenarios that stand for the issues' cases (PlannedScenario.goalCase: `one` upload of 1 GiB, `many` = 16 at once;
 * quick mode has smaller stand-ins and says so by naming them); a goal passes only where every such scenario that
 * has both figures passes, and is "n/a" with no data at all. The event-loop and memory goals hold in every run.
 */
import { speedRatio, type Aggregate } from './aggregate.js';
import type { PlannedScenario } from './scenarios.js';

export interface GoalLine {
  /** undefined = no data. */
  readonly pass: boolean | undefined;
  readonly text: string;
  /** The issue that sets the goal. */
  readonly issue: number;
}

export const GOAL_ISSUES: ReadonlyArray<{ readonly issue: number; readonly title: string }> = [
  { issue: 2, title: 'issue 2, engine core (PUT)' },
  { issue: 3, title: 'issue 3, WebSocket transport' },
  { issue: 5, title: 'issue 5, against the peers' },
];

const MiB = 1024 * 1024;
const PUT_CHUNK = ['updraft-chunk', 'updraft-chunk-lockupload'];
const PUT_UPLOAD = ['updraft-upload', 'updraft-upload-lockupload'];
const PUT_ALL = [...PUT_CHUNK, ...PUT_UPLOAD];
const PUT_DEFAULT_LOCK = ['updraft-chunk', 'updraft-upload'];

export function evaluateGoals(aggs: readonly Aggregate[], scenarios: readonly PlannedScenario[]): GoalLine[] {
  const lines: GoalLine[] = [];
  const ran = (target: string): boolean => aggs.some((g) => g.target === target && g.okRuns > 0);
  const one = (s: PlannedScenario): boolean => s.goalCase === 'one';
  const many = (s: PlannedScenario): boolean => s.goalCase === 'many';
  const oneOrMany = (s: PlannedScenario): boolean => s.goalCase !== undefined;

  const ratioGoal = (issue: number, target: string, ref: string, min: number, only: (s: PlannedScenario) => boolean, label = target): void => {
    const parts: string[] = [];
    let pass: boolean | undefined;
    for (const s of scenarios) {
      if (!only(s)) continue;
      const mine = aggs.find((g) => g.scenario === s.id && g.target === target);
      const theirs = aggs.find((g) => g.scenario === s.id && g.target === ref);
      if (mine === undefined || theirs === undefined) continue; // not planned here (quick mode, a peer not installed)
      // A failed run of the target fails the goal in that scenario; a failed run of the reference leaves no figure.
      if (mine.okRuns < mine.runs) {
        parts.push(`${s.id} ${mine.runs - mine.okRuns} of ${mine.runs} runs failed`);
        pass = false;
        continue;
      }
      const r = speedRatio(aggs, s.id, target, ref);
      if (r === undefined) {
        parts.push(`${s.id} n/a (${ref}: ${theirs.runs - theirs.okRuns} of ${theirs.runs} runs failed)`);
        continue;
      }
      parts.push(`${s.id} ${r.toFixed(2)}x`);
      pass = (pass ?? true) && r >= min;
    }
    lines.push({ issue, pass, text: `${label} >= ${min.toFixed(1)}x ${ref}: ${parts.length > 0 ? parts.join(', ') : 'no data'}` });
  };

  const updraftIds = [...new Set(aggs.filter((g) => g.target.startsWith('updraft')).map((g) => g.target))];
  if (updraftIds.length === 0) {
    for (const [issue, text] of [
      [2, 'Updraft PUT durability=chunk >= 1.0x nginx; durability=upload >= 1.3x nginx and >= 0.7x discard'],
      [2, 'Updraft with workers >= sync-main'],
      [3, 'updraft.v1 >= PUT'],
      [5, 'Updraft PUT >= 1.3x nginx and >= 2x @tus/server, one upload and 16 at once; >= 1.5x sync-main with 16'],
      [5, 'Updraft event-loop p99 < 10 ms; peak RSS < 300 MiB'],
    ] as const) lines.push({ issue, pass: undefined, text: `${text}: no Updraft results` });
    return lines;
  }

  // Issue 2: the engine over PUT, 1 GiB in 8 MiB chunks, 4 in flight; both lock modes.
  for (const id of PUT_CHUNK.filter(ran)) ratioGoal(2, id, 'nginx', 1.0, one);
  for (const id of PUT_UPLOAD.filter(ran)) {
    ratioGoal(2, id, 'nginx', 1.3, one);
    ratioGoal(2, id, 'discard', 0.7, one);
  }
  for (const id of PUT_ALL.filter(ran)) ratioGoal(2, id, 'sync-main', 1.0, oneOrMany, `${id} (workers)`);
  // Not a figure of the issue: sync-main syncs nothing, so this line sets the workers against the same design made
  // as durable as durability=upload.
  for (const id of PUT_UPLOAD.filter(ran)) {
    ratioGoal(2, id, 'sync-main-durable', 1.0, oneOrMany, `(like for like, not an issue figure) ${id} (workers)`);
  }

  // Issue 3: updraft.v1 at least as fast as PUT with the same durability, wherever both ran.
  for (const id of updraftIds.filter((t) => t.endsWith('-ws'))) {
    const put = id.slice(0, -'-ws'.length);
    if (ran(put)) ratioGoal(3, id, put, 1.0, () => true);
  }

  // Issue 5: PUT against the peers, for one upload and for 16 at once.
  for (const id of PUT_DEFAULT_LOCK.filter(ran)) {
    ratioGoal(5, id, 'nginx', 1.3, oneOrMany);
    ratioGoal(5, id, 'tus', 2.0, oneOrMany);
    ratioGoal(5, id, 'sync-main', 1.5, many, `${id} (uploads at once)`);
  }

  // Issue 5: every Updraft run, every transport (the worst repetition of each, not the median).
  const mine = aggs.filter((g) => g.target.startsWith('updraft') && g.okRuns > 0);
  const worstFirst = <T>(xs: T[], value: (x: T) => number): T[] => [...xs].sort((a, b) => value(b) - value(a));
  const eld = mine.filter((g) => g.loopDelayP99WorstMs !== undefined);
  const eldOver = eld.filter((g) => g.loopDelayP99WorstMs! >= 10);
  const eldWorst = worstFirst(eld, (g) => g.loopDelayP99WorstMs!)[0];
  lines.push({
    issue: 5,
    pass: eld.length === 0 ? undefined : eldOver.length === 0,
    text: `Updraft event-loop p99 < 10 ms in every run (${eld.length} target/scenario pairs): ` + (eld.length === 0
      ? 'n/a (no /__bench/eld)'
      : eldOver.length === 0
        ? `worst ${eldWorst!.loopDelayP99WorstMs!.toFixed(1)} ms (${eldWorst!.target}, ${eldWorst!.scenario})`
        : `${eldOver.length} over: ${worstFirst(eldOver, (g) => g.loopDelayP99WorstMs!).map((g) => `${g.target} ${g.scenario} ${g.loopDelayP99WorstMs!.toFixed(1)} ms`).join(', ')}`),
  });
  const rss = mine.filter((g) => g.peakRssBytes !== undefined);
  const rssOver = rss.filter((g) => g.peakRssBytes! >= 300 * MiB);
  const rssWorst = worstFirst(rss, (g) => g.peakRssBytes!)[0];
  lines.push({
    issue: 5,
    pass: rss.length === 0 ? undefined : rssOver.length === 0,
    text: `Updraft peak RSS < 300 MiB in every run (${rss.length} target/scenario pairs): ` + (rss.length === 0
      ? 'no data'
      : rssOver.length === 0
        ? `worst ${(rssWorst!.peakRssBytes! / MiB).toFixed(0)} MiB (${rssWorst!.target}, ${rssWorst!.scenario})`
        : `${rssOver.length} over: ${worstFirst(rssOver, (g) => g.peakRssBytes!).map((g) => `${g.target} ${g.scenario} ${(g.peakRssBytes! / MiB).toFixed(0)} MiB`).join(', ')}`),
  });
  return lines;
}

export function goalMark(pass: boolean | undefined): string {
  return pass === undefined ? 'n/a ' : pass ? 'PASS' : 'FAIL';
}
