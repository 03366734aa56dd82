/**
 * `updraft upload` pieces that need no server: sizes that are no whole number of bytes are usage errors, the resume
 * hint quotes the path for a shell, and on a terminal every printed line goes above the progress bars (a line written
 * under them was overwritten by the next redraw, and with it the `ok` and `FAIL` lines and the resume hint).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseSize, UsageError } from '../../src/cli/args.js';
import { ProgressView, shellQuote } from '../../src/cli/upload.js';

describe('updraft upload', () => {
  it('refuses a size that is no whole number of bytes instead of rounding it', () => {
    expect(parseSize('--chunk-size', '8MiB')).toBe(8 * 1024 * 1024);
    expect(parseSize('--chunk-size', '1.5MiB')).toBe(1.5 * 1024 * 1024);
    for (const v of ['1.5', '1.1MiB']) {
      expect(() => parseSize('--chunk-size', v)).toThrow(UsageError);
      expect(() => parseSize('--chunk-size', v)).toThrow(`--chunk-size: "${v}" is not a whole number of bytes`);
    }
  });

  it('quotes a path for the shell in the resume hint when it needs it', () => {
    expect(shellQuote('data/big.iso')).toBe('data/big.iso');
    expect(shellQuote('my file.bin')).toBe(`'my file.bin'`);
    expect(shellQuote(`it's.bin`)).toBe(`'it'\\''s.bin'`);
  });

  describe('on a terminal', () => {
    let term: string | undefined;
    beforeEach(() => {
      term = process.env.TERM;
      process.env.TERM = 'xterm';
    });
    afterEach(() => {
      if (term === undefined) delete process.env.TERM;
      else process.env.TERM = term;
    });

    it('takes the bars away before a line on stdout and draws them again under it', () => {
      const screen: Array<[string, string]> = [];
      const stderr = { isTTY: true, columns: 80, write: (s: string) => screen.push(['err', s]) } as unknown as NodeJS.WriteStream;
      const stdout = { write: (s: string) => screen.push(['out', s]) };
      const view = new ProgressView(stderr, ['a.bin', 'b.bin']);
      try {
        screen.length = 0;
        view.line(stdout, 'ok    a.bin -> a.bin');
        expect(screen[0]).toEqual(['err', '\x1b[2A\x1b[0J']); // up over both bars, erase them
        expect(screen[1]).toEqual(['out', 'ok    a.bin -> a.bin\n']);
        expect(screen[2]![0]).toBe('err'); // the bars again, below the line
        expect(screen[2]![1]).toMatch(/^\x1b\[2K.*a\.bin.*\n\x1b\[2K.*b\.bin.*\n$/s);
        expect(screen).toHaveLength(3);
      } finally {
        view.stop();
      }
    });
  });
});
