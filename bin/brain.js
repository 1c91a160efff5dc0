#!/usr/bin/env node
'use strict';
/*
 * The launcher. The commands that only talk to NATS load the CLI's bundle (`npm run bundle`: one file, so Node
 * resolves and reads one module instead of hundreds); `service`, `up`, `setup` and help (commander alone) load the
 * build as compiled, as does everything when there is no bundle.
 */
const { existsSync, readFileSync, renameSync, writeFileSync } = require('node:fs');
const { dirname, join } = require('node:path');
const Module = require('node:module');
const vm = require('node:vm');

const bundled = new Set(['trigger', 'watch', 'runs', 'logs', 'status', 'pause', 'resume']);
const command = process.argv.slice(2).find((arg) => !arg.startsWith('-'));
const bundle = join(__dirname, '..', 'dist', 'cli', 'brain.bundle.js');

/**
 * Loads the bundle with V8's code cache beside it (`brain.bundle.js.cache`), which Node 20 has no switch for: the
 * functions a command compiled are kept for the next start. A cache that is missing or that V8 rejects (another
 * Node, a rebuilt bundle) is written after the command, atomically; where the folder is read-only, there is none.
 * @returns the bundle's exports and a function that writes the cache when it needs writing
 */
function loadBundle() {
  const cacheFile = `${bundle}.cache`;
  let cached;
  try {
    cached = readFileSync(cacheFile);
  } catch {
    cached = undefined;
  }
  const script = new vm.Script(Module.wrap(readFileSync(bundle, 'utf8')), { filename: bundle, cachedData: cached });
  const mod = new Module(bundle, module);
  mod.filename = bundle;
  script.runInThisContext()(mod.exports, Module.createRequire(bundle), mod, bundle, dirname(bundle));
  const keepCache = () => {
    if (cached !== undefined && !script.cachedDataRejected) return;
    try {
      const tmp = `${cacheFile}.${process.pid}`;
      writeFileSync(tmp, script.createCachedData());
      renameSync(tmp, cacheFile);
    } catch {
      // a read-only install: no cache, the same start-up as without one
    }
  };
  return { main: mod.exports.main, keepCache };
}

let cli;
if (bundled.has(command) && existsSync(bundle)) cli = loadBundle();
else {
  // The bundle carries its own stand-in for zod's locales; the compiled build gets it through Node's module cache.
  require('../dist/cli/startup.js').deferZodLocales();
  cli = { main: require('../dist/cli/brain.js').main, keepCache: () => undefined };
}
cli.main(process.argv).then(
  () => {
    cli.keepCache();
    process.exit(process.exitCode ?? 0);
  },
  (err) => {
    process.stderr.write(`brain: ${err && err.message ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
