import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { UploadError, type ErrorCode } from '../../src/protocol/errors.js';
import {
  MAX_NAME_BYTES,
  checkChunkInRange,
  parseChunkNumber,
  parseIdempotencyKey,
  parseInitRequest,
  totalChunksFor,
  validateFileName,
  validateTargetPath,
  type InitLimits,
} from '../../src/protocol/validate.js';
import { thrownUploadError } from '../fixtures/thrown.js';

const thrown = thrownUploadError;

function codeOf(fn: () => unknown): ErrorCode {
  return thrown(fn).code;
}

const utf8 = (s: string): number => new TextEncoder().encode(s).length;
const hex = (u: number): string => u.toString(16).toUpperCase().padStart(4, '0');

describe('validateFileName', () => {
  // [label, value]: every one must be refused with ERR_INVALID_FILE_NAME.
  const hostile: Array<[string, unknown]> = [
    ['undefined', undefined],
    ['null', null],
    ['number', 42],
    ['object', { toString: () => 'a.txt' }],
    ['array', ['a.txt']],
    ['boolean', true],
    ['empty', ''],
    ['dot', '.'],
    ['dot dot', '..'],
    ['slash inside', 'a/b'],
    ['absolute POSIX path', '/etc/passwd'],
    ['parent traversal', '../secret'],
    ['trailing slash', 'dir/'],
    ['backslash inside', 'a\\b'],
    ['Windows traversal', '..\\..\\windows\\system32'],
    ['UNC path', '\\\\server\\share'],
    ['drive-relative', 'C:foo'],
    ['drive-absolute', 'C:\\x'],
    ['bare drive', 'c:'],
    ['lower-case drive', 'z:evil.txt'],
    ['NUL', 'a\u0000b'],
    ['NUL at end', 'a.txt\u0000.jpg'],
    ['LF', 'a\nb'],
    ['CR', 'a\rb'],
    ['TAB', '\tname'],
    ['unit separator', 'a\u001fb'],
    ['ESC (terminal escapes)', '\u001b[31mred'],
    ['DEL', 'a\u007fb'],
    ['C1 U+0080', 'a\u0080b'],
    ['C1 NEL U+0085', 'a\u0085b'],
    ['C1 U+009F', 'a\u009fb'],
    ['line separator U+2028', 'a\u2028b'],
    ['paragraph separator U+2029', 'a\u2029b'],
    ['right-to-left override', 'invoice\u202efdp.exe'],
    ['left-to-right embedding', 'a\u202ab'],
    ['first strong isolate', 'a\u2068b'],
    ['pop directional isolate', 'a\u2069b'],
    // Bidi controls outside U+202A-U+202E and U+2066-U+2069 (regression: these three were accepted).
    ['right-to-left mark hides ".exe"', 'invoice\u200ffdp.exe'],
    ['left-to-right mark', 'a\u200eb'],
    ['Arabic letter mark', 'a\u061cb.txt'],
    ['right-to-left mark next to a character NFKC changes', '\uff21\u200f.txt'],
    ['lone high surrogate at end', 'a\ud800'],
    ['lone low surrogate at start', '\udc00b'],
    ['lone high surrogate inside', 'a\ud83db'],
    ['surrogates in the wrong order', 'x\ude00\ud83d'],
    ['256 ASCII bytes', 'a'.repeat(256)],
    ['256 bytes of 2-byte chars', '\u00e9'.repeat(128)],
    ['258 bytes of 3-byte chars', '\u4e2d'.repeat(86)],
    ['256 bytes of 4-byte chars', '\u{1f600}'.repeat(64)],
    ['a megabyte', 'x'.repeat(1 << 20)],
    ['trailing dot', 'report.'],
    ['trailing space', 'report.pdf '],
    ['three dots', '...'],
    ['only spaces', '   '],
    // After NFKC normalization:
    ['fullwidth solidus U+FF0F', 'a\uff0fb'],
    ['fullwidth solidus alone', '\uff0f'],
    ['fullwidth reverse solidus U+FF3C', 'a\uff3cb'],
    ['small reverse solidus U+FE68', 'a\ufe68b'],
    ['one dot leader twice = ".."', '\u2024\u2024'],
    ['two dot leader U+2025 = ".."', '\u2025'],
    ['small full stop U+FE52 = "."', '\ufe52'],
    ['small full stops = ".."', '\ufe52\ufe52'],
    ['fullwidth full stops = ".."', '\uff0e\uff0e'],
    ['fullwidth colon makes a drive', 'C\uff1afoo'],
    ['fullwidth letter and colon make a drive', '\uff23\uff1a\\x'],
    ['one dot leader at the end', 'name\u2024'],
    ['ideographic space at the end', 'name\u3000'],
    ['no-break space at the end', 'name\u00a0'],
    ['NFKC expansion past 255 bytes', '\ufdfa'.repeat(80)],
  ];

  it.each(hostile)('refuses %s', (_label, value) => {
    expect(codeOf(() => validateFileName(value))).toBe('ERR_INVALID_FILE_NAME');
  });

  const valid: string[] = [
    'report.pdf',
    'a',
    '.env',
    '.hidden.txt',
    'name with  inner spaces.txt',
    ' leading space.txt',
    '10:30 meeting.txt',
    'r\u00e9sum\u00e9.docx',
    'r\u0065\u0301sume\u0301.docx', // decomposed accents: NFKC changes it, but to a name that is just as safe
    '\u4e2d\u6587.txt',
    '\u{1f600}.png',
    '\u05d0\u05d1\u05d2.txt', // Hebrew: right-to-left text needs no bidi controls
    '\u0645\u0644\u0641.txt', // Arabic
    '\ufb01le.txt', // the "fi" ligature folds to "fi": harmless
    '-rf',
    '~',
    '$HOME',
    '%2e%2e', // percent-encoding is not decoded: a literal name
    'a'.repeat(MAX_NAME_BYTES),
    '\u00e9'.repeat(127) + 'a', // exactly 255 bytes
    '\u{1f600}'.repeat(63) + 'abc', // exactly 255 bytes, surrogate pairs counted as 4
    '\ufdfa'.repeat(7), // NFKC expands it 11-fold (231 bytes), still under 255
  ];

  it.each(valid)('accepts %j and returns it unchanged', (name) => {
    expect(utf8(name)).toBeLessThanOrEqual(MAX_NAME_BYTES);
    expect(validateFileName(name)).toBe(name);
  });

  it('quotes only a short, escaped excerpt of a hostile name', () => {
    const e = thrown(() => validateFileName(`\u001b[2J\nrm -rf ${'x'.repeat(100_000)}/`));
    expect(e.message.length).toBeLessThan(200);
    expect(e.message).toContain('\\u001b');
    expect(e.message).toContain('\\u000a');
    expect(e.message).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
    expect(e.message).toContain('...');
  });

  it('says why, naming the normalization when only the NFKC form is bad', () => {
    expect(thrown(() => validateFileName('a/b')).message).toContain('contains "/"');
    expect(thrown(() => validateFileName('\u2024\u2024')).message).toMatch(/"\." or "\.\." after Unicode NFKC/);
    expect(thrown(() => validateFileName('a\ud800')).message).toContain('unpaired surrogate');
    expect(thrown(() => validateFileName('a\u202eb')).message).toContain('U+202E');
  });

  // Unicode's Bidi_Control property is exactly U+061C, U+200E, U+200F, U+202A-U+202E and U+2066-U+2069; the
  // regex takes the set from the engine's Unicode tables, so the test does not repeat the code's list.
  const bidiControls = Array.from({ length: 0x10000 }, (_, u) => u).filter(
    (u) => (u < 0xd800 || u > 0xdfff) && /\p{Bidi_Control}/u.test(String.fromCharCode(u)),
  );

  it('refuses every Unicode Bidi_Control character in any position, saying which', () => {
    expect(bidiControls.map(hex)).toEqual([
      '061C', '200E', '200F', '202A', '202B', '202C', '202D', '202E', '2066', '2067', '2068', '2069',
    ]);
    for (const u of bidiControls) {
      const ch = String.fromCharCode(u);
      for (const name of [ch, `${ch}a`, `a${ch}`, `a${ch}b.txt`, `\uff41${ch}`]) {
        const e = thrown(() => validateFileName(name));
        expect(e.code, hex(u)).toBe('ERR_INVALID_FILE_NAME');
        expect(e.message, hex(u)).toContain(`contains a bidirectional control character (U+${hex(u)})`);
      }
    }
  });

  it('refuses a Bidi_Control character in any folder of a target path', () => {
    for (const u of bidiControls) {
      const ch = String.fromCharCode(u);
      const e = thrown(() => validateTargetPath(`/Documents/a${ch}b/c`));
      expect(e.code, hex(u)).toBe('ERR_INVALID_TARGET_PATH');
      expect(e.message, hex(u)).toContain(`folder 2 "a\\u${hex(u).toLowerCase()}b" contains a bidirectional control`);
      expect(e.message, hex(u)).toContain(`(U+${hex(u)})`);
    }
  });

  it('refuses every C0, DEL and C1 control character in any position', () => {
    const controls = [...Array(0x20).keys(), 0x7f, ...Array.from({ length: 0x20 }, (_, i) => 0x80 + i)];
    for (const cp of controls) {
      const ch = String.fromCharCode(cp);
      for (const name of [ch, `${ch}a`, `a${ch}`, `a${ch}b`]) {
        expect(codeOf(() => validateFileName(name)), `U+${cp.toString(16)}`).toBe('ERR_INVALID_FILE_NAME');
      }
    }
  });

  it('agrees with TextEncoder on the 255-byte limit for any well-formed string', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 140 }), (s) => {
        // Keep only names the other rules allow, so the length rule decides alone ('_' at both ends: no drive
        // letter, no trailing dot or space, never '.' or '..').
        const name = `_${s.replace(/[\u0000-\u001f\u007f-\u009f/\\\u2028\u2029\p{Bidi_Control}]/gu, '')}_`;
        if (name.normalize('NFKC') !== name) return;
        const ok = (() => {
          try {
            validateFileName(name);
            return true;
          } catch {
            return false;
          }
        })();
        expect(ok).toBe(utf8(name) <= MAX_NAME_BYTES);
      }),
      { numRuns: 500 },
    );
  });
});

describe('validateTargetPath', () => {
  it.each([
    ['undefined', undefined],
    ['null', null],
    ['empty', ''],
    ['slash', '/'],
    ['slashes', '///'],
  ])('treats %s as the root', (_label, value) => {
    expect(validateTargetPath(value)).toEqual([]);
  });

  it.each<[string, string[]]>([
    ['a', ['a']],
    ['/a', ['a']],
    ['a/b', ['a', 'b']],
    ['/a/b/', ['a', 'b']],
    ['a//b', ['a', 'b']],
    ['//a///b//', ['a', 'b']],
    ['/Documents/Photos 2024', ['Documents', 'Photos 2024']],
    ['/\u4e2d\u6587/.config', ['\u4e2d\u6587', '.config']],
  ])('splits %j', (input, segments) => {
    expect(validateTargetPath(input)).toEqual(segments);
  });

  const hostile: Array<[string, unknown]> = [
    ['number', 42],
    ['array', ['a', 'b']],
    ['object', { path: 'a' }],
    ['dot dot', '..'],
    ['rooted dot dot', '/..'],
    ['dot dot in the middle', 'a/../b'],
    ['dot dot at the end', 'a/b/..'],
    ['dot', '.'],
    ['dot in the middle', 'a/./b'],
    ['backslash', 'a\\b'],
    ['leading backslash', '\\a'],
    ['Windows traversal', '..\\..\\x'],
    ['drive', 'C:'],
    ['drive with folder', 'C:/Windows'],
    ['drive with backslash', 'c:\\x'],
    ['drive segment deeper down', '/a/D:foo'],
    ['NUL segment', 'a/\u0000/b'],
    ['LF in a segment', 'a/b\nc'],
    ['C1 in a segment', 'a/\u0085'],
    ['bidi override in a segment', 'a/b\u202e'],
    ['right-to-left mark in a segment', 'a/b\u200f'],
    ['Arabic letter mark in a segment', '/\u061c/b'],
    ['lone surrogate in a segment', 'a/\udc00'],
    ['one dot leaders = ".."', 'a/\u2024\u2024/b'],
    ['fullwidth solidus hides "../"', 'a\uff0f..\uff0fb'],
    ['small full stops = ".."', '/\ufe52\ufe52'],
    ['segment ending in a dot', 'a/b.'],
    ['segment ending in a space', 'a /b'],
    ['segment of 256 bytes', `a/${'x'.repeat(256)}`],
    ['33 folders', 'a/'.repeat(33)],
    ['4097 ASCII bytes', 'x'.repeat(4097)],
    // 21 folders of 100 two-byte chars: 2121 UTF-16 units but 4221 UTF-8 bytes.
    ['4221 UTF-8 bytes in 2121 UTF-16 units', `${'\u00e9'.repeat(100)}/`.repeat(21)],
  ];

  it.each(hostile)('refuses %s', (_label, value) => {
    expect(codeOf(() => validateTargetPath(value))).toBe('ERR_INVALID_TARGET_PATH');
  });

  it('accepts exactly 32 folders and exactly 4096 bytes', () => {
    expect(validateTargetPath('a/'.repeat(32))).toHaveLength(32);
    const seg = 'x'.repeat(127);
    const p = `/${Array(32).fill(seg).join('/')}`; // 1 + 32 * 127 + 31 = 4096
    expect(p.length).toBe(4096);
    expect(validateTargetPath(p)).toHaveLength(32);
    expect(codeOf(() => validateTargetPath(`${p}y`))).toBe('ERR_INVALID_TARGET_PATH');
  });

  it('names the bad folder by position', () => {
    expect(thrown(() => validateTargetPath('/a/b/../c')).message).toContain('folder 3 ".."');
  });
});

describe('parseChunkNumber', () => {
  it.each<[string, number]>([
    ['0', 0],
    ['7', 7],
    ['007', 7],
    ['4294967296', 4294967296],
    ['9007199254740991', Number.MAX_SAFE_INTEGER],
  ])('reads %j', (raw, n) => {
    expect(parseChunkNumber(raw)).toBe(n);
  });

  it.each<[string, string | null | undefined]>([
    ['null', null],
    ['undefined', undefined],
    ['empty', ''],
    ['negative', '-1'],
    ['plus sign', '+1'],
    ['fraction', '1.5'],
    ['integral fraction', '1.0'],
    ['NaN', 'NaN'],
    ['Infinity', 'Infinity'],
    ['exponent', '1e3'],
    ['leading space', ' 1'],
    ['trailing space', '1 '],
    ['trailing newline', '1\n'],
    ['hex', '0x10'],
    ['binary', '0b1'],
    ['numeric separator', '1_000'],
    ['Arabic-Indic digit', '\u0661'],
    ['fullwidth digit', '\uff11'],
    ['MAX_SAFE_INTEGER + 1', '9007199254740992'],
    ['17 digits', '99999999999999999'],
    ['17 chars zero-padded', '00000000000000001'],
    ['huge', '9'.repeat(400)],
  ])('refuses %s', (_label, raw) => {
    expect(codeOf(() => parseChunkNumber(raw))).toBe('ERR_INVALID_CHUNK_NUMBER');
  });
});

describe('checkChunkInRange', () => {
  it('accepts 0..totalChunks-1', () => {
    expect(() => checkChunkInRange(0, 1)).not.toThrow();
    expect(() => checkChunkInRange(4, 5)).not.toThrow();
  });

  it.each<[number, number]>([
    [1, 1],
    [5, 5],
    [0, 0],
    [Number.MAX_SAFE_INTEGER, 10],
  ])('refuses chunk %d of %d with ERR_CHUNK_OUT_OF_RANGE', (chunk, total) => {
    const e = thrown(() => checkChunkInRange(chunk, total));
    expect(e.code).toBe('ERR_CHUNK_OUT_OF_RANGE');
    expect(e.details).toEqual({ chunkNumber: chunk, totalChunks: total });
  });

  it.each([-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53])('refuses %d as not a chunk number', (chunk) => {
    expect(codeOf(() => checkChunkInRange(chunk, 10))).toBe('ERR_INVALID_CHUNK_NUMBER');
  });
});

describe('totalChunksFor', () => {
  it.each<[number, number, number]>([
    [0, 5, 0],
    [1, 5, 1],
    [5, 5, 1],
    [6, 5, 2],
    [10 * 2 ** 20, 4 * 2 ** 20, 3],
    [Number.MAX_SAFE_INTEGER, 1, Number.MAX_SAFE_INTEGER],
    [Number.MAX_SAFE_INTEGER, 3, 3002399751580331],
    [Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER - 1, 2],
  ])('ceil(%d / %d) = %d', (size, chunk, total) => {
    expect(totalChunksFor(size, chunk)).toBe(total);
  });

  it('agrees with exact BigInt arithmetic for any safe size', () => {
    fc.assert(
      fc.property(fc.maxSafeNat(), fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), (size, chunk) => {
        const exact = (BigInt(size) + BigInt(chunk) - 1n) / BigInt(chunk);
        expect(totalChunksFor(size, chunk)).toBe(Number(exact));
      }),
      { numRuns: 2000 },
    );
  });
});

describe('parseInitRequest', () => {
  const MiB = 2 ** 20;
  const limits: InitLimits = {
    defaultChunkSize: 4 * MiB,
    minChunkSize: 64 * 1024,
    maxChunkSize: 64 * MiB,
    maxFileSize: 2 ** 40,
    maxChunks: 100_000,
  };

  it('fills in the default chunk size and computes totalChunks', () => {
    expect(parseInitRequest({ fileName: 'a.bin', fileSize: 10 * MiB }, limits)).toEqual({
      fileName: 'a.bin',
      fileSize: 10 * MiB,
      chunkSize: 4 * MiB,
      totalChunks: 3,
      targetPath: [],
    });
  });

  it('takes every field a PSWebHost client sends and ignores unknown ones', () => {
    const r = parseInitRequest(
      {
        action: 'init',
        fileName: 'largefile.zip',
        fileSize: 104857600,
        chunkSize: 26214400,
        totalChunks: 4,
        targetPath: '/Documents/Archive',
        uploadMethod: 'websocket',
        fingerprint: '104857600:1733611234567',
        somethingElse: { nested: true },
      },
      { ...limits, maxChunkSize: 32 * MiB },
    );
    expect(r).toEqual({
      fileName: 'largefile.zip',
      fileSize: 104857600,
      chunkSize: 26214400,
      totalChunks: 4,
      targetPath: ['Documents', 'Archive'],
      uploadMethod: 'websocket',
      fingerprint: '104857600:1733611234567',
    });
  });

  it('accepts sizes given as strings of digits', () => {
    const r = parseInitRequest({ fileName: 'a', fileSize: '10485760', chunkSize: '1048576', totalChunks: '10' }, limits);
    expect(r).toMatchObject({ fileSize: 10485760, chunkSize: 1048576, totalChunks: 10 });
  });

  it('gives a 0-byte file 0 chunks', () => {
    expect(parseInitRequest({ fileName: 'empty', fileSize: 0 }, limits).totalChunks).toBe(0);
    expect(parseInitRequest({ fileName: 'empty', fileSize: 0, totalChunks: 0 }, limits).totalChunks).toBe(0);
    expect(codeOf(() => parseInitRequest({ fileName: 'empty', fileSize: 0, totalChunks: 1 }, limits))).toBe(
      'ERR_TOTAL_CHUNKS_MISMATCH',
    );
  });

  it('treats null optional fields as absent', () => {
    const r = parseInitRequest(
      { fileName: 'a', fileSize: 5, chunkSize: null, totalChunks: null, targetPath: null, uploadMethod: null, fingerprint: null },
      limits,
    );
    expect(r).toEqual({ fileName: 'a', fileSize: 5, chunkSize: 4 * MiB, totalChunks: 1, targetPath: [] });
  });

  it('accepts the limits themselves', () => {
    const atMax = { fileName: 'a', fileSize: limits.maxFileSize, chunkSize: limits.maxChunkSize };
    expect(parseInitRequest(atMax, limits).totalChunks).toBe(2 ** 40 / (64 * MiB));
    const atMin = { fileName: 'a', fileSize: limits.minChunkSize * limits.maxChunks, chunkSize: limits.minChunkSize };
    expect(parseInitRequest(atMin, limits).totalChunks).toBe(limits.maxChunks);
    expect(parseInitRequest({ fileName: 'a', fileSize: 1, uploadMethod: 'm'.repeat(32) }, limits).uploadMethod).toBe(
      'm'.repeat(32),
    );
    expect(parseInitRequest({ fileName: 'a', fileSize: 1, fingerprint: 'f'.repeat(128) }, limits).fingerprint).toBe('f'.repeat(128));
  });

  const ok = { fileName: 'a.bin', fileSize: 10 * MiB };
  // [label, body, code, details.field]
  const bad: Array<[string, unknown, ErrorCode, string]> = [
    ['null body', null, 'ERR_INVALID_FIELD', 'body'],
    ['array body', [ok], 'ERR_INVALID_FIELD', 'body'],
    ['string body', 'fileName=a', 'ERR_INVALID_FIELD', 'body'],
    ['number body', 42, 'ERR_INVALID_FIELD', 'body'],
    ['missing fileName', { fileSize: 1 }, 'ERR_INVALID_FILE_NAME', 'fileName'],
    ['traversing fileName', { ...ok, fileName: '../x' }, 'ERR_INVALID_FILE_NAME', 'fileName'],
    ['fileName with a bidi control', { ...ok, fileName: 'invoice\u200ffdp.exe' }, 'ERR_INVALID_FILE_NAME', 'fileName'],
    ['fileName bad only after NFKC', { ...ok, fileName: '\u2024\u2024' }, 'ERR_INVALID_FILE_NAME', 'fileName'],
    ['traversing targetPath', { ...ok, targetPath: '/a/../../etc' }, 'ERR_INVALID_TARGET_PATH', 'targetPath'],
    ['non-string targetPath', { ...ok, targetPath: ['a'] }, 'ERR_INVALID_TARGET_PATH', 'targetPath'],
    ['targetPath of 33 folders', { ...ok, targetPath: 'a/'.repeat(33) }, 'ERR_INVALID_TARGET_PATH', 'targetPath'],
    ['targetPath over 4096 bytes', { ...ok, targetPath: 'x'.repeat(4097) }, 'ERR_INVALID_TARGET_PATH', 'targetPath'],
    ['missing fileSize', { fileName: 'a' }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['null fileSize', { fileName: 'a', fileSize: null }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['negative fileSize', { ...ok, fileSize: -1 }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['fractional fileSize', { ...ok, fileSize: 1.5 }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['NaN fileSize', { ...ok, fileSize: Number.NaN }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['Infinity fileSize', { ...ok, fileSize: Number.POSITIVE_INFINITY }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['unsafe fileSize', { ...ok, fileSize: 2 ** 53 }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['unsafe fileSize string', { ...ok, fileSize: '9007199254740992' }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['exponent fileSize string', { ...ok, fileSize: '1e3' }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['negative fileSize string', { ...ok, fileSize: '-1' }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['empty fileSize string', { ...ok, fileSize: '' }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['padded fileSize string', { ...ok, fileSize: ' 10' }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['boolean fileSize', { ...ok, fileSize: true }, 'ERR_INVALID_FILE_SIZE', 'fileSize'],
    ['fileSize over the maximum', { ...ok, fileSize: 2 ** 40 + 1 }, 'ERR_FILE_TOO_LARGE', 'fileSize'],
    ['chunkSize 0', { ...ok, chunkSize: 0 }, 'ERR_INVALID_CHUNK_SIZE', 'chunkSize'],
    ['chunkSize under the minimum', { ...ok, chunkSize: 64 * 1024 - 1 }, 'ERR_INVALID_CHUNK_SIZE', 'chunkSize'],
    ['chunkSize over the maximum', { ...ok, chunkSize: 64 * MiB + 1 }, 'ERR_INVALID_CHUNK_SIZE', 'chunkSize'],
    ['fractional chunkSize', { ...ok, chunkSize: 1.5 * MiB + 0.5 }, 'ERR_INVALID_CHUNK_SIZE', 'chunkSize'],
    ['negative chunkSize', { ...ok, chunkSize: -MiB }, 'ERR_INVALID_CHUNK_SIZE', 'chunkSize'],
    ['word chunkSize', { ...ok, chunkSize: 'big' }, 'ERR_INVALID_CHUNK_SIZE', 'chunkSize'],
    ['boolean chunkSize', { ...ok, chunkSize: true }, 'ERR_INVALID_CHUNK_SIZE', 'chunkSize'],
    ['totalChunks off by one', { ...ok, totalChunks: 4 }, 'ERR_TOTAL_CHUNKS_MISMATCH', 'totalChunks'],
    ['totalChunks as floor', { ...ok, totalChunks: 2 }, 'ERR_TOTAL_CHUNKS_MISMATCH', 'totalChunks'],
    ['totalChunks string mismatch', { ...ok, totalChunks: '2' }, 'ERR_TOTAL_CHUNKS_MISMATCH', 'totalChunks'],
    ['word totalChunks', { ...ok, totalChunks: 'three' }, 'ERR_INVALID_FIELD', 'totalChunks'],
    ['negative totalChunks', { ...ok, totalChunks: -3 }, 'ERR_INVALID_FIELD', 'totalChunks'],
    ['fractional totalChunks', { ...ok, totalChunks: 2.5 }, 'ERR_INVALID_FIELD', 'totalChunks'],
    [
      'one chunk too many',
      { fileName: 'a', fileSize: 64 * 1024 * 100_000 + 1, chunkSize: 64 * 1024 },
      'ERR_TOO_MANY_CHUNKS',
      'chunkSize',
    ],
    ['uploadMethod not a string', { ...ok, uploadMethod: 42 }, 'ERR_INVALID_FIELD', 'uploadMethod'],
    ['uploadMethod of 33 chars', { ...ok, uploadMethod: 'm'.repeat(33) }, 'ERR_INVALID_FIELD', 'uploadMethod'],
    ['uploadMethod with a newline', { ...ok, uploadMethod: 'put\nX-Admin: 1' }, 'ERR_INVALID_FIELD', 'uploadMethod'],
    ['uploadMethod not ASCII', { ...ok, uploadMethod: 'w\u00e9b' }, 'ERR_INVALID_FIELD', 'uploadMethod'],
    ['fingerprint not a string', { ...ok, fingerprint: 10485760 }, 'ERR_INVALID_FIELD', 'fingerprint'],
    ['empty fingerprint', { ...ok, fingerprint: '' }, 'ERR_INVALID_FIELD', 'fingerprint'],
    ['fingerprint of 129 chars', { ...ok, fingerprint: 'f'.repeat(129) }, 'ERR_INVALID_FIELD', 'fingerprint'],
    ['fingerprint with a control character', { ...ok, fingerprint: '10:1\u0000' }, 'ERR_INVALID_FIELD', 'fingerprint'],
    ['fingerprint not ASCII', { ...ok, fingerprint: '10:\u00e9' }, 'ERR_INVALID_FIELD', 'fingerprint'],
  ];

  it.each(bad)('refuses %s, naming the field', (_label, body, code, field) => {
    const e = thrown(() => parseInitRequest(body, limits));
    expect(e.code).toBe(code);
    expect(e.details).toEqual({ field });
  });

  it('names fileName and targetPath with the same message validateFileName and validateTargetPath give', () => {
    const name = thrown(() => parseInitRequest({ ...ok, fileName: 'a\u061cb.txt' }, limits));
    expect(name.message).toBe(thrown(() => validateFileName('a\u061cb.txt')).message);
    const target = thrown(() => parseInitRequest({ ...ok, targetPath: 'a/../b' }, limits));
    expect(target.message).toBe(thrown(() => validateTargetPath('a/../b')).message);
  });

  it('leaves validateFileName and validateTargetPath alone without a field (they also check names no client sent)', () => {
    expect(thrown(() => validateFileName('../x')).details).toBeUndefined();
    expect(thrown(() => validateTargetPath('a/../b')).details).toBeUndefined();
  });

  it('reports the mismatch with both numbers', () => {
    expect(thrown(() => parseInitRequest({ ...ok, totalChunks: 4 }, limits)).message).toBe(
      'totalChunks is 4 but ceil(10485760 / 4194304) is 3',
    );
  });
});

describe('parseIdempotencyKey', () => {
  it('takes 1 to 128 printable ASCII characters, bare or quoted; no header is no key', () => {
    expect(parseIdempotencyKey(undefined)).toBeUndefined();
    expect(parseIdempotencyKey('8e03978e-40d5-43e8-bc93-6894a57f9324')).toBe('8e03978e-40d5-43e8-bc93-6894a57f9324');
    expect(parseIdempotencyKey('"8e03978e"')).toBe('8e03978e');
    expect(parseIdempotencyKey('a b')).toBe('a b');
    expect(parseIdempotencyKey('k'.repeat(128))).toBe('k'.repeat(128));
    expect(parseIdempotencyKey(`"${'k'.repeat(128)}"`)).toBe('k'.repeat(128));
  });

  it('refuses anything else with ERR_INVALID_FIELD naming the header', () => {
    for (const bad of ['', '""', '   ', 'k'.repeat(129), 'tab\there', 'nul\0', 'del\x7f', 'caf\u00e9', 'line\nbreak', '\ufffd']) {
      const e = thrownUploadError(() => parseIdempotencyKey(bad));
      expect(e.code, JSON.stringify(bad)).toBe('ERR_INVALID_FIELD');
      expect(e.details).toEqual({ field: 'Idempotency-Key' });
      expect(e.message).toBe('Idempotency-Key must be 1 to 128 printable ASCII characters');
    }
  });
});
