/**
 * The harness's vocabulary. A target is something that stores uploads (a server we start, or the in-process disk
 * writer); a client is how bytes reach it. Adding a transport (the `updraft.v1` WebSocket protocol) means a new
 * UploadClient and a target entry that uses it; scenarios, measurement and reports stay as they are.
 */
import type { Runtime } from './build.js';
import type { Content } from './dataset.js';

export interface Scenario {
  readonly id: string;
  readonly title: string;
  /** Uploads in the scenario, in total. */
  readonly uploads: number;
  /** Uploads running at once: 1 means back to back. */
  readonly concurrentUploads: number;
  readonly fileSize: number;
  readonly chunkSize: number;
  /** Requests in flight per upload (PUTs for chunked targets; tus is always 1, its offsets are sequential). */
  readonly inFlight: number;
  /** Different byte contents among the uploads (upload i sends content i % distinctContents). */
  readonly distinctContents: number;
  /** Target ids that run in this scenario. */
  readonly targets: readonly string[];
}

export interface UploadJob {
  readonly fileName: string;
  readonly content: Content;
  readonly inFlight: number;
}

/** What a client learned while uploading that the target needs to find the stored bytes (guid, tus id, folder). */
export interface UploadReceipt {
  readonly id: string;
}

export type StoredLayout =
  | { readonly kind: 'file'; readonly path: string }
  | { readonly kind: 'chunk-files'; readonly paths: readonly string[] }
  | { readonly kind: 'not-stored'; readonly why: string };

export interface UploadClient {
  /** Short name shown in reports: 'curl PUT x4', 'curl tus PATCH', 'in-process write'. */
  describe(inFlight: number): string;
  /** Sends one whole upload; resolves after the last reply, throws if any request failed or was short. */
  upload(job: UploadJob): Promise<UploadReceipt>;
  /** Stops every upload in flight now (the run is over its time limit); their upload() calls reject. */
  abort?(): void;
  /** Each upload runs one curl (curl.ts): the harness starts them before the window, waiting for their config. */
  readonly startsCurl?: boolean;
}

export interface RunningTarget {
  readonly client: UploadClient;
  /** The server's root process; undefined for the in-process disk writer (no separate process to read). */
  readonly server?: { readonly pid: number; readonly rssScope: 'root' | 'tree' };
  /**
   * A client process that lives through the run (the WebSocket runner), whose CPU is read from /proc over the window
   * and reported with the client's; curl processes exit inside the window and are counted when reaped instead.
   */
  readonly clientProcess?: { readonly pid: number };
  /** Base URL serving GET /__bench/eld and POST /__bench/eld/reset; undefined when the target has none. */
  readonly eldBaseUrl?: string;
  /** Where the target keeps the bytes of a finished upload, for verification. */
  stored(job: UploadJob, receipt: UploadReceipt): StoredLayout;
  stop(): Promise<void>;
}

export interface TargetContext {
  /** Fresh, empty directory on the benchmark disk for this run's stored uploads; deleted after the run. */
  readonly dataDir: string;
  /** Scratch directory (curl configs, nginx config and logs); deleted at the end. */
  readonly workDir: string;
  readonly repoRoot: string;
  /** Compiled (dist/) or tsx: how Node processes are started (build.ts). */
  readonly runtime: Runtime;
  readonly startTimeoutMs: number;
  readonly requestTimeoutMs: number;
}

export interface TargetSpec {
  readonly id: string;
  readonly label: string;
  readonly role: 'limit' | 'peer' | 'updraft';
  /** One line for the README and report: what it is, how it stores, whether it syncs. */
  readonly description: string;
  start(context: TargetContext): Promise<RunningTarget>;
}

/** Thrown by start() when a target cannot run here (nginx not installed, Updraft CLI not written yet). */
export class TargetUnavailable extends Error {}
