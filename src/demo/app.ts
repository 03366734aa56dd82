/**
 * The demo page (served at `/`): pick or drop files, one row per file with progress, speed, ETA, the transport in
 * use and pause/resume/cancel, then a list of completed files. Everything it does goes through the public client
 * API, imported at run time from /updraft-client.js (static-routes.ts rewrites this import when bundling).
 *
 * Settings can be preset from the query string (?transport=http&parallel=2&chunkSize=262144&target=a/b&token=...),
 * which the browser tests use. Rows carry data-* attributes (state, loaded, guid, bytes per transport) for them too.
 */
import { ClientError, listResumable, upload } from '../client/index.js';
import { formatBytes } from '../client/progress.js';
import type { TransportMode, UploadHandle, UploadOptions, UploadProgress, UploadResult } from '../client/index.js';

// The server's route prefix; '' when it serves the API at its root (`--prefix /`).
const prefix = document.querySelector<HTMLMetaElement>('meta[name="updraft-endpoint"]')?.content;
const endpoint = prefix === undefined ? '/api/v1/files' : prefix || '/';

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing from the page`);
  return el as T;
};

const els = {
  drop: $<HTMLElement>('drop'),
  picker: $<HTMLInputElement>('picker'),
  form: $<HTMLFormElement>('settings-form'),
  transport: $<HTMLSelectElement>('opt-transport'),
  parallel: $<HTMLInputElement>('opt-parallel'),
  chunk: $<HTMLInputElement>('opt-chunk'),
  target: $<HTMLInputElement>('opt-target'),
  token: $<HTMLInputElement>('opt-token'),
  active: $<HTMLUListElement>('active'),
  activeEmpty: $<HTMLElement>('active-empty'),
  activeCount: $<HTMLElement>('active-count'),
  completed: $<HTMLUListElement>('completed'),
  doneEmpty: $<HTMLElement>('done-empty'),
  doneCount: $<HTMLElement>('done-count'),
  resumable: $<HTMLElement>('resumable'),
  resumableList: $<HTMLUListElement>('resumable-list'),
  apiPrefix: $<HTMLElement>('api-prefix'),
};

// --- formatting ---------------------------------------------------------------------------------------------------


function formatRate(bytesPerSecond: number): string {
  const mb = bytesPerSecond / 1e6;
  return `${mb >= 100 ? mb.toFixed(0) : mb.toFixed(1)} MB/s`;
}

function formatEta(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s left`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s left`;
  return `${Math.floor(m / 60)} h ${m % 60} min left`;
}

function formatDuration(ms: number): string {
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

const TRANSPORT_LABEL = { websocket: 'WebSocket', http: 'HTTP' } as const;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

// --- settings -----------------------------------------------------------------------------------------------------

function presetFromQuery(): void {
  const q = new URLSearchParams(location.search);
  const t = q.get('transport');
  if (t === 'auto' || t === 'websocket' || t === 'http') els.transport.value = t;
  const p = q.get('parallel');
  if (p && /^[0-9]+$/.test(p)) els.parallel.value = p;
  const c = q.get('chunkSize');
  if (c && /^[0-9]+$/.test(c)) els.chunk.value = String(Number(c) / 1048576);
  const target = q.get('target');
  if (target) els.target.value = target;
  const token = q.get('token');
  if (token) els.token.value = token;
  if (token !== null) {
    // Out of the address bar and the history: a token in a URL leaks through screenshots, shared links, history.
    const clean = new URL(location.href);
    clean.searchParams.delete('token');
    history.replaceState(history.state, '', clean);
  }
}

function currentOptions(): Omit<UploadOptions, 'endpoint'> {
  const o: Omit<UploadOptions, 'endpoint'> = { transport: els.transport.value as TransportMode };
  const parallel = Number(els.parallel.value);
  if (Number.isInteger(parallel) && parallel >= 1) o.parallel = Math.min(parallel, 16);
  const mib = Number(els.chunk.value);
  if (els.chunk.value !== '' && Number.isFinite(mib) && mib > 0) o.chunkSize = Math.round(mib * 1048576);
  const target = els.target.value.trim().replace(/^\/+|\/+$/g, '');
  if (target !== '') o.targetPath = target;
  const token = els.token.value.trim();
  if (token !== '') o.token = token;
  return o;
}

// --- rows ---------------------------------------------------------------------------------------------------------

interface Row {
  file: File;
  handle: UploadHandle | undefined;
  progress: UploadProgress | undefined;
  startedAt: number;
  li: HTMLLIElement;
  meta: HTMLElement;
  fill: HTMLElement;
  pct: HTMLElement;
  bytes: HTMLElement;
  speed: HTMLElement;
  eta: HTMLElement;
  badge: HTMLElement;
  pause: HTMLButtonElement;
  cancel: HTMLButtonElement;
  error: HTMLElement;
  dirty: boolean;
  /** Cancel was clicked: the ERR_UPLOAD_CANCELLED that follows is ours, and the row goes. */
  cancelling: boolean;
}

const rows = new Set<Row>();
let completedCount = 0;
let frame = 0;

function createRow(file: File): Row {
  const li = el('li', 'row');
  li.dataset.name = file.name;
  li.dataset.total = String(file.size);
  const head = el('div', 'row-head');
  const info = el('div', 'file');
  const name = el('span', 'name', file.name);
  name.title = file.name;
  const meta = el('span', 'meta', formatBytes(file.size));
  info.append(name, meta);
  const actions = el('div', 'actions');
  const pause = el('button', 'btn', 'Pause');
  pause.type = 'button';
  const cancel = el('button', 'btn danger', 'Cancel');
  cancel.type = 'button';
  actions.append(pause, cancel);
  head.append(info, actions);
  const bar = el('div', 'bar');
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', '100');
  bar.setAttribute('aria-label', `Upload of ${file.name}`);
  const fill = el('div', 'fill');
  bar.append(fill);
  const stats = el('div', 'stats');
  const pct = el('span', 'pct', '0%');
  const bytes = el('span', 'bytes', `0 B of ${formatBytes(file.size)}`);
  const speed = el('span', 'speed', '— MB/s');
  const eta = el('span', 'eta', 'starting…');
  const badge = el('span', 'badge', 'connecting');
  stats.append(pct, bytes, speed, eta, badge);
  const error = el('p', 'error-text');
  error.hidden = true;
  li.append(head, bar, stats, error);

  const row: Row = { file, handle: undefined, progress: undefined, startedAt: 0, li, meta, fill, pct, bytes, speed, eta, badge, pause, cancel, error, dirty: true, cancelling: false };
  pause.addEventListener('click', () => onPauseClick(row));
  cancel.addEventListener('click', () => onCancelClick(row));
  return row;
}

function start(row: Row): void {
  row.startedAt = performance.now();
  row.error.hidden = true;
  row.pause.textContent = 'Pause';
  row.cancel.textContent = 'Cancel';
  row.li.dataset.state = 'starting';
  let h: UploadHandle;
  try {
    h = upload(row.file, { endpoint, ...currentOptions() });
  } catch (e) {
    // Options the client refuses (e.g. a chunk size that rounds to 0 bytes): this row fails, the other files go on.
    row.handle = undefined;
    fail(row, e);
    return;
  }
  row.handle = h;
  h.on('progress', (p) => {
    row.progress = p;
    schedule(row);
  });
  h.done.then(
    (r) => finish(row, r),
    (e: unknown) => fail(row, e),
  );
  forgetResumableNotice(row.file);
  schedule(row);
  updateCounts();
}

function onPauseClick(row: Row): void {
  const h = row.handle;
  const state = row.li.dataset.state;
  if (state === 'failed') {
    start(row); // "Retry": the remembered guid makes it continue, not restart
    return;
  }
  if (!h) return;
  if (h.state === 'paused') h.resume();
  else h.pause();
  schedule(row);
}

function onCancelClick(row: Row): void {
  const h = row.handle;
  if (row.li.dataset.state === 'failed' || h === undefined) {
    removeRow(row);
    return;
  }
  row.cancelling = true;
  row.cancel.disabled = true;
  h.cancel().then(
    () => removeRow(row),
    (e: unknown) => {
      row.cancelling = false;
      if (e instanceof ClientError && e.code === 'ERR_UPLOAD_FINALIZING') {
        // Too late: the server is finishing the file (or has). finish() moves the row to Completed.
        if (rows.has(row)) row.eta.textContent = 'too late to cancel: finishing…';
        return;
      }
      removeRow(row);
    },
  );
}

function removeRow(row: Row): void {
  rows.delete(row);
  row.li.remove();
  updateCounts();
}

function schedule(row: Row): void {
  row.dirty = true;
  if (frame === 0) frame = requestAnimationFrame(renderAll);
}

function renderAll(): void {
  frame = 0;
  for (const row of rows) if (row.dirty) render(row);
}

function render(row: Row): void {
  row.dirty = false;
  const p = row.progress;
  const h = row.handle;
  const state = h?.state ?? 'starting';
  if (row.li.dataset.state === 'failed') return;
  const total = p?.total || row.file.size;
  const loaded = p?.loaded ?? 0;
  const fraction = total === 0 ? (state === 'done' ? 1 : 0) : loaded / total;
  row.li.dataset.state = state;
  row.li.dataset.loaded = String(loaded);
  if (h?.guid) row.li.dataset.guid = h.guid;
  if (p) {
    row.li.dataset.ws = String(p.bytesByTransport.websocket);
    row.li.dataset.http = String(p.bytesByTransport.http);
  }
  row.fill.style.transform = `scaleX(${fraction})`;
  row.fill.parentElement!.setAttribute('aria-valuenow', String(Math.floor(fraction * 100)));
  row.pct.textContent = `${Math.floor(fraction * 100)}%`;
  row.bytes.textContent = `${formatBytes(loaded)} of ${formatBytes(total)}`;
  const transport = p?.transport ?? null;
  if (transport) row.li.dataset.transport = transport;
  row.badge.className = `badge ${transport ?? ''}`;
  row.badge.textContent = transport ? TRANSPORT_LABEL[transport] : state === 'starting' ? 'connecting' : '—';
  switch (state) {
    case 'paused':
      row.speed.textContent = 'paused';
      row.eta.textContent = '';
      row.pause.textContent = 'Resume';
      break;
    case 'finalizing':
      row.speed.textContent = '';
      row.eta.textContent = 'finishing…';
      row.pause.hidden = true;
      break;
    case 'starting':
      row.speed.textContent = '— MB/s';
      row.eta.textContent = 'starting…';
      break;
    default:
      row.speed.textContent = p && p.bytesPerSecond > 0 ? formatRate(p.bytesPerSecond) : '— MB/s';
      row.eta.textContent = formatEta(p?.etaSeconds ?? null);
      row.pause.textContent = 'Pause';
      row.pause.hidden = false;
  }
}

function finish(row: Row, r: UploadResult): void {
  rows.delete(row);
  row.li.remove();
  const li = el('li', 'done-item');
  li.dataset.name = r.fileName;
  li.dataset.guid = r.guid;
  li.dataset.size = String(r.size);
  li.dataset.ws = String(r.bytesByTransport.websocket);
  li.dataset.http = String(r.bytesByTransport.http);
  li.dataset.resumed = String(r.resumedBytes);
  const check = el('span', 'check');
  check.innerHTML = '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M5 12.5l4.5 4.5L19 7.5"/></svg>';
  const info = el('div', 'file');
  const name = el('span', 'name', r.fileName);
  name.title = r.fileName;
  const elapsed = performance.now() - row.startedAt;
  const sent = r.bytesByTransport.websocket + r.bytesByTransport.http;
  const parts: string[] = [];
  for (const t of ['websocket', 'http'] as const) {
    if (r.bytesByTransport[t] > 0) parts.push(`${formatBytes(r.bytesByTransport[t])} over ${TRANSPORT_LABEL[t]}`);
  }
  if (r.resumedBytes > 0) parts.push(`${formatBytes(r.resumedBytes)} resumed`);
  if (sent > 0 && elapsed > 0) parts.push(`${formatDuration(elapsed)} at ${formatRate((sent * 1000) / elapsed)}`);
  const meta = el('span', 'meta', parts.join(' · ') || 'already on the server');
  info.append(name, meta);
  const size = el('span', 'done-size', formatBytes(r.size));
  li.append(check, info, size);
  els.completed.prepend(li);
  completedCount++;
  updateCounts();
}

function fail(row: Row, e: unknown): void {
  const err = e instanceof ClientError ? e : undefined;
  // Our own cancel: onCancelClick removes the row. A cancel from elsewhere (another tab, an admin's DELETE) is shown.
  if (err?.code === 'ERR_UPLOAD_CANCELLED' && row.cancelling) return;
  if (!rows.has(row)) return;
  render(row);
  row.li.dataset.state = 'failed';
  row.li.dataset.error = err?.code ?? 'ERR_UNKNOWN';
  row.error.hidden = false;
  row.error.textContent = err ? `${err.message} (${err.code})` : String(e);
  row.speed.textContent = '';
  row.eta.textContent = '';
  row.badge.className = 'badge';
  row.badge.textContent = 'failed';
  row.pause.hidden = false;
  row.pause.textContent = 'Retry';
  row.cancel.disabled = false;
  row.cancel.textContent = 'Dismiss';
  updateCounts();
}

function updateCounts(): void {
  els.activeEmpty.hidden = rows.size > 0;
  const failed = [...rows].filter((r) => r.li.dataset.state === 'failed').length;
  const counts = [rows.size - failed > 0 ? `${rows.size - failed} active` : '', failed > 0 ? `${failed} failed` : ''];
  els.activeCount.textContent = counts.filter((c) => c !== '').join(', ');
  els.doneEmpty.hidden = completedCount > 0;
  els.doneCount.textContent = completedCount > 0 ? `${completedCount} file${completedCount === 1 ? '' : 's'}` : '';
}

function addFiles(files: Iterable<File>): void {
  for (const file of files) {
    const row = createRow(file);
    rows.add(row);
    els.active.append(row.li);
    start(row);
  }
  updateCounts();
}

// --- unfinished uploads from an earlier visit ---------------------------------------------------------------------

function showResumable(): void {
  const list = listResumable(endpoint);
  els.resumableList.replaceChildren(
    ...list.map((r) => {
      const folder = r.targetPath === undefined ? '' : ` → ${r.targetPath}`;
      const li = el('li', undefined, `${r.fileName} (${formatBytes(r.size)})${folder}`);
      li.dataset.key = `${r.fileName}|${r.size}|${r.lastModified}|${r.targetPath ?? ''}`;
      return li;
    }),
  );
  els.resumable.hidden = list.length === 0;
}

function forgetResumableNotice(file: File): void {
  const key = `${file.name}|${file.size}|${file.lastModified}|${currentOptions().targetPath ?? ''}`;
  for (const li of els.resumableList.querySelectorAll<HTMLLIElement>('li')) if (li.dataset.key === key) li.remove();
  els.resumable.hidden = els.resumableList.childElementCount === 0;
}

// --- wiring -------------------------------------------------------------------------------------------------------

els.apiPrefix.textContent = endpoint;
presetFromQuery();
els.form.addEventListener('submit', (e) => e.preventDefault());
els.drop.addEventListener('click', () => els.picker.click());
els.drop.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' || e.key === ' ') {
    e.preventDefault();
    els.picker.click();
  }
});
els.picker.addEventListener('change', () => {
  if (els.picker.files) addFiles(Array.from(els.picker.files));
  els.picker.value = ''; // picking the same file again (to resume) fires change again
});
let dragDepth = 0;
els.drop.addEventListener('dragenter', (e) => {
  e.preventDefault();
  dragDepth++;
  els.drop.classList.add('over');
});
els.drop.addEventListener('dragleave', () => {
  if (--dragDepth <= 0) {
    dragDepth = 0;
    els.drop.classList.remove('over');
  }
});
els.drop.addEventListener('dragover', (e) => {
  e.preventDefault();
  if (e.dataTransfer) e.dataTransfer.dropEffect = 'copy';
});
els.drop.addEventListener('drop', (e) => {
  e.preventDefault();
  dragDepth = 0;
  els.drop.classList.remove('over');
  if (e.dataTransfer?.files) addFiles(Array.from(e.dataTransfer.files));
});
// A file dropped next to the zone must not make the browser navigate away from the uploads.
window.addEventListener('dragover', (e) => e.preventDefault());
window.addEventListener('drop', (e) => e.preventDefault());
window.addEventListener('beforeunload', (e) => {
  if ([...rows].some((r) => r.handle && !['done', 'failed', 'cancelled'].includes(r.handle.state))) e.preventDefault();
});
showResumable();
updateCounts();
