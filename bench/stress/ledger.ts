/**
 * What each simulated client knows about its upload: which bytes it sent for each chunk, which the server
 * acknowledged, and how the upload ended. The final checks (verify.ts) compare this with what is on disk.
 *
 * ## The invariant for a chunk sent with different bytes
 *
 * Over PUT there is no checksum, so the server cannot tell a retry with different bytes from a retry with the same
 * bytes: it keeps whichever version it stored first and answers every later one "Chunk already received". The
 * harness therefore checks, per chunk (an "epoch" is the time since the chunk was last reported missing):
 *
 *   1. At most one reply per epoch says the chunk was newly stored ("Chunk received" / the completing reply). A
 *      second one means a bit flipped twice or a chunk was counted twice (durability.md invariant 2).
 *   2. When such a reply was seen, the completed file holds exactly the bytes of the version that reply was for:
 *      a duplicate, whatever its bytes, never replaces first-acknowledged bytes.
 *   3. When no such reply was seen (every one was lost to a cut or a crash), the file holds exactly one version that
 *      may have reached the server in full: never a mix of two versions, never a version that was cut before its
 *      end, never zeros or another chunk's bytes (invariants 1 and 3).
 *
 * Over the `updraft.v1` WebSocket a chunk may carry a checksum: a version whose bytes do not match it must be
 * refused (ERR_CHECKSUM_MISMATCH, retry: true) and can never be what the file holds, even when nothing else was
 * acknowledged for that chunk.
 *
 * ## Acknowledged chunks lost
 *
 * Any 200 for a chunk (new or duplicate) says the chunk is stored; in `chunk` durability, stored durably. Whenever
 * the client later reads the upload's status (after every round of sends, and so after every crash), a chunk it has
 * an acknowledgement for must not be in `missingChunks`. Each such chunk counts once as lost, and its epoch starts
 * again (the client sends it anew). A "complete" reply likewise must never be followed by a status that is not
 * "completed".
 */
import type { Transport } from './plan.js';

export class ChunkRecord {
  /** Some 200 was seen for the chunk in this epoch. */
  acked = false;
  /** Version named by the first "newly stored" reply of this epoch. */
  newVersion: number | null = null;
  newAcks = 0;
  /** Versions that may have reached the server in full (over the whole upload: a stale request can land late). */
  readonly possible = new Set<number>();
  /** Versions sent with a checksum that does not match them: must never be stored. */
  readonly forbidden = new Set<number>();
}

/** Rounds of "send what is missing" (or connections) before a client gives up: a liveness failure, reported as such. */
export const MAX_ROUNDS = 60;

export type UploadOutcome = 'completed' | 'cancelled' | 'failed' | 'vanished' | 'unfinished' | 'gaveup' | 'stuck' | 'pending';

export interface FaultCounts {
  cut: number;
  reset: number;
  stall: number;
  /** Keyed inits whose reply the proxy dropped (the server acted; control.ts). */
  loseReply: number;
  slow: number;
  dupSame: number;
  concurrent: number;
  altBytes: number;
  altCut: number;
  checksumBad: number;
  vanish: number;
  cancel: number;
  wsDrop: number;
  /** updraft.v1 chunks sent as `part` frames. */
  wsParts: number;
}

export function emptyFaults(): FaultCounts {
  return { cut: 0, reset: 0, stall: 0, loseReply: 0, slow: 0, dupSame: 0, concurrent: 0, altBytes: 0, altCut: 0, checksumBad: 0, vanish: 0, cancel: 0, wsDrop: 0, wsParts: 0 };
}

export class UploadRecord {
  guid: string | null = null;
  /** Bearer token of the user this upload belongs to (none: anonymous). */
  token: string | undefined;
  /** Every file name an init was sent under, and whether its reply arrived (an unanswered init may still exist). */
  readonly inits: Array<{ fileName: string; answered: boolean }> = [];
  outcome: UploadOutcome = 'pending';
  /** Error code of an explicit failure. */
  errorCode: string | undefined;
  finalName: string | undefined;
  /** The client heard "complete" (reply or status); checked against a later status. */
  completionSeen = false;
  readonly chunks: ChunkRecord[];
  lostChunks = 0;
  /** Acknowledgements that came before the chunk was durable (journal oracle, see control.ts). */
  acksNotDurable = 0;
  /** "complete" replies that came before the file was in its place (control.ts checkPlaced). */
  completedBeforePlaced = 0;
  lostCompletion = false;
  /** The deadline stopped it halfway and the fault-free drain took it over (run.ts). */
  drained = false;
  /** The client sent a cancel (answered or not): the upload may end cancelled without that being the server's doing. */
  cancelAsked = false;
  readonly violations: string[] = [];
  readonly unexpected: string[] = [];
  /** Requests sent, replies by kind. */
  requests = 0;
  networkErrors = 0;
  rounds = 0;
  readonly faults: FaultCounts = emptyFaults();

  constructor(
    readonly index: number,
    readonly size: number,
    readonly chunkSize: number,
    readonly transport: Transport,
  ) {
    this.chunks = Array.from({ length: Math.ceil(size / chunkSize) }, () => new ChunkRecord());
  }

  get totalChunks(): number {
    return this.chunks.length;
  }

  /** Counts round `round` (0-based); past MAX_ROUNDS it records "gave up" (after `what`) and returns false. */
  startRound(round: number, what: string): boolean {
    this.rounds = round + 1;
    if (round < MAX_ROUNDS) return true;
    this.outcome = 'gaveup';
    this.violation(`gave up after ${MAX_ROUNDS} ${what}`);
    return false;
  }

  violation(msg: string): void {
    this.violations.push(`upload #${this.index} (${this.guid ?? 'no guid'}): ${msg}`);
  }

  /** A reply says chunk `c`, sent as `version`, is stored; `isNew` when it was stored by this very request. */
  acked(c: number, version: number, isNew: boolean): void {
    const ch = this.chunks[c]!;
    ch.acked = true;
    if (ch.forbidden.has(version) && isNew) this.violation(`chunk ${c} stored with bytes that did not match their checksum`);
    if (!isNew) return;
    ch.newAcks++;
    if (ch.newAcks === 1) ch.newVersion = version;
    else this.violation(`chunk ${c} answered as newly stored ${ch.newAcks} times (counted twice)`);
  }

  /** A status listed `missing`: every acknowledged chunk among them is lost (counted once, then sent again). */
  checkMissing(missing: readonly number[]): number[] {
    const lost: number[] = [];
    for (const c of missing) {
      const ch = this.chunks[c];
      if (!ch) {
        this.violation(`status lists chunk ${c}, past the last chunk`);
        continue;
      }
      if (ch.acked) {
        lost.push(c);
        ch.acked = false;
        ch.newVersion = null;
        ch.newAcks = 0;
      }
    }
    if (lost.length > 0) {
      this.lostChunks += lost.length;
      this.violation(`acknowledged chunk(s) ${lost.join(', ')} reported missing later (lost)`);
    }
    return lost;
  }

  /**
   * The server ended the upload with `code` before it completed. Nothing the harness does gives a server reason to
   * fail, expire, forget or cancel an upload on its own, so each of those is a violation, and the chunks it had
   * acknowledged are lost. Only the client's own choices (its cancel, its vanishing) end an upload legitimately.
   */
  endedByServer(code: string): void {
    if (code === 'ERR_UPLOAD_CANCELLED' && this.cancelAsked) {
      // Our own cancel, whose answer was lost (a crash, the deadline): the status tells it took effect.
      this.outcome = 'cancelled';
      return;
    }
    this.outcome = 'failed';
    this.errorCode = code;
    const acked = this.chunks.filter((ch) => ch.acked).length;
    this.lostChunks += acked;
    const what =
      code === 'ERR_UPLOAD_NOT_FOUND'
        ? 'the server no longer knows an upload whose init it acknowledged'
        : code === 'ERR_UPLOAD_CANCELLED'
          ? 'upload cancelled without the client asking'
          : `the server ended the upload with ${code}, which nothing in the run calls for`;
    this.violation(`${what}${acked > 0 ? `: its ${acked} acknowledged chunk(s) are lost` : ''}`);
  }

  completed(fileName: string | undefined): void {
    if (this.finalName !== undefined && fileName !== undefined && fileName !== this.finalName) {
      this.violation(`completed as "${this.finalName}" and later as "${fileName}"`);
    }
    this.finalName ??= fileName;
    this.completionSeen = true;
    this.outcome = 'completed';
  }
}
