/** Parsing of CLI flag values: sizes ("8MiB", "64M", "1048576") and durations ("24h", "30m", "90s", "500ms"). */

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, kb: 1000, kib: 1024,
  m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4,
};

export class UsageError extends Error {}

export function parseSize(flag: string, v: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)$/i.exec(v.trim());
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  const n = m && unit !== undefined ? Number(m[1]) * unit : NaN;
  if (!Number.isSafeInteger(Math.round(n))) throw new UsageError(`${flag}: expected a size like 8MiB, 64M or 1048576, got "${v}"`);
  // 1.5 (bytes) or 1.1MiB name no whole number of bytes: refused rather than rounded behind the user's back.
  if (!Number.isInteger(n)) throw new UsageError(`${flag}: "${v}" is not a whole number of bytes`);
  return n;
}

const TIME_UNITS: Record<string, number> = { '': 1, ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

export function parseDuration(flag: string, v: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)$/i.exec(v.trim());
  const unit = m ? TIME_UNITS[m[2]!.toLowerCase()] : undefined;
  const n = m && unit !== undefined ? Math.round(Number(m[1]) * unit) : NaN;
  if (!Number.isSafeInteger(n)) throw new UsageError(`${flag}: expected a duration like 24h, 30m, 90s or 500ms, got "${v}"`);
  return n;
}

export function parseInteger(flag: string, v: string): number {
  if (!/^[0-9]+$/.test(v.trim())) throw new UsageError(`${flag}: expected a whole number, got "${v}"`);
  return Number(v.trim());
}

/** "user:token" -> [token, user]. */
export function parseTokenSpec(label: string, v: string): [string, string] {
  const i = v.indexOf(':');
  // The value is never echoed: it may be the secret itself, given without its user.
  if (i <= 0 || i === v.length - 1) throw new UsageError(`${label}: expected USER:TOKEN (a user name, a colon, the token)`);
  return [v.slice(i + 1), v.slice(0, i)];
}
