/**
 * Browser resume (issue 4): the guid of an unfinished upload is kept in localStorage under a key made of the
 * endpoint, the file's name, size and lastModified, and the target folder asked for, so the same file picked again
 * after a reload or a crash continues where it stopped. A different file with the same name has another size or
 * lastModified, and the same file sent to another folder has another key, so they start fresh. The entry is removed
 * when the upload completes, is cancelled or fails for good.
 *
 * Everything here tolerates a missing or refusing localStorage (Node, private modes, storage quota, sandboxed
 * iframes): resume is then simply unavailable.
 */

const PREFIX = 'updraft:resume:v1:';

export interface ResumeKeyParts {
  endpoint: string;
  fileName: string;
  size: number;
  lastModified: number;
  /** The `targetPath` option as given; absent for the upload root. */
  targetPath?: string;
}

function storage(): Storage | undefined {
  try {
    const s = (globalThis as { localStorage?: Storage }).localStorage;
    return s ?? undefined;
  } catch {
    return undefined; // accessing localStorage throws SecurityError where it is blocked
  }
}

export function resumeKey(p: ResumeKeyParts): string {
  // Always 5 parts ('' for the root). Keys of 4 parts, from versions that did not record the folder, never match
  // one made now, so such an entry is never resumed into a folder it may not have been started for.
  return `${PREFIX}${JSON.stringify([p.endpoint, p.fileName, p.size, p.lastModified, p.targetPath ?? ''])}`;
}

export function loadGuid(key: string): string | undefined {
  try {
    const v = storage()?.getItem(key);
    return typeof v === 'string' && v !== '' ? v : undefined;
  } catch {
    return undefined;
  }
}

export function saveGuid(key: string, guid: string): void {
  try {
    storage()?.setItem(key, guid);
  } catch {
    // Quota or policy: resume after a reload will not work for this file, the upload itself does.
  }
}

export function forgetGuid(key: string): void {
  try {
    storage()?.removeItem(key);
  } catch {
    // as above
  }
}

/** An unfinished browser upload remembered in localStorage: pick the same file again to continue it. */
export interface ResumableUpload {
  endpoint: string;
  fileName: string;
  size: number;
  lastModified: number;
  /** The target folder the upload was started for; absent: the upload root. */
  targetPath?: string;
  guid: string;
}

/** The unfinished uploads remembered in this browser, optionally only those for `endpoint`. */
export function listResumable(endpoint?: string | URL): ResumableUpload[] {
  const s = storage();
  if (s === undefined) return [];
  const want = endpoint === undefined ? undefined : new URL(String(endpoint), typeof location !== 'undefined' ? location.href : undefined).href;
  const out: ResumableUpload[] = [];
  const legacy: string[] = [];
  try {
    for (let i = 0; i < s.length; i++) {
      const key = s.key(i);
      if (key === null || !key.startsWith(PREFIX)) continue;
      const parts: unknown = JSON.parse(key.slice(PREFIX.length));
      const guid = s.getItem(key);
      // Entries of 4 parts (no folder recorded, from earlier versions) can no longer be resumed: dropped.
      if (Array.isArray(parts) && parts.length === 4) legacy.push(key);
      if (!Array.isArray(parts) || parts.length !== 5 || !guid) continue;
      const [ep, fileName, size, lastModified, targetPath] = parts as [unknown, unknown, unknown, unknown, unknown];
      if (typeof ep !== 'string' || typeof fileName !== 'string' || typeof size !== 'number' || typeof lastModified !== 'number' || typeof targetPath !== 'string') continue;
      if (want !== undefined && ep !== want) continue;
      const r: ResumableUpload = { endpoint: ep, fileName, size, lastModified, guid };
      if (targetPath !== '') r.targetPath = targetPath;
      out.push(r);
    }
  } catch {
    // A foreign or corrupt entry: ignore what could not be read.
  }
  for (const key of legacy) forgetGuid(key);
  return out;
}
