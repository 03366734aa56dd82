/**
 * What runs, in full and quick mode. Every scenario carries the disk limit and the discard ceiling so its ratios
 * come from the same minutes of the same machine. Scenarios run in this order; when the time budget runs out, the
 * chunk-size sweep at the end is what gets cut.
 */
import type { Scenario, TargetSpec } from './model.js';
import { diskLimitTarget } from './targets/disk-limit.js';
import { discardTarget, nodeHttpTarget, syncMainTarget, tusTarget } from './targets/node-peers.js';
import { nginxTarget } from './targets/nginx.js';
import { updraftTarget } from './targets/updraft.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

export const ALL_TARGETS: readonly TargetSpec[] = [
  diskLimitTarget,
  discardTarget,
  syncMainTarget,
  nodeHttpTarget,
  tusTarget,
  nginxTarget,
  updraftTarget({ durability: 'chunk', lockMode: 'chunk', transport: 'http' }),
  updraftTarget({ durability: 'upload', lockMode: 'chunk', transport: 'http' }),
  updraftTarget({ durability: 'chunk', lockMode: 'upload', transport: 'http' }),
  updraftTarget({ durability: 'upload', lockMode: 'upload', transport: 'http' }),
];

const PEERS = ['disk', 'discard', 'sync-main', 'node-http', 'tus', 'nginx'];
const UPDRAFT = ['updraft-chunk', 'updraft-upload'];
const UPDRAFT_LOCK_UPLOAD = ['updraft-chunk-lockupload', 'updraft-upload-lockupload'];

export interface PlannedScenario extends Scenario {
  /** Repetitions; the report shows medians. */
  readonly reps: number;
}

export function fullScenarios(reps: number): PlannedScenario[] {
  return [
    {
      id: '1x1GiB', title: '1 upload of 1 GiB, 8 MiB chunks, 4 PUTs in flight',
      uploads: 1, concurrentUploads: 1, fileSize: GiB, chunkSize: 8 * MiB, inFlight: 4, distinctContents: 1,
      targets: [...PEERS, ...UPDRAFT, ...UPDRAFT_LOCK_UPLOAD], reps,
    },
    {
      id: '16x64MiB', title: '16 uploads of 64 MiB at once, 8 MiB chunks, 4 PUTs in flight each',
      uploads: 16, concurrentUploads: 16, fileSize: 64 * MiB, chunkSize: 8 * MiB, inFlight: 4, distinctContents: 16,
      targets: [...PEERS, ...UPDRAFT, ...UPDRAFT_LOCK_UPLOAD], reps,
    },
    {
      id: 'sustained-3GiB', title: '3 uploads of 1 GiB back to back, 8 MiB chunks, 4 PUTs in flight',
      uploads: 3, concurrentUploads: 1, fileSize: GiB, chunkSize: 8 * MiB, inFlight: 4, distinctContents: 1,
      targets: [...PEERS, ...UPDRAFT], reps: 1,
    },
    {
      id: '1x1GiB-x8', title: '1 upload of 1 GiB, 8 MiB chunks, 8 PUTs in flight',
      uploads: 1, concurrentUploads: 1, fileSize: GiB, chunkSize: 8 * MiB, inFlight: 8, distinctContents: 1,
      // tus is left out: its PATCHes are sequential, so this is the 1x1GiB case again for it.
      targets: [...PEERS.filter((t) => t !== 'tus'), ...UPDRAFT], reps,
    },
    {
      id: '1x1GiB-1MiB', title: '1 upload of 1 GiB, 1 MiB chunks, 4 PUTs in flight',
      uploads: 1, concurrentUploads: 1, fileSize: GiB, chunkSize: MiB, inFlight: 4, distinctContents: 1,
      targets: ['disk', 'discard', 'sync-main', 'nginx', ...UPDRAFT], reps,
    },
    {
      id: '1x1GiB-32MiB', title: '1 upload of 1 GiB, 32 MiB chunks, 4 PUTs in flight',
      uploads: 1, concurrentUploads: 1, fileSize: GiB, chunkSize: 32 * MiB, inFlight: 4, distinctContents: 1,
      targets: ['disk', 'discard', 'sync-main', 'nginx', ...UPDRAFT], reps,
    },
  ];
}

export function quickScenarios(reps: number): PlannedScenario[] {
  return [
    {
      id: 'q-1x256MiB', title: '1 upload of 256 MiB, 8 MiB chunks, 4 PUTs in flight',
      uploads: 1, concurrentUploads: 1, fileSize: 256 * MiB, chunkSize: 8 * MiB, inFlight: 4, distinctContents: 1,
      targets: [...PEERS, ...UPDRAFT], reps,
    },
    {
      id: 'q-4x64MiB', title: '4 uploads of 64 MiB at once, 8 MiB chunks, 4 PUTs in flight each',
      uploads: 4, concurrentUploads: 4, fileSize: 64 * MiB, chunkSize: 8 * MiB, inFlight: 4, distinctContents: 4,
      targets: [...PEERS, ...UPDRAFT], reps,
    },
  ];
}
