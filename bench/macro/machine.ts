/** The machine a report was measured on: enough to tell whether two reports can be compared at all. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface MachineInfo {
  readonly cpuModel: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly kernel: string;
  readonly os: string;
  readonly node: string;
  readonly benchDisk: { readonly path: string; readonly filesystem: string; readonly device: string; readonly mountpoint: string };
  readonly chunkSource: { readonly path: string; readonly filesystem: string };
  readonly curl?: string;
  readonly nginx?: string;
  readonly dirtyWriteback: string;
}

export function describeMachine(benchDir: string, chunkDir: string, extra: { curl?: string; nginx?: string }): MachineInfo {
  const cpus = os.cpus();
  const disk = mountOf(benchDir);
  return {
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cores: os.availableParallelism(),
    memoryGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    kernel: os.release(),
    os: readOsName(),
    node: process.version,
    benchDisk: { path: benchDir, ...disk },
    chunkSource: { path: chunkDir, filesystem: mountOf(chunkDir).filesystem },
    curl: extra.curl,
    nginx: extra.nginx,
    dirtyWriteback: ['dirty_ratio', 'dirty_background_ratio', 'dirty_expire_centisecs']
      .map((k) => `${k}=${readTrim(`/proc/sys/vm/${k}`) ?? '?'}`)
      .join(' '),
  };
}

/** The longest mount point containing `dir`, from /proc/self/mounts. */
function mountOf(dir: string): { filesystem: string; device: string; mountpoint: string } {
  let real = dir;
  try {
    real = fs.realpathSync(dir);
  } catch {
    // keep the path as given
  }
  let best = { filesystem: 'unknown', device: 'unknown', mountpoint: '' };
  for (const line of (readTrim('/proc/self/mounts') ?? '').split('\n')) {
    const [device, mountpoint, filesystem] = line.split(' ');
    if (device === undefined || mountpoint === undefined || filesystem === undefined) continue;
    const mp = mountpoint.replace(/\\040/g, ' ');
    const inside = mp === '/' || real === mp || real.startsWith(mp.endsWith(path.sep) ? mp : mp + path.sep);
    if (inside && mp.length >= best.mountpoint.length) best = { filesystem, device, mountpoint: mp };
  }
  return best;
}

function readOsName(): string {
  const text = readTrim('/etc/os-release') ?? '';
  return /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(text)?.[1] ?? `${os.type()} ${os.release()}`;
}

function readTrim(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
}
