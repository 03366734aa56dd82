/**
 * The design without workers: uWS on the main thread, and every onData piece (at most 512 KiB) written where it
 * belongs with `fs.writeSync(fd, piece, 0, len, position)` before the callback returns. One fd per upload, opened
 * at init and closed when the last chunk has arrived; no fsync (like nginx and @tus/file-store). The write blocks the
 * event loop for as long as the page cache takes, which is what the event-loop figure of this peer shows.
 *
 *   node --import tsx bench/peers/sync-main.ts --host 127.0.0.1 --port 0 --dir <dir>
 */
import fs from 'node:fs';
import { readServerArgs } from './server-args.js';
import { startUwsPeer } from './uws-peer.js';

const fds = new Map<string, number>();

startUwsPeer(readServerArgs(), {
  onInit(upload) {
    fds.set(upload.guid, fs.openSync(upload.filePath, 'w'));
  },
  openChunk(upload) {
    const fd = fds.get(upload.guid);
    if (fd === undefined) throw new Error(`no open file for upload ${upload.guid}`);
    return {
      write(piece, position) {
        // The view is valid only during onData; writeSync finishes with it before we return.
        fs.writeSync(fd, new Uint8Array(piece), 0, piece.byteLength, position);
      },
    };
  },
  onComplete(upload) {
    const fd = fds.get(upload.guid);
    fds.delete(upload.guid);
    if (fd !== undefined) fs.closeSync(fd);
  },
});
