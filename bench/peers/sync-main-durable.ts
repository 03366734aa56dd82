/**
 * The design without workers (sync-writes.ts), made as durable as Updraft's `durability: "upload"`: the last chunk's
 * reply waits for an fdatasync of the file, run on the main thread like the writes.
 *
 *   node --import tsx bench/peers/sync-main-durable.ts --host 127.0.0.1 --port 0 --dir <dir>
 */
import { readServerArgs } from './server-args.js';
import { syncWrites } from './sync-writes.js';
import { startUwsPeer } from './uws-peer.js';

startUwsPeer(readServerArgs(), syncWrites({ fdatasyncAtEnd: true }));
