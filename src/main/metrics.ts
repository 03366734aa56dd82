/**
 * Prometheus metrics (prom-client), one registry per engine so several engines in one process never collide.
 * Gauges that mirror live state (active uploads, queue depth, bytes in flight, event-loop delay) are read when
 * scraped; counters and histograms are fed from the write path.
 */
import client from 'prom-client';
import type { IntervalHistogram } from 'node:perf_hooks';

export interface MetricsSources {
  activeUploads: () => number;
  queueDepth: () => number;
  inFlightBytes: () => number;
  eventLoopDelay: IntervalHistogram;
  /** The histogram's tick interval, subtracted so the figures are lateness, not tick length. */
  resolutionMs: number;
}

export class Metrics {
  readonly registry = new client.Registry();
  readonly uploads: client.Counter<'event'>;
  readonly bytesReceived: client.Counter;
  readonly bytesWritten: client.Counter;
  readonly chunkWrite: client.Histogram;
  readonly fsync: client.Histogram;
  readonly wsConnections: client.Gauge;
  readonly httpErrors: client.Counter<'code'>;

  constructor(src: MetricsSources) {
    const registers = [this.registry];
    this.uploads = new client.Counter({
      name: 'updraft_uploads_total',
      help: 'Upload lifecycle events (created, completed, failed, cancelled, expired)',
      labelNames: ['event'],
      registers,
    });
    for (const e of ['created', 'completed', 'failed', 'cancelled', 'expired']) this.uploads.inc({ event: e }, 0);
    new client.Gauge({
      name: 'updraft_uploads_active',
      help: 'Uploads accepting chunks now',
      registers,
      collect() {
        this.set(src.activeUploads());
      },
    });
    this.bytesReceived = new client.Counter({ name: 'updraft_bytes_received_total', help: 'Chunk bytes read from clients, counted when a whole chunk has arrived', registers });
    this.bytesWritten = new client.Counter({ name: 'updraft_bytes_written_total', help: 'Chunk bytes written to staging files by the workers', registers });
    this.chunkWrite = new client.Histogram({
      name: 'updraft_chunk_write_seconds',
      help: 'Time from a chunk claimed to its bytes written (before commit)',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.fsync = new client.Histogram({
      name: 'updraft_fsync_seconds',
      help: 'fdatasync latency of staging files (group commits and completions)',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.wsConnections = new client.Gauge({ name: 'updraft_websocket_connections', help: 'Open WebSocket connections', registers });
    this.httpErrors = new client.Counter({ name: 'updraft_errors_total', help: 'Error replies by code', labelNames: ['code'], registers });
    new client.Gauge({
      name: 'updraft_worker_queue_depth',
      help: 'Write tasks waiting for a worker',
      registers,
      collect() {
        this.set(src.queueDepth());
      },
    });
    new client.Gauge({
      name: 'updraft_inflight_bytes',
      help: 'Request bytes held in memory waiting for the disk',
      registers,
      collect() {
        this.set(src.inFlightBytes());
      },
    });
    new client.Gauge({
      name: 'updraft_event_loop_delay_seconds',
      help: 'Main-thread event-loop delay since start',
      labelNames: ['quantile'],
      registers,
      collect() {
        const h = src.eventLoopDelay;
        const late = (ns: number): number => (h.count === 0 ? 0 : Math.max(0, ns / 1e9 - src.resolutionMs / 1e3));
        for (const q of [0.5, 0.9, 0.99]) this.set({ quantile: String(q) }, late(h.percentile(q * 100)));
        this.set({ quantile: 'max' }, late(h.max));
      },
    });
    client.collectDefaultMetrics({ register: this.registry, prefix: 'updraft_' }); // updraft_process_cpu_seconds_total, …
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
