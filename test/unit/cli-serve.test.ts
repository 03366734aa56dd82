/**
 * `updraft serve` flags and UPDRAFT_* variables (src/cli/main.ts serveOptions): tokens, the demo switch, and what a
 * usage error may print.
 */
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/cli/args.js';
import { serveOptions } from '../../src/cli/main.js';

const thrown = (f: () => unknown): Error => {
  try {
    f();
  } catch (e) {
    return e as Error;
  }
  throw new Error('did not throw');
};

describe('updraft serve options', () => {
  it('refuses a token given for two users instead of handing it to the last one', () => {
    const e = thrown(() => serveOptions(['--token', 'alice:secret-token-1', '--token', 'mallory:secret-token-1'], {}));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toBe('--token: the same token is given for "alice" and "mallory"');
    expect(thrown(() => serveOptions([], { UPDRAFT_TOKENS: 'alice:secret-token-1,bob:secret-token-1' }))).toBeInstanceOf(UsageError);
  });

  it('trims UPDRAFT_TOKENS entries like the other list variables', () => {
    expect(serveOptions([], { UPDRAFT_TOKENS: 'alice:secret-token-1, bob:secret-token-2 ,' })).toMatchObject({
      tokens: { 'secret-token-1': 'alice', 'secret-token-2': 'bob' },
    });
  });

  it('never echoes a --token value without its user: it may be the secret itself', () => {
    const e = thrown(() => serveOptions(['--token', 's3cret-token-1'], {}));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).not.toContain('s3cret');
  });

  it('turns the demo off with UPDRAFT_DEMO=0, false, no or off, and --no-demo', () => {
    for (const v of ['0', 'false', 'no', 'off', 'FALSE', ' Off ']) expect((serveOptions([], { UPDRAFT_DEMO: v }) as { demo?: boolean }).demo, v).toBe(false);
    for (const v of ['1', 'true', '']) expect((serveOptions([], { UPDRAFT_DEMO: v }) as { demo?: boolean }).demo, v).toBe(true);
    expect((serveOptions(["--no-demo"], {}) as { demo?: boolean }).demo).toBe(false);
  });
});
