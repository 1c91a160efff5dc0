// The CLI's bundle (`npm run bundle`, after tsc): dist/cli/brain.js and everything it requires by a literal path, in
// one file, so `brain runs` resolves and reads one module instead of hundreds (bin/brain.js picks it). Left out: the
// services' handlers (`import('./service.js')`, `import('./run.js')`: `brain service`, `up` and `setup` run unbundled)
// and zod's ~50 locales (the stand-in of cli/zod-locales.ts loads them from node_modules on first use).
import { build } from 'esbuild';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

// V8 checks a code cache against its source's length, not its text: a cache of the previous bundle must go with it.
rmSync(`${root}dist/cli/brain.bundle.js.cache`, { force: true });

await build({
  absWorkingDir: root,
  entryPoints: ['dist/cli/brain.js'],
  outfile: 'dist/cli/brain.bundle.js',
  bundle: true,
  platform: 'node',
  target: 'node20',
  minifyWhitespace: true,
  minifySyntax: true,
  external: ['./service.js', './run.js'],
  logLevel: 'warning',
  plugins: [
    {
      name: 'zod-locales-on-first-use',
      setup(b) {
        b.onResolve({ filter: /\/locales\/index\.cjs$/ }, (args) => (args.importer.includes('/node_modules/zod/') ? { path: `${root}dist/cli/zod-locales.js` } : undefined));
      },
    },
  ],
});
