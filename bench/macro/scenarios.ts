/**
 * What runs, in full and quick mode. Every scenario carries the disk limit and the discard ceiling so its ratios
 * come from the same minutes of the same machine. Scenarios run in this order; when the time budget runs out, the
 * chunk-size sweep at the end is what gets cut.
 */
import type { Scenario, TargetSpec } from './model.js';
import { diskLimitTarget, directDiskLimitTarget } from './targets/disk-limit.js';
import { discardTarget, nodeHttpTarget, syncMainDurableTarget, syncMainTarget, tusTarget } from './targets/node-peers.js';
import { nginxTarget } from './targets/nginx.js';
import { updraftTarget } from './targets/updraft.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

export const ALL_TARGETS: readonly TargetSpec[] = [
  diskLimitTarget,
  directDiskLimitTarget,
  discardTarget,
  syncMainTarget,
  syncMainDurableTarget,
  nodeHttpTarget,
  tusTarget,
  nginxTarget,
  updraftTarget({ durability: 'chunk', lockMode: 'chunk', transport: 'http' }),
  updraftTarget({ durability: 'upload', lockMode: 'chunk', transport: 'http' }),
  updraftTarget({ durability: 'chunk', lockMode: 'upload', transport: 'http' }),
  updraftTarget({ durability: 'upload', lockMode: 'upload', transport: 'http' }),
  updraftTarget({ durability: 'chunk', lockMode: 'chunk', transport: 'ws' }),
  updraftTarget({ durability: 'upload', lockMode: 'chunk', transport: 'ws' }),
  updraftTarget({ durability: 'chunk', lockMode: 'chunk', transport: 'ps-serial' }),
  updraftTarget({ durability: 'chunk', lockMode: 'chunk', transport: 'ps-pipelined' }),
];

const PEERS = ['disk', 'disk-direct', 'discard', 'sync-main', 'node-http', 'tus', 'nginx'];
/** The design without workers made as durable as durability=upload: a like-for-like reference, in the goal cases. */
const SYNC_DURABLE = ['sync-main-durable'];
/** Updraft over PUT in both durability modes (lock per chunk, the default). */
const UPDRAFT = ['updraft-chunk', 'updraft-upload'];
const UPDRAFT_LOCK_UPLOAD = ['updraft-chunk-lockupload', 'updraft-upload-lockupload'];
/** updraft.v1, window 8: both durability modes where it is the headline, the default (chunk) elsewhere. */
const WS_V1 = ['updraft-chunk-ws', 'updraft-upload-ws'];
const WS_V1_DEFAULT = ['updraft-chunk-ws'];
/** The PSWebHost WebSocket protocol, serial and 8 in flight, default durability. */
const WS_PS = ['updraft-chunk-ps-serial', 'updraft-chunk-ps-pipelined'];

export interface PlannedScenario extends Scenario {
  /** Repetitions; the report shows medians. */
  readonly reps: number;
  /**
   * Which case of the issues' goals this scenario stands for: `one` upload (1 GiB; 256 MiB in quick mode) or
   * `many` at once (16; 4 in quick mode). Goals are checked in these scenarios only; the rest are reported.
   */
  readonly goalCase?: 'one' | 'many';
}

/**
 * @param reps repetitions of the two goal scenarios (1x1GiB, 16x64MiB)
 * @param sweepReps repetitions of the in-flight and chunk-size sweep (fewer by default, to keep the full run
 *   under 15 minutes)
 */
export function fullScenarios(reps: number, sweepReps: number): PlannedScenario[] {
  return [
    {
      id: '1x1GiB', title: '1 upload of 1 GiB, 8 MiB chunks, 4 PUTs in flight (WebSocket: window 8 / serial)',
      uploads: 1, concurrentUploads: 1, fileSize: GiB, chunkSize: 8 * MiB, inFlight: 4, distinctContents: 1,
      targets: [...PEERS, ...SYNC_DURABLE, ...UPDRAFT, ...UPDRAFT_LOCK_UPLOAD, ...WS_V1, ...WS_PS], reps, goalCase: 'one',
    },
    {
      id: '16x64MiB', title: '16 uploads of 64 MiB at once, 8 MiB chunks, 4 PUTs in flight each (updraft.v1: window 8)',
      uploads: 16, concurrentUploads: 16, fileSize: 64 * MiB, chunkSize: 8 * MiB, inFlight: 4, distinctContents: 16,
      targets: [...PEERS, ...SYNC_DURABLE, ...UPDRAFT, ...UPDRAFT_LOCK_UPLOAD, ...WS_V1_DEFAULT], reps, goalCase: 'many',
    },
    {
      id: 'sustained-3GiB', title: '3 uploads of 1 GiB back to back, 8 MiB chunks, 4 PUTs in flight (updraft.v1: window 8)',
      uploads: 3, concurrentUploads: 1, fileSize: GiB, chunkSize: 8 * MiB, inFlight: 4, distinctContents: 1,
      targets: [...PEERS, ...UPDRAFT, ...WS_V1_DEFAULT], reps: 1,
    },
    {
      id: '1x1GiB-x8', title: '1 upload of 1 GiB, 8 MiB chunks, 8 PUTs in flight',
      uploads: 1, concurrentUploads: 1, fileSize: GiB, chunkSize: 8 * MiB, inFlight: 8, distinctContents: 1,
      // tus is left out: its PATCHes are sequential, so this is the 1x1GiB case again for it. The WebSocket clients
      // have their window of 8 in 1x1GiB already.
      targets: [...PEERS.filter((t) => t !== 'tus'), ...UPDRAFT], reps: sweepReps,
    },
    {
      id: '1x1GiB-1MiB', title: '1 upload of 1 GiB, 1 MiB chunks, 4 PUTs in flight (updraft.v1: window 8)',
      uploads: 1, concurrentUploads: 1, fileSize: GiB, chunkSize: MiB, inFlight: 4, distinctContents: 1,
      targets: ['disk', 'disk-direct', 'discard', 'sync-main', 'nginx', ...UPDRAFT, ...WS_V1_DEFAULT], reps: sweepReps,
    },
    {
      id: '1x1GiB-32MiB', title: '1 upload of 1 GiB, 32 MiB chunks, 4 PUTs in flight (updraft.v1: window 8)',
      uploads: 1, concurrentUploads: 1, fileSize: GiB, chunkSize: 32 * MiB, inFlight: 4, distinctContents: 1,
      targets: ['disk', 'disk-direct', 'discard', 'sync-main', 'nginx', ...UPDRAFT, ...WS_V1_DEFAULT], reps: sweepReps,
    },
  ];
}

export function quickScenarios(reps: number): PlannedScenario[] {
  return [
    {
      id: 'q-1x256MiB', title: '1 upload of 256 MiB, 8 MiB chunks, 4 PUTs in flight (WebSocket: window 8 / serial)',
      uploads: 1, concurrentUploads: 1, fileSize: 256 * MiB, chunkSize: 8 * MiB, inFlight: 4, distinctContents: 1,
      targets: [...PEERS, ...UPDRAFT, ...WS_V1_DEFAULT, ...WS_PS], reps, goalCase: 'one',
    },
    {
      id: 'q-4x64MiB', title: '4 uploads of 64 MiB at once, 8 MiB chunks, 4 PUTs in flight each (updraft.v1: window 8)',
      uploads: 4, concurrentUploads: 4, fileSize: 64 * MiB, chunkSize: 8 * MiB, inFlight: 4, distinctContents: 4,
      targets: [...PEERS, ...UPDRAFT, ...WS_V1_DEFAULT], reps, goalCase: 'many',
    },
  ];
}
