import { readFileSync } from 'node:fs';

import { pack, unpack } from 'msgpackr';
import { describe, expect, it, vi } from 'vitest';

import {
  FRAME_LENGTH_SIZE,
  MAX_FRAME_HEADER,
  MAX_PS_CONTROL_LENGTH,
  PS_HEADER_SIZE,
  PsHeaderReader,
  decodeClientFrame,
  decodePsHeader,
  decodeServerFrame,
  encodeFrame,
  encodeFramePrefix,
  encodePsControl,
  encodePsHeader,
  parsePsControl,
  type PsHeader,
} from '../../src/protocol/codec.js';
import { ERROR_CODES, UploadError, type ErrorCode } from '../../src/protocol/errors.js';
import * as messages from '../../src/protocol/messages.js';
import {
  CLOSE_GOING_AWAY,
  CLOSE_INTERNAL,
  CLOSE_POLICY,
  CLOSE_PROTOCOL_ERROR,
  CLOSE_TOO_MANY_CONNECTIONS,
  CLOSE_TRY_AGAIN_LATER,
  CLOSE_UPLOAD_CANCELLED,
  CLOSE_UPLOAD_EXPIRED,
  CLOSE_UPLOAD_FAILED,
  CLOSE_UPLOAD_NOT_FOUND,
  closeCodeForError,
  type ClientMessage,
  type PsClientControl,
  type ServerMessage,
} from '../../src/protocol/messages.js';
import { thrownUploadError } from '../fixtures/thrown.js';

const thrown = thrownUploadError;

function codeOf(fn: () => unknown): ErrorCode {
  return thrown(fn).code;
}

/** A frame from raw header bytes: uint16 LE length, the bytes, the payload. */
function rawFrame(header: ArrayLike<number>, payload: ArrayLike<number> = [], declaredLength = header.length): Uint8Array {
  const out = new Uint8Array(2 + header.length + payload.length);
  out[0] = declaredLength & 0xff;
  out[1] = declaredLength >>> 8;
  out.set(header, 2);
  out.set(payload, 2 + header.length);
  return out;
}

/** A frame whose header is `value` packed by msgpackr's default (map16) encoder: a second, independent encoder. */
function frameOf(value: unknown, payload: ArrayLike<number> = []): Uint8Array {
  return rawFrame(pack(value), payload);
}

const bytes = (...b: number[]): Uint8Array => Uint8Array.from(b);
const range = (n: number, start = 0): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (start + i * 7) & 0xff);

// --- PSWebHost PUT body header -------------------------------------------------------------------------------------

describe('PS PUT body header', () => {
  it('lays out uint16 (0), uint32 chunk, uint32 remaining, little-endian', () => {
    expect([...encodePsHeader({ chunkNumber: 0x01020304, bytesRemaining: 0xa0b0c0d0 })]).toEqual([
      0, 0, 0x04, 0x03, 0x02, 0x01, 0xd0, 0xc0, 0xb0, 0xa0,
    ]);
  });

  it('reads what PSWebHost clients write, ignoring the random first two bytes', () => {
    // DataView with littleEndian = true, as the PSWebHost explorer builds it.
    const buf = new ArrayBuffer(10);
    const v = new DataView(buf);
    v.setUint16(0, 0xbeef, true);
    v.setUint32(2, 3, true);
    v.setUint32(6, 78643200, true);
    expect(decodePsHeader(new Uint8Array(buf))).toEqual({ chunkNumber: 3, bytesRemaining: 78643200 });
  });

  it('reads the top bit as unsigned', () => {
    expect(decodePsHeader(bytes(1, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff))).toEqual({
      chunkNumber: 0xffffffff,
      bytesRemaining: 0xffffffff,
    });
  });

  it('saturates bytesRemaining past 32 bits instead of wrapping', () => {
    const h = decodePsHeader(encodePsHeader({ chunkNumber: 1, bytesRemaining: 5 * 2 ** 32 + 7 }));
    expect(h.bytesRemaining).toBe(0xffffffff);
  });

  it.each([
    { chunkNumber: -1, bytesRemaining: 0 },
    { chunkNumber: 2 ** 32, bytesRemaining: 0 },
    { chunkNumber: 1.5, bytesRemaining: 0 },
    { chunkNumber: Number.NaN, bytesRemaining: 0 },
    { chunkNumber: 0, bytesRemaining: -1 },
    { chunkNumber: 0, bytesRemaining: 0.5 },
  ])('refuses to encode %j', (h) => {
    expect(() => encodePsHeader(h)).toThrow(RangeError);
  });

  it('refuses a body shorter than the header', () => {
    expect(codeOf(() => decodePsHeader(new Uint8Array(9)))).toBe('ERR_CHUNK_HEADER_INVALID');
  });

  describe('PsHeaderReader', () => {
    const header: PsHeader = { chunkNumber: 0xdeadbeef, bytesRemaining: 12345 };
    const data = range(23, 3);
    const input = new Uint8Array([...encodePsHeader(header), ...data]);

    /** Feeds `pieces` and returns the header and every body byte that followed it. */
    function feed(pieces: Uint8Array[]): { header: PsHeader | null; body: number[] } {
      const reader = new PsHeaderReader();
      let got: PsHeader | null = null;
      const body: number[] = [];
      for (const piece of pieces) {
        if (got === null) {
          const r = reader.push(piece);
          if (r !== null) {
            got = r.header;
            body.push(...r.rest);
          }
        } else body.push(...piece);
      }
      reader.end();
      return { header: got, body };
    }

    const expected = { header, body: [...data] };

    it('gives the same result for every split into two pieces (including empty ones)', () => {
      for (let i = 0; i <= input.length; i++) {
        expect(feed([input.subarray(0, i), input.subarray(i)]), `split at ${i}`).toEqual(expected);
      }
    });

    it('gives the same result for every split into three pieces', () => {
      for (let i = 0; i <= input.length; i++) {
        for (let j = i; j <= input.length; j++) {
          const pieces = [input.subarray(0, i), input.subarray(i, j), input.subarray(j)];
          expect(feed(pieces), `split at ${i}, ${j}`).toEqual(expected);
        }
      }
    });

    it('gives the same result for 1-byte pieces', () => {
      expect(feed([...input].map((b) => bytes(b)))).toEqual(expected);
    });

    it('returns the rest as a view of the completing piece, not a copy', () => {
      const reader = new PsHeaderReader();
      expect(reader.push(input.subarray(0, 4))).toBeNull();
      const piece = input.slice(4); // its own buffer
      const r = reader.push(piece)!;
      expect(r.rest.buffer).toBe(piece.buffer);
      expect(r.rest.byteOffset).toBe(6);
      piece[6] = 0x55;
      expect(r.rest[0]).toBe(0x55);
    });

    it('keeps earlier pieces safe from reuse of the caller buffer (uWS reuses it after the callback)', () => {
      const reader = new PsHeaderReader();
      const scratch = input.slice(0, 5);
      expect(reader.push(scratch)).toBeNull();
      scratch.fill(0); // the transport overwrites its buffer
      expect(reader.push(input.subarray(5))!.header).toEqual(header);
    });

    it('counts header bytes and reports done', () => {
      const reader = new PsHeaderReader();
      reader.push(input.subarray(0, 3));
      expect(reader.received).toBe(3);
      expect(reader.done).toBe(false);
      reader.push(input.subarray(3, 12));
      expect(reader.received).toBe(PS_HEADER_SIZE);
      expect(reader.done).toBe(true);
    });

    it('refuses a body that ends inside the header', () => {
      for (let n = 0; n < PS_HEADER_SIZE; n++) {
        const reader = new PsHeaderReader();
        reader.push(input.subarray(0, n));
        expect(codeOf(() => reader.end())).toBe('ERR_CHUNK_HEADER_INVALID');
      }
    });

    it('throws when pushed past the header (a caller bug)', () => {
      const reader = new PsHeaderReader();
      reader.push(input);
      expect(() => reader.push(bytes(1))).toThrow(/header is complete/);
    });
  });
});

// --- updraft.v1 -----------------------------------------------------------------------------------------------------

const clientCases: Array<[string, ClientMessage, Uint8Array]> = [
  ['chunk', { t: 'chunk', c: 0 }, range(100)],
  ['empty chunk', { t: 'chunk', c: 9 }, new Uint8Array(0)],
  ['chunk past 2^32', { t: 'chunk', c: 2 ** 40 + 3 }, range(3)],
  ['chunk with sha256', { t: 'chunk', c: 77, k: { a: 'sha256', v: 'ab'.repeat(32) } }, range(64)],
  ['chunk with crc32', { t: 'chunk', c: 1, k: { a: 'crc32', v: 'cbf43926' } }, bytes(...new TextEncoder().encode('123456789'))],
  ['part', { t: 'part', c: 3, o: 0 }, range(10)],
  ['part at an offset past 2^32', { t: 'part', c: 2 ** 33, o: 2 ** 32 + 4096 }, range(1)],
  ['status', { t: 'status' }, new Uint8Array(0)],
  ['cancel', { t: 'cancel' }, new Uint8Array(0)],
];

const serverCases: Array<[string, ServerMessage]> = [
  [
    'hello, fresh',
    { t: 'hello', v: 1, guid: 'g-1', chunkSize: 4, fileSize: 38, totalChunks: 10, maxFrame: 8192, window: 4, missing: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] },
  ],
  [
    'hello, resumed',
    { t: 'hello', v: 1, guid: 'g-2', chunkSize: 4, fileSize: 38, totalChunks: 10, maxFrame: 8192, window: 4, missing: [0, 3, 9] },
  ],
  [
    'hello, all received',
    { t: 'hello', v: 1, guid: 'g', chunkSize: 4, fileSize: 64, totalChunks: 16, maxFrame: 100, window: 1, missing: [] },
  ],
  [
    'hello, empty file',
    { t: 'hello', v: 1, guid: 'g', chunkSize: 1024, fileSize: 0, totalChunks: 0, maxFrame: 5000, window: 8, missing: [] },
  ],
  [
    'hello, large file',
    {
      t: 'hello',
      v: 1,
      guid: '550e8400-e29b-41d4-a716-446655440000',
      chunkSize: 8 * 2 ** 20,
      fileSize: 5 * 2 ** 40,
      totalChunks: 655360,
      maxFrame: 8 * 2 ** 20 + 4098,
      window: 16,
      missing: [655359],
    },
  ],
  ['ack', { t: 'ack', c: 7, rc: 8, rb: 8388608 }],
  ['ack, duplicate', { t: 'ack', c: 7, dup: true, rc: 8, rb: 8388608 }],
  ['ack past 4 GiB', { t: 'ack', c: 1000, rc: 1001, rb: 5e12 }],
  ['progress', { t: 'progress', rc: 3, tc: 10, rb: 12, complete: false }],
  ['progress, complete', { t: 'progress', rc: 10, tc: 10, rb: 38, complete: true }],
  ['window', { t: 'window', window: 3 }],
  ['complete', { t: 'complete', fileName: 'r\u00e9sum\u00e9.pdf', size: 38 }],
  ['error for a chunk', { t: 'error', code: 'ERR_CHECKSUM_MISMATCH', message: 'Chunk checksum does not match', c: 4, retry: true }],
  ['fatal error', { t: 'error', code: 'ERR_UPLOAD_EXPIRED', message: 'Upload expired', retry: false }],
];

describe('updraft.v1 frames', () => {
  it.each(clientCases)('round-trips client %s', (_label, message, payload) => {
    const frame = encodeFrame(message, payload);
    const decoded = decodeClientFrame(frame);
    expect(decoded.message).toEqual(message);
    expect([...decoded.payload]).toEqual([...payload]);
  });

  it.each(serverCases)('round-trips server %s', (_label, message) => {
    expect(decodeServerFrame(encodeFrame(message))).toEqual(message);
  });

  it('writes the documented bytes for a chunk frame', () => {
    // docs/PROTOCOL.md shows this frame byte for byte.
    const frame = encodeFrame({ t: 'chunk', c: 5 }, bytes(0xde, 0xad, 0xbe, 0xef));
    expect(Buffer.from(frame).toString('hex')).toBe('0c0082a174a56368756e6ba16305deadbeef');
  });

  it('writes the documented bytes for a part frame', () => {
    // docs/PROTOCOL.md shows this frame byte for byte.
    const frame = encodeFrame({ t: 'part', c: 5, o: 4 }, bytes(0xde, 0xad));
    expect(Buffer.from(frame).toString('hex')).toBe('0e0083a174a470617274a16305a16f04dead');
  });

  it('carries hello.missing as a received-chunk bitmap in the payload', () => {
    const frame = encodeFrame(serverCases[1]![1]); // 10 chunks, missing 0, 3, 9
    const h = frame[0]! | (frame[1]! << 8);
    // bit c of the bitmap (LSB first) set = chunk c received: 0b11110110, then 0b01 (bits past chunk 9 are 0).
    expect([...frame.subarray(2 + h)]).toEqual([0xf6, 0x01]);
  });

  it('returns the payload as a view of the frame (no copy)', () => {
    const frame = encodeFrame({ t: 'chunk', c: 3 }, range(50));
    const { payload } = decodeClientFrame(frame);
    const h = frame[0]! | (frame[1]! << 8);
    expect(payload.buffer).toBe(frame.buffer);
    expect(payload.byteOffset).toBe(frame.byteOffset + FRAME_LENGTH_SIZE + h);
  });

  it('decodes from an ArrayBuffer (uWS) and from a Buffer at a non-zero offset (ws)', () => {
    const frame = encodeFrame({ t: 'chunk', c: 12 }, range(10));
    const ab = frame.buffer.slice(frame.byteOffset, frame.byteOffset + frame.length) as ArrayBuffer;
    expect(decodeClientFrame(ab).message).toEqual({ t: 'chunk', c: 12 });
    const big = Buffer.alloc(frame.length + 100, 0xaa);
    big.set(frame, 37);
    const view = big.subarray(37, 37 + frame.length);
    const decoded = decodeClientFrame(view);
    expect(decoded.message).toEqual({ t: 'chunk', c: 12 });
    expect([...decoded.payload]).toEqual([...range(10)]);
  });

  it('lower-cases a checksum given in upper case', () => {
    const frame = encodeFrame({ t: 'chunk', c: 1, k: { a: 'crc32', v: 'CBF43926' } }, bytes(1));
    expect(decodeClientFrame(frame).message).toEqual({ t: 'chunk', c: 1, k: { a: 'crc32', v: 'cbf43926' } });
    expect(decodeClientFrame(frameOf({ t: 'chunk', c: 1, k: { a: 'sha256', v: 'AB'.repeat(32) } })).message).toEqual({
      t: 'chunk',
      c: 1,
      k: { a: 'sha256', v: 'ab'.repeat(32) },
    });
  });

  describe('writing into a caller buffer', () => {
    const message: ClientMessage = { t: 'chunk', c: 41, k: { a: 'crc32', v: '0badf00d' } };
    const chunk = range(1000, 5);
    const fresh = encodeFrame(message, chunk);

    it('writes the same bytes into a larger target and returns a view of it', () => {
      const target = new Uint8Array(4096).fill(0xee);
      const frame = encodeFrame(message, chunk, target);
      expect(frame.buffer).toBe(target.buffer);
      expect(frame.byteOffset).toBe(0);
      expect([...frame]).toEqual([...fresh]);
    });

    it('matches encodeFramePrefix followed by the payload', () => {
      const prefix = encodeFramePrefix(message);
      expect([...prefix, ...chunk]).toEqual([...fresh]);
    });

    it('does not copy a payload that already sits right after the prefix', () => {
      const prefix = encodeFramePrefix(message);
      const target = new Uint8Array(prefix.length + chunk.length + 10);
      target.set(chunk, prefix.length); // as if read from disk straight into the frame buffer
      const payload = target.subarray(prefix.length, prefix.length + chunk.length);
      const set = vi.spyOn(Uint8Array.prototype, 'set');
      try {
        const frame = encodeFrame(message, payload, target);
        expect([...frame]).toEqual([...fresh]);
        const payloadCopies = set.mock.calls.filter(([src]) => (src as ArrayLike<number>).length === chunk.length);
        expect(payloadCopies).toHaveLength(0);
      } finally {
        set.mockRestore();
      }
    });

    it('is correct when the payload sits at the start of the target, where the prefix goes', () => {
      const target = new Uint8Array(2048);
      target.set(chunk, 0);
      const frame = encodeFrame(message, target.subarray(0, chunk.length), target);
      expect([...frame]).toEqual([...fresh]);
    });

    it('refuses a target that is too small', () => {
      expect(() => encodeFrame(message, chunk, new Uint8Array(fresh.length - 1))).toThrow(RangeError);
    });
  });

  it('refuses to encode a payload on a message that has none, or an oversized header', () => {
    expect(() => encodeFrame({ t: 'status' }, bytes(1))).toThrow(RangeError);
    expect(() => encodeFrame({ t: 'ack', c: 1, rc: 1, rb: 1 }, bytes(1))).toThrow(RangeError);
    expect(() => encodeFrame({ t: 'error', code: 'ERR_INTERNAL', message: 'x'.repeat(5000), retry: true })).toThrow(
      RangeError,
    );
    expect(() => encodeFrame({ t: 'chunk', c: -1 })).toThrow(RangeError);
    expect(() => encodeFrame({ t: 'chunk', c: 1, k: { a: 'sha256', v: 'abc' } })).toThrow(RangeError);
    const hello = serverCases[1]![1] as Extract<ServerMessage, { t: 'hello' }>;
    expect(() => encodeFrame({ ...hello, missing: [10] })).toThrow(RangeError);
    expect(() => encodeFrame({ ...hello, totalChunks: 11 })).toThrow(RangeError);
  });

  describe('read by another msgpack decoder', () => {
    function header(frame: Uint8Array): unknown {
      const h = frame[0]! | (frame[1]! << 8);
      return unpack(frame.subarray(2, 2 + h));
    }

    it('is plain msgpack maps (fixmap, no msgpackr records)', () => {
      const frame = encodeFrame({ t: 'chunk', c: 5, k: { a: 'sha256', v: '0f'.repeat(32) } }, range(4));
      expect(frame[2]! & 0xf0).toBe(0x80); // fixmap
      expect(header(frame)).toEqual({ t: 'chunk', c: 5, k: { a: 'sha256', v: '0f'.repeat(32) } });
    });

    it.each(serverCases.filter(([, m]) => m.t !== 'hello'))('reads server %s', (_label, message) => {
      const plain = JSON.parse(JSON.stringify(header(encodeFrame(message)), (_k, v) => (typeof v === 'bigint' ? Number(v) : v)));
      expect(plain).toEqual(message);
    });

    it('reads hello without the missing list, which is the payload', () => {
      const { missing: _missing, ...rest } = serverCases[1]![1] as Extract<ServerMessage, { t: 'hello' }>;
      expect(header(encodeFrame(serverCases[1]![1]))).toEqual(rest);
    });

    it('gets integers past 2^32 as int64, not float64', () => {
      const frame = encodeFrame({ t: 'ack', c: 1, rc: 2, rb: 5e12 });
      expect(Buffer.from(frame).includes(0xcb)).toBe(false);
      expect((header(frame) as { rb: unknown }).rb).toBe(5_000_000_000_000n);
    });
  });

  describe('decodes what other msgpack encoders write', () => {
    it('map16 headers (msgpackr default encoder)', () => {
      expect(decodeClientFrame(frameOf({ t: 'chunk', c: 3 }, bytes(9))).message).toEqual({ t: 'chunk', c: 3 });
    });

    it('integers as int64 and as integral float64', () => {
      expect(decodeClientFrame(frameOf({ t: 'chunk', c: 3n })).message).toEqual({ t: 'chunk', c: 3 });
      // {t: "chunk", c: 3.0} with c as float64
      const f64 = [0xcb, 0x40, 0x08, 0, 0, 0, 0, 0, 0];
      const header = [0x82, 0xa1, 0x74, 0xa5, ...new TextEncoder().encode('chunk'), 0xa1, 0x63, ...f64];
      expect(decodeClientFrame(rawFrame(header)).message).toEqual({ t: 'chunk', c: 3 });
    });

    it('nil for an absent optional field', () => {
      expect(decodeClientFrame(frameOf({ t: 'chunk', c: 3, k: null })).message).toEqual({ t: 'chunk', c: 3 });
      expect(decodeServerFrame(frameOf({ t: 'error', code: 'ERR_X', message: 'm', c: null, retry: false }))).toEqual({
        t: 'error',
        code: 'ERR_X',
        message: 'm',
        retry: false,
      });
    });

    it('unknown keys, which are dropped rather than passed through', () => {
      const m = decodeClientFrame(frameOf({ t: 'chunk', c: 3, x: 1, constructor: 'y', __proto__x: 2 })).message;
      expect(m).toEqual({ t: 'chunk', c: 3 });
      expect(Object.keys(m)).toEqual(['t', 'c']);
    });
  });

  const c = (n: number): number[] => [0xa1, 0x63, ...pack(n)];
  const str = (s: string): number[] => [...pack(s)];

  // [label, frame]: every one must be refused by decodeClientFrame with ERR_CHUNK_HEADER_INVALID.
  const malformedClient: Array<[string, Uint8Array]> = [
    ['empty frame', new Uint8Array(0)],
    ['one byte', bytes(1)],
    ['H = 0', bytes(0, 0)],
    ['H = 0 with a payload', rawFrame([], [1, 2, 3])],
    ['H = 4097', rawFrame(new Uint8Array(4097).fill(0xc0))],
    ['H = 65535', bytes(0xff, 0xff, 0x80)],
    ['truncated: H past the end', rawFrame([0x81, 0xa1], [], 20)],
    ['truncated msgpack: map of 2 with 1 entry', rawFrame([0x82, ...str('t'), ...str('status')])],
    ['truncated msgpack string', rawFrame([0x81, 0xa1, 0x74, 0xa6, 0x73])],
    ['reserved byte 0xc1', rawFrame([0xc1])],
    ['two values in the header', rawFrame([...pack({ t: 'status' }), 0xc0])],
    ['nil header', rawFrame([0xc0])],
    ['array header', frameOf(['chunk', 1])],
    ['string header', frameOf('chunk')],
    ['number header', frameOf(5)],
    ['timestamp extension', rawFrame([0xd6, 0xff, 0, 0, 0, 1])],
    ['binary header', rawFrame([0xc4, 1, 0x74])],
    ['missing t', frameOf({ c: 1 })],
    ['t not a string', frameOf({ t: 1, c: 1 })],
    ['t upper case', frameOf({ t: 'CHUNK', c: 1 })],
    ['server type from a client', frameOf({ t: 'ack', c: 1, rc: 1, rb: 1 })],
    ['hello from a client', frameOf({ t: 'hello', v: 1 })],
    ['missing c', frameOf({ t: 'chunk' })],
    ['c negative', frameOf({ t: 'chunk', c: -1 })],
    ['c fraction', frameOf({ t: 'chunk', c: 1.5 })],
    ['c string', frameOf({ t: 'chunk', c: '5' })],
    ['c boolean', frameOf({ t: 'chunk', c: true })],
    ['c nil', frameOf({ t: 'chunk', c: null })],
    ['c NaN', rawFrame([0x82, ...str('t'), ...str('chunk'), 0xa1, 0x63, 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0])],
    ['c infinity', rawFrame([0x82, ...str('t'), ...str('chunk'), 0xa1, 0x63, 0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0])],
    ['c 2^53 as uint64', frameOf({ t: 'chunk', c: 2n ** 53n })],
    ['c 2^64-1 as uint64', frameOf({ t: 'chunk', c: 2n ** 64n - 1n })],
    ['c -1 as int64', frameOf({ t: 'chunk', c: -1n })],
    ['c 2^53 as float64', frameOf({ t: 'chunk', c: 2 ** 53 })],
    ['k a string', frameOf({ t: 'chunk', c: 1, k: 'abc' })],
    ['k an array', frameOf({ t: 'chunk', c: 1, k: ['sha256', 'ab'.repeat(32)] })],
    ['k unknown algorithm', frameOf({ t: 'chunk', c: 1, k: { a: 'md5', v: 'ab'.repeat(16) } })],
    ['k sha256 too short', frameOf({ t: 'chunk', c: 1, k: { a: 'sha256', v: 'ab'.repeat(31) } })],
    ['k crc32 too long', frameOf({ t: 'chunk', c: 1, k: { a: 'crc32', v: 'cbf439260' } })],
    ['k not hex', frameOf({ t: 'chunk', c: 1, k: { a: 'crc32', v: 'cbf4392g' } })],
    ['k value binary', frameOf({ t: 'chunk', c: 1, k: { a: 'crc32', v: new Uint8Array(4) } })],
    ['k missing v', frameOf({ t: 'chunk', c: 1, k: { a: 'crc32' } })],
    ['part without a payload', frameOf({ t: 'part', c: 1, o: 0 })],
    ['part missing o', frameOf({ t: 'part', c: 1 }, [1])],
    ['part missing c', frameOf({ t: 'part', o: 0 }, [1])],
    ['part o negative', frameOf({ t: 'part', c: 1, o: -1 }, [1])],
    ['part o fraction', frameOf({ t: 'part', c: 1, o: 0.5 }, [1])],
    ['part o string', frameOf({ t: 'part', c: 1, o: '0' }, [1])],
    ['status with a payload', frameOf({ t: 'status' }, [1])],
    ['cancel with a payload', frameOf({ t: 'cancel' }, [0])],
    ['map with integer keys', rawFrame([0x82, 0x01, ...str('chunk'), 0x02, 0x05])],
  ];

  it.each(malformedClient)('refuses client frame: %s', (_label, frame) => {
    expect(codeOf(() => decodeClientFrame(frame))).toBe('ERR_CHUNK_HEADER_INVALID');
  });

  /** A header map of `entries` (each a key's bytes then its value's), as a fixmap or, with `wide`, a map16. */
  const mapOf = (entries: number[][], wide = false): number[] => [
    ...(wide ? [0xde, 0x00, entries.length] : [0x80 | entries.length]),
    ...entries.flat(),
  ];
  // PROTOCOL.md "Framing": the header is a map with string keys and never uses 0xc1, also below its top level.
  // msgpackr decodes a nested 0xc1 to a marker object and an integer key 1 to the string "1", so these headers
  // read as valid ones unless the decoder checks the bytes themselves.
  const nestedViolations: Array<[string, number[], boolean?]> = [
    ['0xc1 as the value of an unknown key', [...str('x'), 0xc1]],
    ['0xc1 inside an array value', [...str('x'), 0x92, 0x01, 0xc1]],
    ['0xc1 inside a nested map value', [...str('x'), 0x81, ...str('y'), 0xc1]],
    ['0xc1 as a map key', [0xc1, 0x00]],
    ['an integer key next to t', [0x01, 0x00]],
    ['a negative integer key', [0xff, 0x00]],
    ['a uint16 key', [0xcd, 0x01, 0x00, 0x00]],
    ['a float key', [0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x00]],
    ['a nil key', [0xc0, 0x00]],
    ['a boolean key', [0xc3, 0x00]],
    ['an integer key in a nested map', [...str('x'), 0x81, 0x07, 0x00]],
    ['an integer key in a map16 header', [0x01, 0x00], true],
  ];

  it.each(nestedViolations)('refuses a header with 0xc1 or a non-string key below its top level: %s', (_label, entry, wide) => {
    const e = thrown(() => decodeClientFrame(rawFrame(mapOf([entry, [...str('t'), ...str('status')]], wide))));
    expect(e.code).toBe('ERR_CHUNK_HEADER_INVALID');
    expect(closeCodeForError(e.code)).toBe(CLOSE_PROTOCOL_ERROR);
    const window = mapOf([entry, [...str('t'), ...str('window')], [...str('window'), 0x01]], wide);
    expect(codeOf(() => decodeServerFrame(rawFrame(window)))).toBe('ERR_CHUNK_HEADER_INVALID');
  });

  it('refuses msgpackr`s own extensions, which read past their payload: a record as the header, a Set as a value', () => {
    const record = [0xd4, 0x72, 0x40, 0x92, ...str('t'), ...str('c'), ...str('chunk'), 0x05];
    expect(codeOf(() => decodeClientFrame(rawFrame(record, [1])))).toBe('ERR_CHUNK_HEADER_INVALID');
    const set = mapOf([[...str('x'), 0xd4, 0x73, 0x00, 0x91, 0x01], [...str('t'), ...str('status')]]);
    expect(codeOf(() => decodeClientFrame(rawFrame(set)))).toBe('ERR_CHUNK_HEADER_INVALID');
  });

  it('still takes string keys of every width, and nested arrays, maps, binary and timestamps under unknown keys', () => {
    const str8 = [0xd9, 0x01, 0x74];
    const str16 = [0xda, 0x00, 0x01, 0x63];
    const str32 = [0xdb, 0x00, 0x00, 0x00, 0x01, 0x78];
    const nested = [0x93, 0x81, ...str('y'), 0x92, 0xc0, 0xc3, 0xc4, 0x02, 0xc1, 0xc1, 0xd6, 0xff, 0, 0, 0, 1];
    const header = [0x83, ...str8, ...str('chunk'), ...str16, 0x05, ...str32, ...nested];
    expect(decodeClientFrame(rawFrame(header, [9])).message).toEqual({ t: 'chunk', c: 5 });
  });

  it('takes a field msgpackr encodes as undefined (fixext 1, type 0) as absent, as msgpackr itself reads it', () => {
    const header = pack({ t: 'chunk', c: 5, k: undefined });
    expect(Buffer.from(header).includes(Buffer.from([0xd4, 0x00, 0x00]))).toBe(true);
    expect(decodeClientFrame(rawFrame([...header], [9])).message).toEqual({ t: 'chunk', c: 5 });
    // Any other extension is still refused by the header check itself (msgpackr would decode these without complaint):
    // fixext 1 of type 0 with other data, a fixext 4 of an application type, an ext 8 of type 0.
    for (const ext of [[0xd4, 0x00, 0x01], [0xd6, 0x74, 0, 0, 0, 0], [0xc7, 0x01, 0x00, 0x01]]) {
      const other = mapOf([[...str('t'), ...str('status')], [...str('x'), ...ext]]);
      expect(codeOf(() => decodeClientFrame(rawFrame(other))), ext.join(' ')).toBe('ERR_CHUNK_HEADER_INVALID');
    }
  });

  /** A valid {t: 'status', p: 'xxx...'} header of exactly `size` bytes. */
  function paddedStatus(size: number): Uint8Array {
    const overhead = pack({ t: 'status', p: 'x'.repeat(1000) }).length - 1000; // str16 length form
    const header = pack({ t: 'status', p: 'x'.repeat(size - overhead) });
    expect(header.length).toBe(size);
    return header;
  }

  it('accepts the largest header (H = 4096) and refuses a valid header one byte longer', () => {
    expect(decodeClientFrame(rawFrame(paddedStatus(MAX_FRAME_HEADER))).message).toEqual({ t: 'status' });
    const e = thrown(() => decodeClientFrame(rawFrame(paddedStatus(MAX_FRAME_HEADER + 1))));
    expect(e.code).toBe('ERR_CHUNK_HEADER_INVALID');
    expect(e.message).toContain('header length 4097');
  });

  it('does not let a __proto__ key reach Object.prototype', () => {
    const header = [0x82, ...str('__proto__'), ...pack({ polluted: true }), ...str('t'), ...str('status')];
    decodeClientFrame(rawFrame(header));
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  const hello = { t: 'hello', v: 1, guid: 'g', chunkSize: 4, fileSize: 38, totalChunks: 10, maxFrame: 100, window: 2 };
  const malformedServer: Array<[string, Uint8Array]> = [
    ['client type from a server', frameOf({ t: 'chunk', c: 1 })],
    ['hello v 2', frameOf({ ...hello, v: 2 }, [0, 0])],
    ['hello without v', frameOf({ ...hello, v: undefined }, [0, 0])],
    ['hello empty guid', frameOf({ ...hello, guid: '' }, [0, 0])],
    ['hello chunkSize 0', frameOf({ ...hello, chunkSize: 0, fileSize: 0, totalChunks: 0 })],
    ['hello window negative', frameOf({ ...hello, window: -1 }, [0, 0])],
    ['hello totalChunks inconsistent', frameOf({ ...hello, totalChunks: 11 }, [0, 0])],
    ['hello without bitmap', frameOf(hello)],
    ['hello bitmap too long', frameOf(hello, [0, 0, 0])],
    ['hello bitmap bit past the last chunk', frameOf(hello, [0, 0x04])],
    ['ack with a payload', frameOf({ t: 'ack', c: 1, rc: 1, rb: 1 }, [1])],
    ['ack without rb', frameOf({ t: 'ack', c: 1, rc: 1 })],
    ['ack dup not boolean', frameOf({ t: 'ack', c: 1, dup: 1, rc: 1, rb: 1 })],
    ['progress without complete', frameOf({ t: 'progress', rc: 1, tc: 1, rb: 1 })],
    ['window negative', frameOf({ t: 'window', window: -1 })],
    ['window without a number', frameOf({ t: 'window' })],
    ['progress complete as 1', frameOf({ t: 'progress', rc: 1, tc: 1, rb: 1, complete: 1 })],
    ['complete without size', frameOf({ t: 'complete', fileName: 'a' })],
    ['complete size negative', frameOf({ t: 'complete', fileName: 'a', size: -1 })],
    ['error code not ERR_', frameOf({ t: 'error', code: 'oops', message: 'm', retry: false })],
    ['error without retry', frameOf({ t: 'error', code: 'ERR_INTERNAL', message: 'm' })],
    ['error c fraction', frameOf({ t: 'error', code: 'ERR_INTERNAL', message: 'm', c: 0.5, retry: false })],
    ['unknown type', frameOf({ t: 'welcome' })],
  ];

  it.each(malformedServer)('refuses server frame: %s', (_label, frame) => {
    expect(codeOf(() => decodeServerFrame(frame))).toBe('ERR_CHUNK_HEADER_INVALID');
  });

  it('never quotes the peer bytes in its message', () => {
    const e = thrown(() => decodeClientFrame(frameOf({ t: '\u0000evil\nline', c: 1 })));
    expect(e.message).not.toContain('evil');
    expect(e.retryable).toBe(false);
  });
});

// --- PSWebHost JSON control messages ----------------------------------------------------------------------------------

describe('PSWebHost control messages', () => {
  it.each<[string, PsClientControl]>([
    ['{"type":"chunk","chunkNumber":0,"bytesRemaining":78643200}', { type: 'chunk', chunkNumber: 0, bytesRemaining: 78643200 }],
    ['{"type":"chunk","chunkNumber":3}', { type: 'chunk', chunkNumber: 3 }],
    ['{"type":"chunk","chunkNumber":3,"bytesRemaining":null}', { type: 'chunk', chunkNumber: 3 }],
    ['{"chunkNumber":1.0,"type":"chunk","extra":[1,2]}', { type: 'chunk', chunkNumber: 1 }],
    ['{"type":"getProgress"}', { type: 'getProgress' }],
    [' { "type" : "getProgress" } ', { type: 'getProgress' }],
  ])('parses %s', (text, message) => {
    expect(parsePsControl(text)).toEqual(message);
  });

  it.each<[string, string, ErrorCode]>([
    ['not JSON', 'chunk 1', 'ERR_INVALID_JSON'],
    ['empty', '', 'ERR_INVALID_JSON'],
    ['truncated', '{"type":"chunk","chunkNumber":1', 'ERR_INVALID_JSON'],
    ['array', '[{"type":"getProgress"}]', 'ERR_CHUNK_HEADER_INVALID'],
    ['null', 'null', 'ERR_CHUNK_HEADER_INVALID'],
    ['number', '42', 'ERR_CHUNK_HEADER_INVALID'],
    ['string', '"getProgress"', 'ERR_CHUNK_HEADER_INVALID'],
    ['no type', '{"chunkNumber":1}', 'ERR_CHUNK_HEADER_INVALID'],
    ['type not a string', '{"type":1}', 'ERR_CHUNK_HEADER_INVALID'],
    ['unknown type', '{"type":"progress","chunkNumber":1}', 'ERR_CHUNK_HEADER_INVALID'],
    ['missing chunkNumber', '{"type":"chunk"}', 'ERR_CHUNK_HEADER_INVALID'],
    ['null chunkNumber', '{"type":"chunk","chunkNumber":null}', 'ERR_CHUNK_HEADER_INVALID'],
    ['negative chunkNumber', '{"type":"chunk","chunkNumber":-1}', 'ERR_CHUNK_HEADER_INVALID'],
    ['fractional chunkNumber', '{"type":"chunk","chunkNumber":1.5}', 'ERR_CHUNK_HEADER_INVALID'],
    ['string chunkNumber', '{"type":"chunk","chunkNumber":"1"}', 'ERR_CHUNK_HEADER_INVALID'],
    ['unsafe chunkNumber', '{"type":"chunk","chunkNumber":9007199254740992}', 'ERR_CHUNK_HEADER_INVALID'],
    ['huge chunkNumber', '{"type":"chunk","chunkNumber":1e300}', 'ERR_CHUNK_HEADER_INVALID'],
    ['negative bytesRemaining', '{"type":"chunk","chunkNumber":1,"bytesRemaining":-5}', 'ERR_CHUNK_HEADER_INVALID'],
    ['string bytesRemaining', '{"type":"chunk","chunkNumber":1,"bytesRemaining":"5"}', 'ERR_CHUNK_HEADER_INVALID'],
    ['too long, even though valid', `${' '.repeat(MAX_PS_CONTROL_LENGTH)}{"type":"getProgress"}`, 'ERR_CHUNK_HEADER_INVALID'],
  ])('refuses %s', (_label, text, code) => {
    expect(codeOf(() => parsePsControl(text))).toBe(code);
  });

  it('round-trips client messages', () => {
    for (const m of [
      { type: 'chunk', chunkNumber: 4, bytesRemaining: 0 },
      { type: 'chunk', chunkNumber: 4 },
      { type: 'getProgress' },
    ] as PsClientControl[]) {
      expect(parsePsControl(encodePsControl(m))).toEqual(m);
    }
  });

  it('writes server messages with the PSWebHost field names, in order', () => {
    const progress = encodePsControl({
      type: 'progress',
      chunkNumber: 0,
      receivedChunks: 1,
      totalChunks: 4,
      receivedBytes: 26214400,
      complete: false,
    });
    expect(progress).toBe(
      '{"type":"progress","chunkNumber":0,"receivedChunks":1,"totalChunks":4,"receivedBytes":26214400,"complete":false}',
    );
    expect(encodePsControl({ type: 'complete', fileName: 'largefile.zip', size: 104857600 })).toBe(
      '{"type":"complete","fileName":"largefile.zip","size":104857600}',
    );
    expect(encodePsControl({ type: 'error', code: 'ERR_UPLOAD_NOT_FOUND', message: 'Upload not found' })).toBe(
      '{"type":"error","code":"ERR_UPLOAD_NOT_FOUND","message":"Upload not found"}',
    );
  });
});

// --- close codes ------------------------------------------------------------------------------------------------------

describe('closeCodeForError', () => {
  it.each<[ErrorCode, number]>([
    ['ERR_UPLOAD_CANCELLED', CLOSE_UPLOAD_CANCELLED],
    ['ERR_UPLOAD_NOT_FOUND', CLOSE_UPLOAD_NOT_FOUND],
    ['ERR_UPLOAD_FAILED', CLOSE_UPLOAD_FAILED],
    ['ERR_UPLOAD_EXPIRED', CLOSE_UPLOAD_EXPIRED],
    ['ERR_RATE_LIMITED', CLOSE_TOO_MANY_CONNECTIONS],
    ['ERR_SERVER_BUSY', CLOSE_TRY_AGAIN_LATER],
    ['ERR_SHUTTING_DOWN', CLOSE_GOING_AWAY],
    ['ERR_UNAUTHORIZED', CLOSE_POLICY],
    ['ERR_CHUNK_HEADER_INVALID', CLOSE_PROTOCOL_ERROR],
    ['ERR_INVALID_JSON', CLOSE_PROTOCOL_ERROR],
    ['ERR_STORAGE_FAILED', CLOSE_INTERNAL],
    ['ERR_INTERNAL', CLOSE_INTERNAL],
  ])('%s closes with %d', (code, close) => {
    expect(closeCodeForError(code)).toBe(close);
  });

  it('maps every catalogue code to a code a browser lets a server send', () => {
    // 1005, 1006 and 1015 must never be sent; 1000-1014 (registered) and 4000-4999 (private) may.
    for (const code of ERROR_CODES) {
      const close = closeCodeForError(code);
      const registered = close >= 1000 && close <= 1014 && close !== 1005 && close !== 1006;
      expect(registered || (close >= 4000 && close <= 4999), code).toBe(true);
    }
  });
});

// --- docs/PROTOCOL.md stays true -----------------------------------------------------------------------------------

describe('docs/PROTOCOL.md', () => {
  const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');
  const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex').replace(/(..)(?!$)/g, '$1 ');

  it('lists every close-code constant with its value, and nothing else', () => {
    const rows = [...doc.matchAll(/^\| (\d{4}) \| `(CLOSE_[A-Z_]+)` \|/gm)].map((m) => [m[2], Number(m[1])]);
    const constants = Object.entries(messages).filter(([name]) => name.startsWith('CLOSE_'));
    expect(Object.fromEntries(rows)).toEqual(Object.fromEntries(constants));
    expect(rows).toHaveLength(constants.length);
  });

  it('shows the bytes the codec writes', () => {
    const status = encodeFrame({ t: 'status' });
    expect(doc).toContain(`\`{t:"status"}\` is \`${hex(status)}\``);
    const crc = encodeFrame({ t: 'chunk', c: 300, k: { a: 'crc32', v: 'cbf43926' } });
    expect(doc).toContain(`\`${hex(crc.subarray(2))}\``);
    expect(doc).toContain(`(\`H = 0x${crc[0]!.toString(16)}\`)`);
    const ps = new Uint8Array([0x34, 0x12, ...encodePsHeader({ chunkNumber: 3, bytesRemaining: 0 }).subarray(2)]);
    expect(doc).toContain(hex(ps).replace(/^(.. ..) (.. .. .. ..) (.. .. .. ..)$/, '$1  $2  $3'));
  });
});
