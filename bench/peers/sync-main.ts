/**
 * The design without workers (sync-writes.ts), with no fsync, like nginx and @tus/file-store.
 *
 *   node --import tsx bench/peers/sync-main.ts --host 127.0.0.1 --port 0 --dir <dir>
 */
import { readServerArgs } from './server-args.js';
import { syncWrites } from './sync-writes.js';
import { startUwsPeer } from './uws-peer.js';

startUwsPeer(readServerArgs(), syncWrites({ fdatasyncAtEnd: false }));
