/**
 * `updraft serve` flags and UPDRAFT_* variables (src/cli/main.ts serveOptions): tokens, the demo switch, and what a
 * usage error may print.
 */
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/cli/args.js';
import { optionErrorMessage, serveOptions } from '../../src/cli/main.js';
import { createUploadEngine, resolveOptions } from '../../src/index.js';
import type { UploadEngineOptions } from '../../src/index.js';
import { thrown } from '../fixtures/thrown.js';


describe('updraft serve options', () => {
  it('refuses a token given for two users instead of handing it to the last one', () => {
    const e = thrown(() => serveOptions(['--token', 'alice:secret-token-1', '--token', 'mallory:secret-token-1'], {}));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toBe('--token: the same token is given for "alice" and "mallory"');
    const fromEnv = thrown(() => serveOptions([], { UPDRAFT_TOKENS: 'alice:secret-token-1,bob:secret-token-1' }));
    expect(fromEnv).toBeInstanceOf(UsageError);
    expect(fromEnv.message).toBe('UPDRAFT_TOKENS: the same token is given for "alice" and "bob"');
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
    for (const v of ['yes', 'ON']) expect((serveOptions([], { UPDRAFT_DEMO: v }) as { demo?: boolean }).demo, v).toBe(true);
  });

  it('prefaults unless --no-prefault or UPDRAFT_PREFAULT=0, false, no or off; refuses anything else', () => {
    const prefault = (argv: string[], env: NodeJS.ProcessEnv): boolean | undefined => (serveOptions(argv, env) as { prefault?: boolean }).prefault;
    for (const v of ['0', 'false', 'no', ' OFF ']) expect(prefault([], { UPDRAFT_PREFAULT: v }), v).toBe(false);
    for (const v of ['1', 'true', 'yes', 'on', '']) expect(prefault([], { UPDRAFT_PREFAULT: v }), v).toBeUndefined(); // the engine's default
    expect(prefault(['--no-prefault'], {})).toBe(false);
    expect(prefault(['--no-prefault'], { UPDRAFT_PREFAULT: '1' })).toBe(false);
    const e = thrown(() => serveOptions([], { UPDRAFT_PREFAULT: 'sometimes' }));
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toBe('UPDRAFT_PREFAULT: expected 1, true, yes or on (prefault) or 0, false, no or off (none), got "sometimes"');
  });

  it('refuses an UPDRAFT_DEMO that is neither on nor off, rather than reading it as on', () => {
    for (const v of ['bogus', '2', 'disabled']) {
      const e = thrown(() => serveOptions([], { UPDRAFT_DEMO: v }));
      expect(e, v).toBeInstanceOf(UsageError);
      expect(e.message).toBe(`UPDRAFT_DEMO: expected 1, true, yes or on (the demo) or 0, false, no or off (none), got "${v}"`);
    }
  });

  it('reports an invalid value under the flag or the variable it came from', () => {
    // Parsed by the CLI itself.
    expect(thrown(() => serveOptions([], { UPDRAFT_PORT: 'abc' })).message).toBe('UPDRAFT_PORT: expected a whole number, got "abc"');
    expect(thrown(() => serveOptions(['--port', 'abc'], { UPDRAFT_PORT: '80' })).message).toBe('--port: expected a whole number, got "abc"');
    expect(thrown(() => serveOptions([], { UPDRAFT_TOKENS: 'no-colon-here' })).message).toMatch(/^UPDRAFT_TOKENS: expected USER:TOKEN/);
    // Checked by the engine (resolveOptions throws OptionsError before anything starts).
    const engineError = (argv: string[], env: NodeJS.ProcessEnv): string => {
      const options = serveOptions(argv, env) as UploadEngineOptions;
      return optionErrorMessage(options, thrown(() => createUploadEngine(options)));
    };
    expect(engineError([], { UPDRAFT_DURABILITY: 'bogus' })).toBe('UPDRAFT_DURABILITY: expected one of chunk, upload, got bogus');
    expect(engineError(['--durability', 'bogus'], {})).toBe('--durability: expected one of chunk, upload, got bogus');
    expect(engineError([], { UPDRAFT_TRUST_PROXY: 'not-an-address' })).toBe('UPDRAFT_TRUST_PROXY: "not-an-address" is not an IP address or CIDR');
    expect(engineError(['--trust-proxy', '10.0.0.0/99'], {})).toBe('--trust-proxy: bad prefix length in "10.0.0.0/99"');
    // An embedder's string where a number belongs is shown as a string, not as the number it looks like.
    expect(thrown(() => createUploadEngine({ port: '8080' as unknown as number })).message).toBe('invalid option port: expected an integer from 0 to 65535, got "8080"');
    expect(engineError(['--token', 'alice:short'], {})).toBe('--token: each token needs at least 8 non-space characters');
    expect(engineError([], { UPDRAFT_WORKERS: '0' })).toBe('UPDRAFT_WORKERS: expected an integer from 1 to 256, got 0');
  });

  it('refuses credentialed CORS for every origin (an embedder option the engine checks)', () => {
    expect(() => createUploadEngine({ allowedOrigins: ['*'], corsCredentials: true })).toThrow(
      "invalid option corsCredentials: cannot be combined with allowedOrigins '*': list the origins that may send credentials",
    );
    expect(resolveOptions({ allowedOrigins: ['*'] }).corsCredentials).toBe(false);
  });
});
