/**
 * The design without workers, shared by the sync-main and sync-main-durable peers: uWS on the main thread, and every
 * onData piece (at most 512 KiB) written where it belongs with `fs.writeSync(fd, piece, 0, len, position)` before the
 * callback returns. One fd per upload, opened at init and closed when the last chunk has arrived. The write blocks
 * the event loop for as long as the page cache takes, which is what the event-loop figure of these peers shows.
 */
import fs from 'node:fs';
import type { UwsPeerBehaviour } from './uws-peer.js';

export interface SyncWritesOptions {
  /**
   * fdatasync the file when its last chunk has arrived, before that chunk's reply (on the main thread, like the
   * writes): the same promise as Updraft's `durability: "upload"`. Without it nothing is synced, like nginx.
   */
  readonly fdatasyncAtEnd: boolean;
}

export function syncWrites(options: SyncWritesOptions): UwsPeerBehaviour {
  const fds = new Map<string, number>();
  return {
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
      if (fd === undefined) return;
      try {
        if (options.fdatasyncAtEnd) fs.fdatasyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    },
  };
}
