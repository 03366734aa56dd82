#!/usr/bin/env node
// The package bin: runs the compiled CLI (`npm run build` makes dist/; `npm start` builds first).
// A stop signal that comes while the CLI's modules load (a few hundred ms) is kept and handed to the CLI, which stops
// cleanly once it can, instead of the process ending by the default action (exit 143) before any handler exists.
const early = [];
const keep = (signal) => early.push(signal);
process.on('SIGINT', keep);
process.on('SIGTERM', keep);
const { run } = await import('../dist/src/cli/main.js');
process.off('SIGINT', keep);
process.off('SIGTERM', keep);
run(early);
