/**
 * Keeps the error catalogue, docs/PROTOCOL.md and the public exports in step (STYLE.md "Errors"): every code is
 * documented with its exact HTTP status, retryability and message, and nothing undocumented is listed.
 */
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERRORS, ERROR_CODES, UploadError } from '../../src/index.js';
import * as protocol from '../../src/protocol/index.js';

export function errorTable(): string {
  const rows = ERROR_CODES.map((c) => `| \`${c}\` | ${ERRORS[c].status} | ${ERRORS[c].retryable ? 'yes' : 'no'} | ${ERRORS[c].message} |`);
  return ['| code | HTTP | retryable | message |', '|---|---|---|---|', ...rows].join('\n');
}

describe('error catalogue', () => {
  const doc = fs.readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');
  const section = doc.slice(doc.indexOf('## Error codes'), doc.indexOf('\n## ', doc.indexOf('## Error codes') + 5));

  it('docs/PROTOCOL.md lists every code with its exact status, retryability and message', () => {
    expect(section, `expected this table in docs/PROTOCOL.md:\n${errorTable()}`).toContain(errorTable());
  });

  it('documents no code that does not exist', () => {
    const documented = [...section.matchAll(/`(ERR_[A-Z_]+)`/g)].map((m) => m[1]);
    for (const c of documented) expect(ERROR_CODES).toContain(c);
  });

  it('every code maps to a 4xx or 5xx and builds an UploadError with its spec', () => {
    for (const c of ERROR_CODES) {
      const e = new UploadError(c);
      expect(e.status).toBeGreaterThanOrEqual(400);
      expect(e.status).toBeLessThan(600);
      expect(e.message).toBe(ERRORS[c].message);
      expect(e.retryable).toBe(ERRORS[c].retryable);
    }
  });

  it('the protocol entry point (used by the client) exports the same catalogue', () => {
    expect(protocol.ERRORS).toBe(ERRORS);
    expect(protocol.UploadError).toBe(UploadError);
  });
});
