/** The printed summary of a stress run (and the replay command). */
import type { StressResult } from './run.js';

function mib(n: number): string {
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} KiB`;
  return `${(n / 1024 / 1024).toFixed(n < 10 * 1024 * 1024 ? 1 : 0)} MiB`;
}

function list(title: string, items: readonly string[], max = 10): string[] {
  if (items.length === 0) return [];
  const out = [`${title} (${items.length}):`];
  for (const i of items.slice(0, max)) out.push(`  - ${i}`);
  if (items.length > max) out.push(`  … and ${items.length - max} more (see --json)`);
  return out;
}

export function formatReport(r: StressResult, replay: string): string {
  const c = r.counts;
  const f = r.faults;
  const p = r.proxy;
  const lines: string[] = [];
  lines.push('');
  lines.push(`updraft stress: seed ${r.seed}, ${r.uploads} uploads (${mib(r.bytesPlanned)}), chunk ${mib(r.config.chunkSize)}, ` +
    `transports ${r.transports.used.join('+')}${r.transports.pswebhost > 0 ? ` (${r.transports.pswebhost} ws uploads in the PSWebHost protocol)` : ''}${r.transports.skipped.length ? ` (skipped: ${r.transports.skipped.map((s) => s.transport).join(', ')})` : ''}, ` +
    `${r.config.url ? `server ${r.config.url}` : 'self-started server'}${r.config.crash ? `, crash mode: ${r.crashes} SIGKILL + restart` : ''}, ${(r.durationMs / 1000).toFixed(1)} s`);
  lines.push('');
  const row = (label: string, n: number | string, note = ''): void => {
    lines.push(`  ${label.padEnd(34)} ${String(n).padStart(6)}${note ? `   ${note}` : ''}`);
  };
  row('completed', c.completed, `${c.completedIntended} exactly as meant, ${c.completed - c.completedIntended - c.corrupted} with first-acknowledged different bytes, ${c.corrupted} corrupted`);
  row('cancelled', c.cancelled);
  row('failed with an explicit error', c.failedExplicit, Object.entries(r.failedCodes).map(([k, v]) => `${k}: ${v}`).join(', '));
  row('vanished (cancelled at the end)', c.vanished);
  row('unfinished or not started (--duration)', c.unfinished);
  row('drained', c.drained, 'stopped halfway by --duration, then sent again with faults off');
  row('gave up (no progress)', c.gaveUp);
  row('STUCK', c.stuck, 'still incomplete after the fault-free drain');
  row('orphaned inits (reply lost)', c.orphanedInits);
  lines.push('');
  row('CORRUPTED', c.corrupted, r.config.dir === undefined ? 'files not checked: --url without --dir' : '');
  row('stray files under a final name', c.strayFiles);
  row('ACKNOWLEDGED CHUNKS LOST', c.ackedChunksLost);
  row('acknowledged before durable', c.acksNotDurable, 'ack whose chunk was not yet in the journal');
  row('completed before placed', c.completedBeforePlaced, '"complete" while the file was not yet whole in its place');
  row('completions lost', c.completionsLost);
  row('cancels lost', c.cancelsLost, 'told "cancelled", later active again');
  row('staging files left over', c.leftoverStaging, r.config.dir === undefined ? 'not checked: --url without --dir' : '');
  row('protocol violations', c.violations);
  lines.push('');
  lines.push(`  faults: proxy cut ${p.cuts}, reset ${p.resets}, stall ${p.stalls}, init replies lost ${p.repliesLost}, refused while down ${p.upstreamRefused} (of ${p.connections} connections); ` +
    `slow senders ${f.slow}, same chunk twice ${f.dupSame}, same chunk on several connections ${f.concurrent}, different bytes ${f.altBytes}, ` +
    `different bytes cut short ${f.altCut}, bad checksum ${f.checksumBad}, ws drops ${f.wsDrop}, chunks sent as ws parts ${f.wsParts}, cancels ${f.cancel}, vanished ${f.vanish}`);
  if (r.serverErrorLines.length > 0) lines.push(`  server logged ${r.serverErrorLines.length} error line(s); first: ${r.serverErrorLines[0]!.slice(0, 300)}`);
  lines.push(...list('corrupted', r.corrupted));
  lines.push(...list('stray files', r.strayFiles));
  lines.push(...list('staging files left over', r.leftoverStaging));
  lines.push(...list('violations', r.violations));
  lines.push(...list('unexpected replies (not failures by themselves)', r.unexpected, 5));
  if (r.dirKept) lines.push(`  server folder kept: ${r.dirKept}`);
  lines.push('');
  lines.push(`replay: ${replay}`);
  lines.push(r.ok ? 'RESULT: PASS' : 'RESULT: FAIL');
  return lines.join('\n');
}
