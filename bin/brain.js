#!/usr/bin/env node
'use strict';
/*
 * The launcher. The commands that only talk to NATS load the CLI's bundle (`npm run bundle`: one file, so Node
 * resolves and reads one module instead of hundreds); `service`, `up`, `setup` and help (commander alone) load the
 * build as compiled, as does everything when there is no bundle.
 */
const { existsSync } = require('node:fs');
const { join } = require('node:path');

const bundled = new Set(['trigger', 'watch', 'runs', 'logs', 'status', 'pause', 'resume']);
const command = process.argv.slice(2).find((arg) => !arg.startsWith('-'));
const bundle = join(__dirname, '..', 'dist', 'cli', 'brain.bundle.js');
const useBundle = bundled.has(command) && existsSync(bundle);

// The bundle carries its own stand-in for zod's locales; the compiled build gets it through Node's module cache.
if (!useBundle) require('../dist/cli/startup.js').deferZodLocales();
require(useBundle ? bundle : '../dist/cli/brain.js')
  .main(process.argv)
  .then(
    () => process.exit(process.exitCode ?? 0),
    (err) => {
      process.stderr.write(`brain: ${err && err.message ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
