/**
 * Vitest global setup: every temp folder the tests make (upload roots, files outside the root, client sources, CLI
 * children's folders) goes under one folder of this run, removed when the run ends, so `npm test` leaves nothing in
 * the system's temp folder (it left hundreds of folders, up to 257 MB each, per run).
 *
 * TMPDIR is set before vitest starts its test processes, so `os.tmpdir()` in them, and in every child they spawn
 * (CLI servers, nginx), points here.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export default function setup(): () => void {
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'updraft-tests-'));
  const previous = process.env.TMPDIR;
  process.env.TMPDIR = runDir;
  return () => {
    if (previous === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = previous;
    try {
      fs.rmSync(runDir, { recursive: true, force: true, maxRetries: 3 });
    } catch (e) {
      process.stderr.write(`test temp folder ${runDir} not removed: ${(e as Error).message}\n`);
    }
  };
}
