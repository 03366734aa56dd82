/**
 * Runs every micro benchmark (one hot function against an alternative, tinybench) for `npm run bench`, and renders
 * the figures for the terminal and BENCHMARKS.md. Each module also runs on its own:
 * `node --import tsx bench/micro/<name>.bench.ts [--quick]`.
 */
import * as bitmap from './bitmap.bench.js';
import * as dispatch from './dispatch.bench.js';
import * as lockTable from './lock-table.bench.js';
import * as writePiece from './write-piece.bench.js';

export interface MicroRow {
  name: string;
  opsPerSec: number;
  p50Ms: number;
  mbPerSec?: number;
}

export interface MicroGroup {
  bench: string;
  question: string;
  rows: MicroRow[];
  error?: string;
}

const BENCHES = [
  { bench: 'lock-table', question: 'lock acquire/release: one lock per chunk vs one per upload', mod: lockTable },
  { bench: 'bitmap', question: 'set a chunk bit and count it: Atomics on the shared bitmap vs a plain array', mod: bitmap },
  { bench: 'dispatch', question: 'handing bytes to the pool: 2 MiB batches vs one task per 512 KiB piece', mod: dispatch },
  { bench: 'write-piece', question: 'writing 1/8/32 MiB pieces: in a worker vs writeSync on the main thread', mod: writePiece },
] as const;

export async function runMicro(quick: boolean, log: (s: string) => void = () => {}): Promise<MicroGroup[]> {
  const out: MicroGroup[] = [];
  for (const b of BENCHES) {
    log(`micro: ${b.bench}`);
    try {
      out.push({ bench: b.bench, question: b.question, rows: await b.mod.run({ quick }) });
    } catch (e) {
      out.push({ bench: b.bench, question: b.question, rows: [], error: (e as Error).message });
    }
  }
  return out;
}

function fmt(r: MicroRow): string[] {
  return [r.name, r.opsPerSec.toFixed(1), r.p50Ms.toFixed(4), r.mbPerSec === undefined ? '-' : r.mbPerSec.toFixed(0)];
}

export function renderMicroText(groups: readonly MicroGroup[]): string {
  const lines = ['', '== micro benchmarks (tinybench)'];
  for (const g of groups) {
    lines.push('', `-- ${g.bench}: ${g.question}`);
    if (g.error) lines.push(`   failed: ${g.error}`);
    const table = [['case', 'ops/s', 'p50 ms', 'MB/s'], ...g.rows.map(fmt)];
    const widths = table[0]!.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
    for (const row of table) lines.push(`   ${row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  ')}`);
  }
  return lines.join('\n');
}

export function renderMicroMarkdown(groups: readonly MicroGroup[]): string {
  const out = ['', '## Micro benchmarks', '', 'tinybench, one hot function per file against an alternative (`bench/micro/`).'];
  for (const g of groups) {
    out.push('', `### ${g.bench}`, '', `${g.question[0]!.toUpperCase()}${g.question.slice(1)}.`, '');
    if (g.error) out.push(`Failed: ${g.error}`, '');
    out.push('| case | ops/s | p50 ms | MB/s |', '|---|---:|---:|---:|');
    for (const r of g.rows) out.push(`| ${fmt(r).join(' | ')} |`);
  }
  out.push('');
  return out.join('\n');
}
