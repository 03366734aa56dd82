/**
 * Checks on everything a client names or counts: file names, target folders, chunk numbers and the init request.
 *
 * These run before any path is joined or any offset reaches `fs.write` (durability.md invariant 10: bad input
 * writes nothing). Each check throws an `UploadError` with a specific message; a message quotes at most a short,
 * escaped excerpt of what the client sent, so it cannot carry control characters or megabytes into logs and replies.
 *
 * Pure: no `node:*`, runs in the browser client too (which validates before it uploads).
 */

import { UploadError, type ErrorCode } from './errors.js';

/** ext4, xfs, btrfs and NTFS all cap one name at 255 bytes (NTFS: 255 UTF-16 units, never fewer than 255 bytes). */
export const MAX_NAME_BYTES = 255;
export const MAX_TARGET_DEPTH = 32;
export const MAX_TARGET_PATH_BYTES = 4096;
export const MAX_UPLOAD_METHOD_LENGTH = 32;
/** Longest `fingerprint` an init may carry (printable ASCII): the client's identity of its source, echoed in status. */
export const MAX_FINGERPRINT_LENGTH = 128;
/** Longest `Idempotency-Key` header an init may carry (printable ASCII, without its quotes). */
export const MAX_IDEMPOTENCY_KEY_LENGTH = 128;

// --- names -------------------------------------------------------------------------------------------------------

/** How many characters of a rejected value a message may quote. */
const EXCERPT_CHARS = 24;

/** The rejected value, truncated and with everything outside printable ASCII written as \uXXXX. */
function excerpt(s: string): string {
  let out = '';
  const n = Math.min(s.length, EXCERPT_CHARS);
  for (let i = 0; i < n; i++) {
    const u = s.charCodeAt(i);
    out += u >= 0x20 && u <= 0x7e && u !== 0x22 && u !== 0x5c ? s[i] : `\\u${u.toString(16).padStart(4, '0')}`;
  }
  return `"${out}${s.length > EXCERPT_CHARS ? '...' : ''}"`;
}

function hex4(u: number): string {
  return `U+${u.toString(16).toUpperCase().padStart(4, '0')}`;
}

/**
 * What is wrong with one name (a file name or one folder segment), or null when nothing is. The rules, and why:
 *   - '/' and '\\' would make a name a path (the server is POSIX, but '\\' separates on Windows and in SMB shares);
 *   - '.' and '..' are the directory itself and its parent;
 *   - 'C:' at the start is a drive-relative path on Windows ('C:foo' is 'foo' in drive C's current folder);
 *   - C0 controls (NUL ends a C string, LF splits log lines and headers), DEL and C1 controls (U+0080-U+009F; U+0085
 *     is a newline to some parsers) are never a legitimate part of a name;
 *   - U+2028/U+2029 are line terminators to JavaScript and log viewers, and the bidirectional controls (Unicode's
 *     Bidi_Control property: U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) reorder what a user sees, so
 *     "invoice\u202Efdp.exe" shows as "invoiceexe.pdf" (CVE-2021-42574 is the same trick in source code); the
 *     marks U+200F and U+061C do it too, by changing which way the neutral "." around them runs. Ordinary
 *     right-to-left text needs none of them;
 *   - an unpaired surrogate is not a character: UTF-8 cannot encode it, so the name written to disk (with U+FFFD in
 *     its place) would differ from the one checked, and two different names could become the same file;
 *   - more than 255 bytes in UTF-8 does not fit one directory entry;
 *   - a trailing '.' or ' ' is stripped by Windows and SMB ("a." and "a" become one file), and a trailing space
 *     hides from the user ("report.pdf " looks like "report.pdf"). PSWebHost runs on Windows, so such a name could
 *     not even exist there. Leading dots (".env") and inner spaces are fine.
 */
function nameProblem(s: string): string | null {
  if (s.length === 0) return 'is empty';
  // utf8 >= UTF-16 length, so this bounds the scan below on a hostile megabyte-long string.
  if (s.length > MAX_NAME_BYTES) return `is longer than ${MAX_NAME_BYTES} bytes in UTF-8`;
  let bytes = 0;
  for (let i = 0; i < s.length; i++) {
    const u = s.charCodeAt(i);
    if (u < 0x80) {
      if (u < 0x20 || u === 0x7f) return `contains a control character (${hex4(u)})`;
      if (u === 0x2f) return 'contains "/"';
      if (u === 0x5c) return 'contains "\\"';
      bytes += 1;
    } else if (u < 0x800) {
      if (u <= 0x9f) return `contains a control character (${hex4(u)})`;
      if (u === 0x061c) return `contains a bidirectional control character (${hex4(u)})`;
      bytes += 2;
    } else if (u >= 0xd800 && u <= 0xdfff) {
      const next = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      if (u >= 0xdc00 || next < 0xdc00 || next > 0xdfff) return 'contains an unpaired surrogate (not well-formed UTF-16)';
      bytes += 4;
      i++;
    } else {
      if (u === 0x2028 || u === 0x2029) return `contains a line separator (${hex4(u)})`;
      if (u === 0x200e || u === 0x200f || (u >= 0x202a && u <= 0x202e) || (u >= 0x2066 && u <= 0x2069)) {
        return `contains a bidirectional control character (${hex4(u)})`;
      }
      bytes += 3;
    }
  }
  if (bytes > MAX_NAME_BYTES) return `is longer than ${MAX_NAME_BYTES} bytes in UTF-8`;
  if (s === '.' || s === '..') return 'is "." or ".."';
  if (/^[A-Za-z]:/.test(s)) return 'starts with a drive letter ("C:")';
  const last = s.charCodeAt(s.length - 1);
  if (last === 0x2e || last === 0x20) return 'ends with "." or " "';
  return null;
}

/**
 * `nameProblem` of the name and of its NFKC form. NFKC folds look-alikes into the ASCII they imitate: U+FF0F
 * fullwidth solidus is '/', U+2024 one dot leader is '.', so U+2024 U+2024 is '..', U+FE52 small full stop is '.',
 * U+FF1A fullwidth colon is ':'. The name is stored as sent, but any layer that normalizes later (a macOS or
 * Windows share, a sync tool, PSWebHost's .NET side) would otherwise turn a harmless-looking name into a path.
 */
function fullNameProblem(s: string): string | null {
  const direct = nameProblem(s);
  if (direct !== null) return direct;
  const folded = s.normalize('NFKC');
  if (folded === s) return null;
  const after = nameProblem(folded);
  return after === null ? null : `${after} after Unicode NFKC normalization`;
}

/**
 * Returns `name` unchanged when it is a safe single file name, or throws ERR_INVALID_FILE_NAME saying why.
 * See `nameProblem` for the rules. The error names no field: this also checks names no client sent (a hook's
 * placement, a meta read back at start); `parseInitRequest` adds `details.field`.
 */
export function validateFileName(name: unknown): string {
  return checkFileName(name);
}

/** `validateFileName`, with `details` (PROTOCOL.md: `data.field`) on the error it throws. */
function checkFileName(name: unknown, details?: Record<string, unknown>): string {
  if (typeof name !== 'string') throw new UploadError('ERR_INVALID_FILE_NAME', 'fileName must be a string', details);
  const problem = fullNameProblem(name);
  if (problem !== null) {
    throw new UploadError('ERR_INVALID_FILE_NAME', `Invalid file name ${excerpt(name)}: ${problem}`, details);
  }
  return name;
}

/**
 * The folder segments of a target path, relative to the upload root. The path is root-relative whether or not it
 * starts with '/' (the PSWebHost explorer sends '/a/b'); '' / '/' / undefined / null mean the root (JSON has no
 * undefined, so a client may send null for "absent"). Empty segments ('a//b', a trailing '/') collapse; every other
 * segment obeys the file-name rules, so '..', '.', '\\', drive letters and control characters are refused rather
 * than resolved. At most 32 segments and 4096 bytes in UTF-8. Throws ERR_INVALID_TARGET_PATH, naming no field
 * (as `validateFileName`).
 */
export function validateTargetPath(p: unknown): string[] {
  return checkTargetPath(p);
}

/** `validateTargetPath`, with `details` (PROTOCOL.md: `data.field`) on the error it throws. */
function checkTargetPath(p: unknown, details?: Record<string, unknown>): string[] {
  if (p === undefined || p === null) return [];
  const invalid = (message: string): UploadError => new UploadError('ERR_INVALID_TARGET_PATH', message, details);
  if (typeof p !== 'string') throw invalid('targetPath must be a string');
  // UTF-16 length <= UTF-8 length, so this refuses an oversized string before any work proportional to it.
  if (p.length > MAX_TARGET_PATH_BYTES || utf8Length(p) > MAX_TARGET_PATH_BYTES) {
    throw invalid(`targetPath is longer than ${MAX_TARGET_PATH_BYTES} bytes`);
  }
  const segments = p.split('/').filter((s) => s !== '');
  if (segments.length > MAX_TARGET_DEPTH) throw invalid(`targetPath has more than ${MAX_TARGET_DEPTH} folders`);
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    const problem = fullNameProblem(seg);
    if (problem !== null) throw invalid(`Invalid target path: folder ${i + 1} ${excerpt(seg)} ${problem}`);
  }
  return segments;
}

/** UTF-8 length of a string, counting an unpaired surrogate as the 3 bytes of its U+FFFD replacement. */
function utf8Length(s: string): number {
  let bytes = 0;
  for (let i = 0; i < s.length; i++) {
    const u = s.charCodeAt(i);
    if (u < 0x80) bytes += 1;
    else if (u < 0x800) bytes += 2;
    else if (u >= 0xd800 && u <= 0xdbff && i + 1 < s.length) {
      const next = s.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}

// --- numbers -----------------------------------------------------------------------------------------------------

/**
 * Decimal digits only, at most 16 of them (Number.MAX_SAFE_INTEGER has 16). Refuses what Number() and parseInt()
 * would quietly accept: '', ' 1', '1.5', '1e3', '0x10', '-1', '+1', 'Infinity'.
 */
const DIGITS = /^[0-9]{1,16}$/;

/**
 * A chunk number from a query string or header. Only non-negative decimal integers up to Number.MAX_SAFE_INTEGER;
 * anything else is ERR_INVALID_CHUNK_NUMBER. The range against totalChunks is the caller's `checkChunkInRange`.
 */
export function parseChunkNumber(raw: string | null | undefined): number {
  if (typeof raw !== 'string' || !DIGITS.test(raw)) {
    const shown = typeof raw === 'string' ? ` ${excerpt(raw)}` : '';
    throw new UploadError('ERR_INVALID_CHUNK_NUMBER', `Chunk number${shown} must be a non-negative decimal integer`);
  }
  const n = Number(raw);
  if (!Number.isSafeInteger(n)) {
    throw new UploadError('ERR_INVALID_CHUNK_NUMBER', `Chunk number ${excerpt(raw)} is too large`);
  }
  return n;
}

/**
 * Throws ERR_CHUNK_OUT_OF_RANGE unless 0 <= chunk < totalChunks, and ERR_INVALID_CHUNK_NUMBER when `chunk` is not
 * a non-negative safe integer at all (a number decoded from JSON or msgpack can be anything). This is the check
 * that keeps `chunk * chunkSize` a valid position inside the file before it reaches `fs.write`.
 */
export function checkChunkInRange(chunk: number, totalChunks: number): void {
  if (!Number.isSafeInteger(chunk) || chunk < 0) {
    throw new UploadError('ERR_INVALID_CHUNK_NUMBER', 'Chunk number must be a non-negative integer');
  }
  if (chunk >= totalChunks) {
    throw new UploadError(
      'ERR_CHUNK_OUT_OF_RANGE',
      totalChunks === 0
        ? `Chunk ${chunk} is out of range: this upload has no chunks`
        : `Chunk ${chunk} is out of range: the last chunk is ${totalChunks - 1}`,
      { chunkNumber: chunk, totalChunks },
    );
  }
}

/**
 * ceil(fileSize / chunkSize), exact for safe integers: with fileSize = k * chunkSize + r and 0 < r < chunkSize, the
 * quotient k + r/chunkSize is at least 1/chunkSize above k, more than half an ulp of k whenever fileSize < 2^53, so
 * rounding cannot land it on k (and r = 0 divides exactly). The property test checks this against BigInt.
 */
export function totalChunksFor(fileSize: number, chunkSize: number): number {
  return Math.ceil(fileSize / chunkSize);
}

// --- init --------------------------------------------------------------------------------------------------------

/** Server limits that bound an init request (resolved and checked by the engine's options). */
export interface InitLimits {
  defaultChunkSize: number;
  minChunkSize: number;
  maxChunkSize: number;
  maxFileSize: number;
  maxChunks: number;
}

/** A checked init request. */
export interface InitRequest {
  fileName: string;
  fileSize: number;
  chunkSize: number;
  totalChunks: number;
  /** Folder segments under the upload root; [] is the root. */
  targetPath: string[];
  uploadMethod?: string;
  fingerprint?: string;
}

/**
 * A count from JSON: a non-negative safe integer, given as a number or as a string of decimal digits. Strings are
 * accepted because some clients serialize 64-bit sizes as strings (JSON numbers past 2^53 lose precision in
 * JavaScript and are quoted by .NET and Java serializers set up for that); PSWebHost's own client sends numbers.
 * Returns undefined when the value is not such a count.
 */
function readCount(value: unknown): number | undefined {
  let n: number;
  if (typeof value === 'number') n = value;
  else if (typeof value === 'string' && DIGITS.test(value)) n = Number(value);
  else return undefined;
  if (!Number.isSafeInteger(n) || n < 0) return undefined;
  return n === 0 ? 0 : n; // -0 is a safe integer; make it +0 so it prints and compares as 0
}

function fail(code: ErrorCode, field: string, message: string): never {
  throw new UploadError(code, message, { field });
}

/** Printable ASCII only: the label is logged and echoed in status, so it must not carry control characters. */
const UPLOAD_METHOD = /^[\x20-\x7e]*$/;
/** The same rule for `fingerprint`, which must also say something (at least one character). */
const FINGERPRINT = /^[\x20-\x7e]+$/;

/** An optional text field of an init body (absent or null: undefined), checked against `rule` and `max` length. */
function printable(b: Record<string, unknown>, field: string, rule: RegExp, expected: string, max: number): string | undefined {
  const v = b[field];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v.length > max || !rule.test(v)) fail('ERR_INVALID_FIELD', field, `${field} must be ${expected}`);
  return v;
}

/** The init body names its chunk size (absent or null: the server's default, which a restart may change). */
export function namesChunkSize(body: object): boolean {
  const v = (body as { chunkSize?: unknown }).chunkSize;
  return v !== undefined && v !== null;
}

/**
 * Checks the JSON body of an init request against `limits` and returns the upload's geometry. Unknown extra fields
 * are ignored (clients add their own). Errors, each with `details.field`:
 *   body not an object ERR_INVALID_FIELD; fileName ERR_INVALID_FILE_NAME; targetPath ERR_INVALID_TARGET_PATH;
 *   fileSize not a count ERR_INVALID_FILE_SIZE, above maxFileSize ERR_FILE_TOO_LARGE; chunkSize not an integer in
 *   [min, max] ERR_INVALID_CHUNK_SIZE; totalChunks not a count ERR_INVALID_FIELD, not ceil(fileSize / chunkSize)
 *   ERR_TOTAL_CHUNKS_MISMATCH; more than maxChunks ERR_TOO_MANY_CHUNKS; uploadMethod or fingerprint ERR_INVALID_FIELD.
 */
export function parseInitRequest(body: unknown, limits: InitLimits): InitRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    fail('ERR_INVALID_FIELD', 'body', 'Request body must be a JSON object');
  }
  const b = body as Record<string, unknown>;

  const fileName = checkFileName(b.fileName, { field: 'fileName' });
  const targetPath = checkTargetPath(b.targetPath, { field: 'targetPath' });

  const fileSize = readCount(b.fileSize);
  if (fileSize === undefined) {
    fail('ERR_INVALID_FILE_SIZE', 'fileSize', 'fileSize must be a non-negative safe integer');
  }
  if (fileSize > limits.maxFileSize) {
    fail('ERR_FILE_TOO_LARGE', 'fileSize', `fileSize ${fileSize} is larger than the maximum of ${limits.maxFileSize} bytes`);
  }

  let chunkSize = limits.defaultChunkSize;
  if (namesChunkSize(b)) {
    const cs = readCount(b.chunkSize);
    if (cs === undefined || cs < limits.minChunkSize || cs > limits.maxChunkSize) {
      fail(
        'ERR_INVALID_CHUNK_SIZE',
        'chunkSize',
        `chunkSize must be an integer from ${limits.minChunkSize} to ${limits.maxChunkSize}`,
      );
    }
    chunkSize = cs;
  }

  const totalChunks = totalChunksFor(fileSize, chunkSize);
  if (b.totalChunks !== undefined && b.totalChunks !== null) {
    const sent = readCount(b.totalChunks);
    if (sent === undefined) fail('ERR_INVALID_FIELD', 'totalChunks', 'totalChunks must be a non-negative integer');
    if (sent !== totalChunks) {
      fail(
        'ERR_TOTAL_CHUNKS_MISMATCH',
        'totalChunks',
        `totalChunks is ${sent} but ceil(${fileSize} / ${chunkSize}) is ${totalChunks}`,
      );
    }
  }
  if (totalChunks > limits.maxChunks) {
    fail(
      'ERR_TOO_MANY_CHUNKS',
      'chunkSize',
      `${totalChunks} chunks is more than the maximum of ${limits.maxChunks}; use a larger chunkSize`,
    );
  }

  const request: InitRequest = { fileName, fileSize, chunkSize, totalChunks, targetPath };
  const uploadMethod = printable(b, 'uploadMethod', UPLOAD_METHOD, `a string of at most ${MAX_UPLOAD_METHOD_LENGTH} printable ASCII characters`, MAX_UPLOAD_METHOD_LENGTH);
  if (uploadMethod !== undefined) request.uploadMethod = uploadMethod;
  const fingerprint = printable(b, 'fingerprint', FINGERPRINT, `a string of 1 to ${MAX_FINGERPRINT_LENGTH} printable ASCII characters`, MAX_FINGERPRINT_LENGTH);
  if (fingerprint !== undefined) request.fingerprint = fingerprint;
  return request;
}

/**
 * The `Idempotency-Key` header of an init (absent: undefined): 1 to MAX_IDEMPOTENCY_KEY_LENGTH printable ASCII
 * characters, bare or as a quoted string (`"8e03978e-..."`, the form of the IETF httpapi draft). Anything else is
 * ERR_INVALID_FIELD (field `Idempotency-Key`): a key the server cannot keep must not be dropped in silence, or the
 * client would believe its retries safe.
 */
export function parseIdempotencyKey(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const key = header.length >= 2 && header.startsWith('"') && header.endsWith('"') ? header.slice(1, -1) : header;
  if (key.length > MAX_IDEMPOTENCY_KEY_LENGTH || !FINGERPRINT.test(key) || key.trim() === '') {
    fail('ERR_INVALID_FIELD', 'Idempotency-Key', `Idempotency-Key must be 1 to ${MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII characters`);
  }
  return key;
}
