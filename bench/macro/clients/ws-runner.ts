/**
 * The WebSocket load generator: a small Node process (the `ws` package) that the harness starts once per measured
 * run, next to the target, so that its CPU is read from /proc apart from the harness's and reported as the client's
 * (curl's is too). It is started before the warm-up upload, so Node's start-up and the JIT's warm-up fall outside the
 * measured window.
 *
 *   node dist/bench/macro/clients/ws-runner.js        (or node --import tsx bench/macro/clients/ws-runner.ts)
 *
 * stdin: one JSON command per line (WsCommand in updraft-ws.ts), any number at once: each is one upload over its own
 * connection; `{"abort":true}` ends every connection now. stdout: `ready` once, then one JSON line per command
 * (WsResult). It exits when stdin closes.
 *
 * Protocols (docs/PROTOCOL.md):
 *   - `updraft.v1`: waits for `hello`, then keeps min(inFlight, hello.window) chunk frames unacknowledged; every
 *     `ack` must name a chunk in flight, once, without `dup`; done at `complete` (size checked).
 *   - `pswebhost`: per chunk a text `{"type":"chunk","chunkNumber","bytesRemaining"}` then the chunk as one binary
 *     message; `inFlight` 1 is the serial client (waits for each `progress`), more is pipelined. Every `progress`
 *     must name a chunk in flight; done at `complete`.
 * Any `error` message, a close before `complete`, or the time limit fails the upload.
 *
 * Keeping the client cheap (it shares 2 cores with the server):
 *   - A chunk is read from its tmpfs chunk file (one read) straight into a reused buffer after room for the
 *     updraft.v1 prefix, and `encodeFrame` writes the prefix in front of it in place: no copy of the chunk in JS.
 *     A buffer is held only until `ws` hands the frame to the kernel (the send callback), not until the ack, so a
 *     connection needs two (one on the wire, one being filled) and the process at most MAX_SLOTS.
 *   - Frames are masked with a zero key (`generateMask`), which `ws` recognises and then sends the buffer as it is
 *     instead of copying it into a masked one. The server unmasks every frame the same way whatever the key; only
 *     the client's copy is saved. (A browser masks with a random key in native code.)
 *   - No permessage-deflate (the bytes are incompressible, and Updraft does not negotiate it).
 */
import fs from 'node:fs';
import readline from 'node:readline';
import WebSocket from 'ws';
import { encodeFrame, encodeFramePrefix, decodeServerFrame } from '../../../src/protocol/codec.js';
import type { WsCommand, WsResult } from './updraft-ws.js';

/** Slots per connection: one frame on the wire, the next one being read. */
const SLOTS_PER_CONNECTION = 2;
/** Slots in the whole process: 16 x 8 MiB at most; a connection waits for a free one beyond it. */
const MAX_SLOTS = 16;
/** Room before the chunk for the updraft.v1 prefix: 2 + a `{t:"chunk",c}` header (16 bytes up to c = 2^32-1). */
const PREFIX_ROOM = 64;

const zeroMask = (mask: Buffer): void => {
  mask.fill(0);
};

// --- buffer slots -------------------------------------------------------------------------------------------------

const free: Buffer[] = [];
let allocated = 0;
const waiting = new Set<() => void>();

function takeSlot(bytes: number): Buffer | undefined {
  for (let i = 0; i < free.length; i++) {
    if (free[i]!.length >= bytes) return free.splice(i, 1)[0];
  }
  if (allocated < MAX_SLOTS) {
    allocated++;
    return Buffer.allocUnsafe(bytes);
  }
  if (free.length > 0) {
    // Only slots too small for this chunk size are free: replace one.
    free.shift();
    return Buffer.allocUnsafe(bytes);
  }
  return undefined;
}

function giveSlot(slot: Buffer): void {
  free.push(slot);
  const wake = [...waiting];
  waiting.clear();
  for (const w of wake) w();
}

/** Reads `length` bytes of `file` into `target` at `offset`; throws when the file is shorter. */
function readChunk(file: string, target: Buffer, offset: number, length: number): void {
  const fd = fs.openSync(file, 'r');
  try {
    let done = 0;
    for (let i = 0; i < 100_000 && done < length; i++) {
      const n = fs.readSync(fd, target, offset + done, length - done, done);
      if (n === 0) break;
      done += n;
    }
    if (done !== length) throw new Error(`${file}: read ${done} of ${length} bytes`);
  } finally {
    fs.closeSync(fd);
  }
}

// --- one upload ---------------------------------------------------------------------------------------------------

const sockets = new Set<WebSocket>();

function upload(cmd: WsCommand): Promise<Omit<WsResult, 'id'>> {
  const native = cmd.protocol === 'updraft.v1';
  const totalChunks = cmd.chunkPaths.length;
  const lengthOf = (c: number): number => Math.min(cmd.chunkSize, cmd.fileSize - c * cmd.chunkSize);

  return new Promise((resolve) => {
    const ws = new WebSocket(cmd.url, native ? ['updraft.v1'] : [], {
      headers: cmd.token === undefined ? {} : { authorization: `Bearer ${cmd.token}` },
      perMessageDeflate: false,
      generateMask: zeroMask,
      maxPayload: 1024 * 1024,
      skipUTF8Validation: true,
      handshakeTimeout: 10_000,
    });
    sockets.add(ws);
    let settled = false;
    let window = native ? 0 : Math.max(1, cmd.inFlight); // native: set by hello
    let next = 0;
    let inFlight = 0;
    let slotsHeld = 0;
    let acked = 0;
    let ackedBytes = 0;
    const state = new Uint8Array(totalChunks); // 0 not sent, 1 in flight, 2 acknowledged
    let completeSeen = false;

    const timer = setTimeout(() => finish(`no complete within ${cmd.timeoutMs} ms (${acked}/${totalChunks} chunks acknowledged)`), cmd.timeoutMs);

    function finish(error?: string, size?: number, fileName?: string): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      waiting.delete(pump);
      if (error !== undefined) {
        ws.terminate();
        resolve({ ok: false, error });
      } else {
        resolve({ ok: true, size, fileName, chunks: acked });
      }
    }

    function pump(): void {
      while (!settled && window > 0 && inFlight < window && next < totalChunks && slotsHeld < SLOTS_PER_CONNECTION) {
        const c = next;
        const length = lengthOf(c);
        const parts = native && cmd.partSize !== undefined && length > cmd.partSize ? Math.ceil(length / cmd.partSize) : 1;
        const slot = takeSlot(parts * PREFIX_ROOM + length);
        if (slot === undefined) {
          waiting.add(pump);
          return;
        }
        next++;
        slotsHeld++;
        inFlight++;
        state[c] = 1;
        if (parts > 1) {
          sendParts(c, length, slot);
          continue;
        }
        let frame: Buffer;
        try {
          if (native) {
            const message = { t: 'chunk', c } as const;
            const start = encodeFramePrefix(message).length;
            readChunk(cmd.chunkPaths[c]!, slot, start, length);
            const view = encodeFrame(message, slot.subarray(start, start + length), slot);
            frame = slot.subarray(0, view.length);
          } else {
            readChunk(cmd.chunkPaths[c]!, slot, 0, length);
            frame = slot.subarray(0, length);
            const bytesRemaining = Math.max(0, cmd.fileSize - c * cmd.chunkSize - length);
            ws.send(JSON.stringify({ type: 'chunk', chunkNumber: c, bytesRemaining }));
          }
        } catch (error) {
          slotsHeld--;
          giveSlot(slot);
          finish(`chunk ${c}: ${(error as Error).message}`);
          return;
        }
        ws.send(frame, { binary: true }, (error) => {
          slotsHeld--;
          giveSlot(slot);
          if (error) finish(`send of chunk ${c} failed: ${error.message}`);
          else pump();
        });
      }
    }

    /**
     * Chunk `c` as `part` frames of cmd.partSize: each part is read into the slot after room for its own prefix, so
     * every frame is contiguous and nothing is copied; the slot is free once the last part is on the wire.
     */
    function sendParts(c: number, length: number, slot: Buffer): void {
      const partSize = cmd.partSize!;
      const frames: Buffer[] = [];
      try {
        const fd = fs.openSync(cmd.chunkPaths[c]!, 'r');
        try {
          for (let o = 0, at = 0; o < length; o += partSize, at += PREFIX_ROOM + partSize) {
            const n = Math.min(partSize, length - o);
            const message = { t: 'part', c, o } as const;
            const start = at + PREFIX_ROOM;
            if (fs.readSync(fd, slot, start, n, o) !== n) throw new Error(`${cmd.chunkPaths[c]!}: short read at ${o}`);
            const prefix = encodeFramePrefix(message).length;
            const view = encodeFrame(message, slot.subarray(start, start + n), slot.subarray(start - prefix));
            frames.push(slot.subarray(start - prefix, start - prefix + view.length));
          }
        } finally {
          fs.closeSync(fd);
        }
      } catch (error) {
        slotsHeld--;
        giveSlot(slot);
        finish(`chunk ${c}: ${(error as Error).message}`);
        return;
      }
      frames.forEach((frame, i) => {
        const last = i === frames.length - 1;
        ws.send(frame, { binary: true }, (error) => {
          if (error) finish(`send of chunk ${c} failed: ${error.message}`);
          if (!last) return;
          slotsHeld--;
          giveSlot(slot);
          if (!error) pump();
        });
      });
    }

    function chunkAnswered(c: number, duplicate: boolean): void {
      if (c < 0 || c >= totalChunks || state[c] !== 1) {
        finish(`answer for chunk ${c}, which is not in flight`);
        return;
      }
      if (duplicate) {
        finish(`chunk ${c} was answered as a duplicate (nothing should be stored yet)`);
        return;
      }
      state[c] = 2;
      inFlight--;
      acked++;
      ackedBytes += lengthOf(c);
      pump();
    }

    function completed(size: number, fileName: string): void {
      completeSeen = true;
      if (acked !== totalChunks) finish(`complete after ${acked}/${totalChunks} chunks acknowledged`);
      else if (size !== cmd.fileSize || ackedBytes !== cmd.fileSize) finish(`complete with size ${size}, sent ${cmd.fileSize}`);
      else finish(undefined, size, fileName);
    }

    ws.on('unexpected-response', (req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body = (body + d).slice(0, 500)));
      res.on('end', () => {
        req.destroy();
        finish(`upgrade refused with ${res.statusCode}: ${body}`);
      });
    });
    ws.on('error', (error) => finish(`websocket error: ${error.message}`));
    ws.on('close', (code, reason) => {
      sockets.delete(ws);
      if (!completeSeen) finish(`closed with ${code} ${reason.toString()} before complete (${acked}/${totalChunks} acknowledged)`);
    });
    ws.on('open', () => {
      if (native && ws.protocol !== 'updraft.v1') finish(`server chose subprotocol "${ws.protocol}", not updraft.v1`);
      else if (!native) pump(); // PSWebHost: the server sends nothing on open
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (settled) return;
      if (native) {
        if (!isBinary) return finish(`text message on updraft.v1: ${data.toString('utf8').slice(0, 200)}`);
        let m;
        try {
          m = decodeServerFrame(data);
        } catch (error) {
          return finish(`undecodable frame: ${(error as Error).message}`);
        }
        switch (m.t) {
          case 'hello':
            if (m.chunkSize !== cmd.chunkSize || m.fileSize !== cmd.fileSize || m.totalChunks !== totalChunks) {
              return finish(`hello describes another upload (${m.fileSize} bytes in ${m.chunkSize}-byte chunks)`);
            }
            if (m.missing.length !== totalChunks) return finish(`hello: ${totalChunks - m.missing.length} chunks already stored`);
            window = Math.min(cmd.inFlight, m.window);
            return pump();
          case 'ack':
            return chunkAnswered(m.c, m.dup === true);
          case 'window':
            window = Math.min(cmd.inFlight, m.window);
            return pump();
          case 'progress':
            return;
          case 'complete':
            return completed(m.size, m.fileName);
          case 'error':
            return finish(`error ${m.code}${m.c === undefined ? '' : ` (chunk ${m.c})`}: ${m.message}`);
        }
        return;
      }
      if (isBinary) return finish('binary message on the PSWebHost protocol');
      let m: { type?: unknown; chunkNumber?: unknown; complete?: unknown; size?: unknown; fileName?: unknown; code?: unknown; message?: unknown };
      try {
        m = JSON.parse(data.toString('utf8')) as typeof m;
      } catch {
        return finish(`reply is not JSON: ${data.toString('utf8').slice(0, 200)}`);
      }
      if (m.type === 'progress') {
        if (m.chunkNumber === -1) return; // an unprompted progress of another connection's completion
        return chunkAnswered(Number(m.chunkNumber), false);
      }
      if (m.type === 'complete') return completed(Number(m.size), String(m.fileName));
      if (m.type === 'error') return finish(`error ${String(m.code)}: ${String(m.message)}`);
      return finish(`unexpected message: ${data.toString('utf8').slice(0, 200)}`);
    });
  });
}

// --- command loop -------------------------------------------------------------------------------------------------

function reply(result: WsResult): void {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', (line) => {
  if (line.trim() === '') return;
  let cmd: WsCommand | { abort: true };
  try {
    cmd = JSON.parse(line) as WsCommand | { abort: true };
  } catch {
    process.stderr.write(`ws-runner: not JSON: ${line.slice(0, 200)}\n`);
    return;
  }
  if ('abort' in cmd) {
    for (const ws of sockets) ws.terminate();
    return;
  }
  upload(cmd).then(
    (result) => reply({ id: cmd.id, ...result }),
    (error: unknown) => reply({ id: cmd.id, ok: false, error: (error as Error).message ?? String(error) }),
  );
});
lines.on('close', () => {
  for (const ws of sockets) ws.terminate();
  process.exit(0);
});
process.stdout.write('ready\n');
