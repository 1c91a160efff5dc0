/**
 * Start-up cost of the command line, kept low (`brain runs` within 2x a bare `node -e 0`).
 *
 * zod's CommonJS build loads all of its ~50 message locales when it is first required (for `z.locales`), which is
 * half of zod's load time; the pipeline uses only the default (English) one, which zod loads on its own. The
 * stand-in below takes the place of the locales' index and loads the real one on the first read of any locale, so
 * `z.locales.xx` still works and costs its load only when used.
 */
import Module from 'node:module';

const LOCALES = 'zod/v4/locales';

/** An object that reads through to `load()`'s, calling it on first use; it answers `__esModule` without loading. */
export function localesStandIn(): Record<string | symbol, unknown> {
  let real: Record<string | symbol, unknown> | undefined;
  const load = () => {
    if (real === undefined) {
      const path = require.resolve(LOCALES);
      if (require.cache[path]?.exports === standIn) delete require.cache[path];
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- the real index, loaded on first use
      real = require(path) as Record<string | symbol, unknown>;
    }
    return real;
  };
  // `__esModule` answered without loading: zod's `__importStar` then keeps the object as it is and reads nothing else.
  const standIn: Record<string | symbol, unknown> = new Proxy(
    {},
    {
      get: (_t, key) => (key === '__esModule' ? true : load()[key]),
      has: (_t, key) => key in load(),
      ownKeys: () => Reflect.ownKeys(load()),
      getOwnPropertyDescriptor: (_t, key) => {
        const d = Reflect.getOwnPropertyDescriptor(load(), key);
        return d === undefined ? undefined : { ...d, configurable: true };
      },
    },
  );
  return standIn;
}

/**
 * Puts the stand-in into Node's module cache (`require.cache`, a public API) for the unbundled build; required by
 * bin/brain.js before anything else. The bundle gets it from the bundler instead (scripts/bundle-cli.mjs).
 */
export function deferZodLocales(): void {
  let path: string;
  try {
    path = require.resolve(LOCALES);
  } catch {
    return; // a zod without this entry point: nothing to defer
  }
  if (require.cache[path] !== undefined) return;
  const module = new Module(path);
  module.filename = path;
  module.loaded = true;
  module.exports = localesStandIn();
  require.cache[path] = module;
}
