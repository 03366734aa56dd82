#!/usr/bin/env node
// The package bin: runs the compiled CLI (`npm run build` makes dist/; `npm start` builds first).
import { run } from '../dist/src/cli/main.js';
run();
