/**
 * HTTP ingest ceiling: uWS reads every chunk body with onData and throws the bytes away. Routes, validation and the
 * byte count check are the same as sync-main's (uws-peer.ts), so the gap between the two is the cost of writing.
 *
 *   node --import tsx bench/peers/discard.ts --host 127.0.0.1 --port 0 --dir <dir>
 */
import { readServerArgs } from './server-args.js';
import { startUwsPeer, type ChunkSink } from './uws-peer.js';

const discardSink: ChunkSink = { write: () => {} };

startUwsPeer(readServerArgs(), {
  onInit: () => {},
  openChunk: () => discardSink,
  onComplete: () => {},
});
