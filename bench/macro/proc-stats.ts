/**
 * Server-side cost, read from /proc the way `ps` and `top` do, so every target is measured alike whatever it is
 * written in: CPU seconds from /proc/<pid>/stat, peak RSS from VmHWM in /proc/<pid>/status.
 *
 * A target is a process tree (nginx: master + workers; Node: one process, its worker threads included in its own
 * counters). CPU of the tree = utime+stime of every live process plus cutime+cstime (children they already reaped),
 * so a delta over a window counts each CPU second once, including processes that exited inside the window.
 */
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';

const CLOCK_TICKS = readClockTicks();

function readClockTicks(): number {
  try {
    const ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 2000 }).trim());
    return Number.isInteger(ticks) && ticks > 0 ? ticks : 100;
  } catch {
    return 100;
  }
}

interface ProcStat {
  readonly pid: number;
  readonly ppid: number;
  /** utime + stime, in clock ticks. */
  readonly ownTicks: number;
  /** cutime + cstime: children this process waited for. */
  readonly reapedTicks: number;
  readonly startTime: number;
}

export function readProcStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Field 2 (comm) is in parentheses and may hold spaces; the fields after the last ')' are fixed (proc(5)).
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const field = (n: number): number => Number(rest[n - 3]);
  return {
    pid,
    ppid: field(4),
    ownTicks: field(14) + field(15),
    reapedTicks: field(16) + field(17),
    startTime: field(22),
  };
}

/** The root and every live descendant (one scan of /proc). */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of safeReaddir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = readProcStat(Number(name));
    if (stat === undefined) continue;
    const list = children.get(stat.ppid);
    if (list === undefined) children.set(stat.ppid, [stat.pid]);
    else list.push(stat.pid);
  }
  const tree: number[] = [];
  const queue = [root];
  for (let i = 0; i < queue.length && i < 10_000; i++) {
    const pid = queue[i]!;
    if (readProcStat(pid) === undefined) continue;
    tree.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return tree;
}

/** CPU seconds the tree has used so far (see the module comment); diff two readings to cost a window. */
export function treeCpuSeconds(root: number): number {
  let ticks = 0;
  for (const pid of processTree(root)) {
    const stat = readProcStat(pid);
    if (stat !== undefined) ticks += stat.ownTicks + stat.reapedTicks;
  }
  return ticks / CLOCK_TICKS;
}

/** CPU seconds of the children this process has reaped: the curl clients, once they have exited. */
export function reapedChildrenCpuSeconds(): number {
  return (readProcStat(process.pid)?.reapedTicks ?? 0) / CLOCK_TICKS;
}

export function vmHwmBytes(pid: number): number | undefined {
  try {
    const match = /^VmHWM:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match === null ? undefined : Number(match[1]) * 1024;
  } catch {
    return undefined;
  }
}

/** Peak RSS of the root alone or summed over the tree (nginx: master + workers). */
export function peakRssBytes(root: number, scope: 'root' | 'tree'): number | undefined {
  const pids = scope === 'root' ? [root] : processTree(root);
  let total = 0;
  let any = false;
  for (const pid of pids) {
    const hwm = vmHwmBytes(pid);
    if (hwm !== undefined) {
      total += hwm;
      any = true;
    }
  }
  return any ? total : undefined;
}

/**
 * Resets VmHWM to the current RSS (writing 5 to clear_refs, Linux >= 4.0), so the peak read later is the peak of the
 * measured window rather than of start-up. Returns false where that is not allowed; the peak then counts from start.
 */
export function resetPeakRss(root: number, scope: 'root' | 'tree'): boolean {
  let ok = true;
  for (const pid of scope === 'root' ? [root] : processTree(root)) {
    try {
      fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
    } catch {
      ok = false;
    }
  }
  return ok;
}

function safeReaddir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

/**
 * CPU seconds the whole machine has spent so far, idle and I/O wait aside (all cores; /proc/stat user + nice +
 * system + irq + softirq + steal). Over a window, that minus the target, curl and this process is what everything
 * else took: other sessions on a shared VM, kernel threads (writeback), other guests (steal), interrupt work charged
 * to none of them. irq and softirq count because, with tick-based accounting (no CONFIG_IRQ_TIME_ACCOUNTING, as
 * here), a tick that lands in softirq work is charged both to that column and to the running task's system time:
 * loopback TCP done in curl's or the server's context is in their CPU already, and leaving the column out made
 * "other" negative, so every network run read 0%.
 */
export function machineBusySeconds(): number {
  try {
    const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
    return ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / CLOCK_TICKS;
  } catch {
    return 0;
  }
}
