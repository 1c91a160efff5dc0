#!/usr/bin/env node
'use strict';
require('../dist/cli/startup.js').deferZodLocales();
require('../dist/cli/brain.js')
  .main(process.argv)
  .then(
    () => process.exit(process.exitCode ?? 0),
    (err) => {
      process.stderr.write(`brain: ${err && err.message ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
