/**
 * The browser client's resume store (src/client/resume-store.ts) against an in-memory localStorage: the key holds the
 * target folder, so a file picked for another folder never resumes an upload started for the first one, and entries
 * of the earlier key format (no folder recorded) are neither matched nor listed, and are dropped.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { listResumable, loadGuid, resumeKey, saveGuid } from '../../src/client/resume-store.js';

class MemoryStorage {
  readonly #m = new Map<string, string>();
  get length(): number {
    return this.#m.size;
  }
  key(i: number): string | null {
    return [...this.#m.keys()][i] ?? null;
  }
  getItem(k: string): string | null {
    return this.#m.get(k) ?? null;
  }
  setItem(k: string, v: string): void {
    this.#m.set(k, v);
  }
  removeItem(k: string): void {
    this.#m.delete(k);
  }
}

const g = globalThis as { localStorage?: unknown };
beforeEach(() => {
  g.localStorage = new MemoryStorage();
});
afterEach(() => {
  delete g.localStorage;
});

const EP = 'http://127.0.0.1:8080/api/v1/files';
const file = { endpoint: EP, fileName: 'report.bin', size: 3_000_000, lastModified: 1_700_000_000_000 };

describe('resume store', () => {
  it('keeps one entry per target folder: the root and a folder never share a guid', () => {
    saveGuid(resumeKey(file), 'guid-root');
    saveGuid(resumeKey({ ...file, targetPath: 'docs' }), 'guid-docs');
    expect(loadGuid(resumeKey(file))).toBe('guid-root');
    expect(loadGuid(resumeKey({ ...file, targetPath: 'docs' }))).toBe('guid-docs');
    expect(loadGuid(resumeKey({ ...file, targetPath: 'other' }))).toBeUndefined();
    expect(listResumable(EP).sort((a, b) => a.guid.localeCompare(b.guid))).toEqual([
      { ...file, targetPath: 'docs', guid: 'guid-docs' },
      { ...file, guid: 'guid-root' },
    ]);
  });

  it('never matches nor lists an entry of the earlier format, which did not record the folder, and drops it', () => {
    // What a version before this one stored for an upload started for folder "docs".
    const legacy = `updraft:resume:v1:${JSON.stringify([EP, file.fileName, file.size, file.lastModified])}`;
    (g.localStorage as MemoryStorage).setItem(legacy, 'guid-legacy');
    expect(loadGuid(resumeKey(file))).toBeUndefined();
    expect(loadGuid(resumeKey({ ...file, targetPath: 'docs' }))).toBeUndefined();
    expect(listResumable()).toEqual([]);
    expect((g.localStorage as MemoryStorage).getItem(legacy)).toBeNull();
  });
});
