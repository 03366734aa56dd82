/**
 * The demo page in a real browser (Debian's Chromium driven by playwright-core, headless) against a real engine:
 * two files (one of 64 MiB) over the WebSocket, a server that refuses the WebSocket (the page falls back to PUT),
 * and a reload mid-upload that resumes instead of restarting. Every file is compared byte for byte.
 *
 * Needs /usr/bin/chromium (`apt-get install -y chromium`; .ci/run installs it). Without it the tests are skipped
 * with a message, except under CI=true, where a missing browser is a failure rather than a silent skip.
 * The finished page is saved as test-artifacts/demo.png (and demo-phone.png at phone width).
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';
import type { BrowserContext, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, startServer, tempDir } from '../fixtures/server.js';
import type { TestServer } from '../fixtures/server.js';

const CHROMIUM = '/usr/bin/chromium';
const haveChromium = fs.existsSync(CHROMIUM);
const ARTIFACTS = path.join(ROOT, 'test-artifacts');
const MiB = 1024 * 1024;

if (!haveChromium && process.env.CI !== 'true') {
  process.stderr.write(`\n[browser tests] SKIPPED: ${CHROMIUM} is missing. Install it with: apt-get update && apt-get install -y chromium\n\n`);
}

describe.runIf(!haveChromium && process.env.CI === 'true')('browser tests on CI', () => {
  it('have Chromium installed', () => {
    expect.fail(`${CHROMIUM} is missing: .ci/run must run "apt-get update && apt-get install -y chromium"`);
  });
});

describe.runIf(haveChromium)('demo page in Chromium', () => {
  let context: BrowserContext;
  let profile: string;
  let files: string;
  let server: TestServer | null = null;

  beforeAll(async () => {
    profile = await tempDir('updraft-chromium-');
    files = await tempDir('updraft-browser-files-');
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 900, height: 900 },
      args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
    });
  });

  afterAll(async () => {
    await context?.close();
    await fsp.rm(profile, { recursive: true, force: true });
    await fsp.rm(files, { recursive: true, force: true });
  });

  afterEach(async () => {
    await server?.close();
    server = null;
  });

  async function makeFile(name: string, size: number): Promise<{ file: string; sha: string }> {
    const file = path.join(files, name);
    const fh = await fsp.open(file, 'w');
    const hash = createHash('sha256');
    for (let done = 0; done < size; ) {
      const piece = randomBytes(Math.min(8 * MiB, size - done));
      hash.update(piece);
      await fh.write(piece);
      done += piece.length;
    }
    await fh.close();
    return { file, sha: hash.digest('hex') };
  }

  async function shaOf(file: string): Promise<string> {
    const hash = createHash('sha256');
    for await (const piece of fs.createReadStream(file)) hash.update(piece as Buffer);
    return hash.digest('hex');
  }

  /** A page that records console errors and uncaught exceptions. */
  async function openPage(url: string): Promise<{ page: Page; errors: string[] }> {
    const page = await context.newPage();
    const errors: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(m.text());
    });
    page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    page.on('dialog', (d) => void d.accept()); // the beforeunload prompt while an upload runs
    await page.goto(url);
    return { page, errors };
  }

  async function completedItem(page: Page, name: string, timeout = 45_000): Promise<Record<string, string>> {
    const item = page.locator(`#completed li.done-item[data-name="${name}"]`);
    await item.waitFor({ timeout });
    return item.evaluate((e) => ({ ...(e as HTMLElement).dataset }) as Record<string, string>);
  }

  it('uploads two files (one of 64 MiB) over the WebSocket; both arrive intact; no console errors', async () => {
    // With a token: the page's WebSocket carries it as a `bearer.<token>` subprotocol entry, its fetches as a header.
    server = await startServer({ demo: true, tokens: { 'demo-token-1234': 'alice' } });
    const big = await makeFile('big-64MiB.bin', 64 * MiB);
    const small = await makeFile('notes.bin', 3 * MiB + 123);
    const { page, errors } = await openPage(`${server.base}/?token=demo-token-1234`);
    expect(await page.locator('h1').textContent()).toBe('Updraft');
    // The token is taken into the form and out of the address bar (and the history).
    expect(await page.locator('#opt-token').inputValue()).toBe('demo-token-1234');
    expect(page.url()).toBe(`${server.base}/`);
    await page.locator('#picker').setInputFiles([big.file, small.file]);
    // Both rows appear with their transport while running.
    await page.locator('#active li.row').first().waitFor();
    const bigDone = await completedItem(page, 'big-64MiB.bin', 60_000);
    const smallDone = await completedItem(page, 'notes.bin');
    expect(bigDone).toMatchObject({ size: String(64 * MiB), ws: String(64 * MiB), http: '0', resumed: '0' });
    expect(smallDone).toMatchObject({ size: String(3 * MiB + 123), ws: String(3 * MiB + 123), http: '0' });
    expect(await shaOf(path.join(server.dir, 'big-64MiB.bin'))).toBe(big.sha);
    expect(await shaOf(path.join(server.dir, 'notes.bin'))).toBe(small.sha);
    expect(await page.locator('#active-empty').isVisible()).toBe(true);
    expect(await page.locator('#done-count').textContent()).toBe('2 files');

    await fsp.mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'demo.png'), fullPage: true });
    // Phone width: nothing wider than the screen, and the page still reads.
    await page.setViewportSize({ width: 390, height: 844 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow).toBeLessThanOrEqual(0);
    await page.screenshot({ path: path.join(ARTIFACTS, 'demo-phone.png'), fullPage: true });
    expect(errors).toEqual([]);
    await page.close();
  });

  it('works with the API at the server\'s root (--prefix /)', async () => {
    server = await startServer({ demo: true, prefix: '/' });
    const f = await makeFile('rooted.bin', 2 * MiB + 5);
    const { page, errors } = await openPage(`${server.base}/`);
    await page.locator('#picker').setInputFiles([f.file]);
    const done = await completedItem(page, 'rooted.bin');
    expect(done).toMatchObject({ size: String(2 * MiB + 5) });
    expect(await shaOf(path.join(server.dir, 'rooted.bin'))).toBe(f.sha);
    expect(errors).toEqual([]);
    await page.close();
  });

  it('falls back to PUT when the server refuses the WebSocket, and completes', async () => {
    server = await startServer({ demo: true, authenticate: (req) => (req.headers['upgrade']?.toLowerCase() === 'websocket' ? null : 'anonymous') });
    const f = await makeFile('fallback.bin', 5 * MiB + 7);
    const { page, errors } = await openPage(`${server.base}/?chunkSize=${1 * MiB}`);
    await page.locator('#picker').setInputFiles([f.file]);
    const done = await completedItem(page, 'fallback.bin');
    expect(done).toMatchObject({ size: String(5 * MiB + 7), ws: '0', http: String(5 * MiB + 7) });
    expect(await shaOf(path.join(server.dir, 'fallback.bin'))).toBe(f.sha);
    // The only console error is Chromium reporting the refused handshake itself.
    expect(errors.filter((e) => !/WebSocket connection to .* failed/.test(e))).toEqual([]);
    await page.close();
  });

  /** Slow PUTs (the server's auth hook waits), so a test can act mid-upload without timing itself. */
  const slowPuts = async (req: { method: string }): Promise<string> => {
    if (req.method === 'PUT') await new Promise((r) => setTimeout(r, 40));
    return 'anonymous';
  };

  async function rowState(page: Page, name: string): Promise<Record<string, string>> {
    return page.locator(`#active li.row[data-name="${name}"]`).evaluate((e) => ({ ...(e as HTMLElement).dataset }) as Record<string, string>);
  }

  it('shows an upload cancelled elsewhere as failed with its code (Retry and Dismiss), not as still running', async () => {
    server = await startServer({ demo: true, authenticate: slowPuts });
    const f = await makeFile('elsewhere.bin', 8 * MiB);
    const { page, errors } = await openPage(`${server.base}/?transport=http&parallel=2&chunkSize=${256 * 1024}`);
    await page.locator('#picker').setInputFiles([f.file]);
    await page.waitForFunction(() => Number(document.querySelector('#active li.row')?.getAttribute('data-loaded') ?? 0) > 0, undefined, { timeout: 30_000 });
    const guid = (await rowState(page, 'elsewhere.bin')).guid!;
    // Another client (an admin, another tab) cancels it.
    expect((await fetch(`${server.base}/api/v1/files/upload-chunk?guid=${guid}`, { method: 'DELETE' })).status).toBe(200);
    await page.waitForFunction(() => document.querySelector('#active li.row')?.getAttribute('data-state') === 'failed', undefined, { timeout: 30_000 });
    expect(await rowState(page, 'elsewhere.bin')).toMatchObject({ state: 'failed', error: 'ERR_UPLOAD_CANCELLED' });
    const row = page.locator('#active li.row');
    expect(await row.locator('.error-text').isVisible()).toBe(true);
    expect(await row.locator('button').allTextContents()).toEqual(['Retry', 'Dismiss']);
    expect(await page.locator('#active-count').textContent()).toBe('1 failed');
    await row.locator('button', { hasText: 'Dismiss' }).click();
    expect(await page.locator('#active-empty').isVisible()).toBe(true);
    // The only console error is Chromium reporting the 410 of a chunk sent after the cancel.
    expect(errors.filter((e) => !/status of 410/.test(e))).toEqual([]);
    await page.close();
  });

  it('fails only the rows whose options the client refuses, keeps adding the other files, and Cancel removes such a row', async () => {
    server = await startServer({ demo: true });
    const a = await makeFile('bad-a.bin', 1000);
    const b = await makeFile('bad-b.bin', 2000);
    const { page, errors } = await openPage(`${server.base}/`);
    await page.locator('#settings-form summary').click();
    await page.locator('#opt-chunk').fill('0.0000001'); // rounds to a 0-byte chunk size
    await page.locator('#picker').setInputFiles([a.file, b.file]);
    for (const name of ['bad-a.bin', 'bad-b.bin']) {
      await page.locator(`#active li.row[data-name="${name}"][data-state="failed"]`).waitFor({ timeout: 10_000 });
      expect(await page.locator(`#active li.row[data-name="${name}"] .error-text`).textContent()).toMatch(/chunkSize/);
    }
    expect(await page.locator('#active-count').textContent()).toBe('2 failed');
    await page.locator('#active li.row[data-name="bad-a.bin"] button', { hasText: 'Dismiss' }).click();
    expect(await page.locator('#active li.row').count()).toBe(1);
    // With the setting fixed, Retry uploads it.
    await page.locator('#opt-chunk').fill('');
    await page.locator('#active li.row[data-name="bad-b.bin"] button', { hasText: 'Retry' }).click();
    await completedItem(page, 'bad-b.bin');
    expect(await shaOf(path.join(server.dir, 'bad-b.bin'))).toBe(b.sha);
    expect(errors).toEqual([]);
    await page.close();
  });

  it('does not resume a file picked again for another folder into the folder of its first upload', async () => {
    server = await startServer({ demo: true, authenticate: slowPuts });
    const size = 8 * MiB;
    const f = await makeFile('moved.bin', size);
    const { page, errors } = await openPage(`${server.base}/?transport=http&parallel=2&chunkSize=${256 * 1024}&target=folder-a`);
    await page.locator('#picker').setInputFiles([f.file]);
    await page.waitForFunction((min) => Number(document.querySelector('#active li.row')?.getAttribute('data-loaded') ?? 0) >= min, size / 4, { timeout: 30_000 });
    await page.goto(`${server.base}/?transport=http&parallel=4&chunkSize=${256 * 1024}&target=folder-b`);
    await page.locator('#picker').setInputFiles([f.file]);
    const done = await completedItem(page, 'moved.bin', 60_000);
    expect(done).toMatchObject({ resumed: '0', http: String(size) });
    expect(await shaOf(path.join(server.dir, 'folder-b', 'moved.bin'))).toBe(f.sha);
    expect(fs.existsSync(path.join(server.dir, 'folder-a', 'moved.bin'))).toBe(false);
    expect(errors).toEqual([]);
    await page.close();
  });

  it('resumes after a page reload mid-upload instead of restarting', async () => {
    // Slow PUTs (the server's auth hook waits) so the reload lands mid-upload, without timing the test itself.
    server = await startServer({
      demo: true,
      authenticate: async (req) => {
        if (req.method === 'PUT') await new Promise((r) => setTimeout(r, 40));
        return 'anonymous';
      },
    });
    const size = 12 * MiB;
    const f = await makeFile('reload.bin', size);
    const url = `${server.base}/?transport=http&parallel=2&chunkSize=${256 * 1024}`;
    const { page, errors } = await openPage(url);
    await page.locator('#picker').setInputFiles([f.file]);
    await page.waitForFunction((min) => Number(document.querySelector('#active li.row')?.getAttribute('data-loaded') ?? 0) >= min, size / 4, { timeout: 30_000 });
    await page.reload();
    // After the reload the page lists the unfinished upload, and picking the same file continues it.
    await page.locator('#resumable-list li', { hasText: 'reload.bin' }).waitFor();
    await page.locator('#picker').setInputFiles([f.file]);
    const done = await completedItem(page, 'reload.bin', 60_000);
    const sent = Number(done.ws) + Number(done.http);
    expect(Number(done.resumed)).toBeGreaterThanOrEqual(size / 4);
    expect(sent).toBeLessThan(size);
    expect(sent + Number(done.resumed)).toBe(size);
    expect(await shaOf(path.join(server.dir, 'reload.bin'))).toBe(f.sha);
    expect(await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('updraft:')))).toEqual([]);
    expect(errors).toEqual([]);
    await page.close();
  });
});
