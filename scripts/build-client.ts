/**
 * `npm run build:client`: writes the browser client and the demo page to dist/browser/ (updraft-client.js,
 * updraft-demo.js, updraft-demo.css, index.html), which a compiled engine serves without needing esbuild at run time
 * (src/main/static-routes.ts). Run from source with tsx: `node --import tsx scripts/build-client.ts [outDir]`.
 */
import path from 'node:path';
import { PREBUILT_DIR, buildBrowserAssets, writeBrowserAssets } from '../src/main/static-routes.js';

const out = process.argv[2] ? path.resolve(process.argv[2]) : PREBUILT_DIR;
const assets = await buildBrowserAssets();
await writeBrowserAssets(assets, out);
const kib = (s: string): string => `${(Buffer.byteLength(s) / 1024).toFixed(1)} KiB`;
process.stdout.write(`dist/browser: updraft-client.js ${kib(assets.client)}, updraft-demo.js ${kib(assets.demo)} -> ${out}\n`);
