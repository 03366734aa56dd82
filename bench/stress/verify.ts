/**
 * The checks after every client has stopped: completed files against what was sent (SHA-256, chunk by chunk under
 * the rules in ledger.ts), files under a final name that nobody completed, and staging files left over once every
 * upload has ended.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { UploadContent } from './content.js';
import type { UploadRecord } from './ledger.js';

export const STAGING = '.updraft-staging';

export interface FileCheck {
  ok: boolean;
  /** The file is byte for byte what the client meant to send (version 0 of every chunk). */
  intended: boolean;
  sha256: string;
  reason?: string;
}

/** Checks one completed file against the ledger. */
export async function checkCompletedFile(file: string, rec: UploadRecord, content: UploadContent): Promise<FileCheck> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, 'r');
  } catch (e) {
    return { ok: false, intended: false, sha256: '', reason: `completed file missing (${(e as NodeJS.ErrnoException).code})` };
  }
  try {
    const st = await fh.stat();
    if (st.size !== rec.size) return { ok: false, intended: false, sha256: '', reason: `size ${st.size}, expected ${rec.size}` };
    // The file's SHA-256 from its own read of the whole file, against the SHA-256 of what the client meant to
    // send: the version of each chunk that the ledger allows (found chunk by chunk below).
    const meant = createHash('sha256');
    let intended = true;
    const buf = Buffer.alloc(rec.chunkSize);
    for (let c = 0; c < rec.totalChunks; c++) {
      const len = content.chunkLength(c);
      const { bytesRead } = await fh.read(buf, 0, len, c * rec.chunkSize);
      if (bytesRead !== len) return { ok: false, intended: false, sha256: '', reason: `short read of chunk ${c}` };
      const got = buf.subarray(0, len);
      const ch = rec.chunks[c]!;
      // The version a "newly stored" reply named is the only one allowed; with none seen, any version that may have
      // reached the server whole, minus those refused by checksum.
      const allowed = ch.newVersion !== null ? [ch.newVersion] : [...ch.possible].filter((v) => !ch.forbidden.has(v));
      const match = allowed.find((v) => content.chunk(c, v).equals(got));
      if (match === undefined) {
        const other = [0, 1, 2].find((v) => content.chunk(c, v).equals(got));
        const what = other === undefined ? 'bytes of no version sent (torn, zeros or another chunk)' : `version ${other}`;
        return {
          ok: false,
          intended: false,
          sha256: '',
          reason: `chunk ${c} holds ${what}; allowed: ${allowed.length > 0 ? allowed.join(', ') : 'none'} (acked new: ${ch.newVersion ?? '-'})`,
        };
      }
      if (match !== 0) intended = false;
      meant.update(content.chunk(c, match));
    }
    const expected = meant.digest('hex');
    const sha256 = await fileSha256(file);
    if (sha256 !== expected) return { ok: false, intended: false, sha256, reason: `sha256 ${sha256} of the file, ${expected} of the chunks meant` };
    return { ok: true, intended, sha256 };
  } finally {
    await fh.close();
  }
}

async function fileSha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const piece of fs.createReadStream(file)) h.update(piece as Buffer);
  return h.digest('hex');
}

/** Every regular file under `dir` (relative, '/'-separated), skipping the staging folder at the root. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(d: string, rel: string): Promise<void> {
    let entries;
    try {
      entries = await fsp.readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (rel === '' && e.name === STAGING) continue;
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(path.join(d, e.name), r);
      else out.push(r);
    }
  }
  await walk(dir, '');
  return out.sort();
}

/** Staging files other than an ended upload's record (`<guid>.meta`): data, journals, temporary files. */
export async function stagingLeftovers(dir: string, onlyGuids?: ReadonlySet<string>): Promise<string[]> {
  let names: string[];
  try {
    names = await fsp.readdir(path.join(dir, STAGING));
  } catch {
    return [];
  }
  return names
    .filter((n) => !n.endsWith('.meta'))
    .filter((n) => !onlyGuids || onlyGuids.has(n.replace(/\.(part|journal|meta\.tmp)$/, '')))
    .sort();
}

/** Guids with any file in staging. */
export async function stagingGuids(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await fsp.readdir(path.join(dir, STAGING));
  } catch {
    return [];
  }
  const guids = new Set<string>();
  for (const n of names) {
    const m = /^(.*)\.(part|journal|meta|meta\.tmp)$/.exec(n);
    if (m) guids.add(m[1]!);
  }
  return [...guids].sort();
}
