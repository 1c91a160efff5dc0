/**
 * Start-up cost of the command line, kept low (`brain runs` within 2x a bare `node -e 0`). Required by bin/brain.js
 * before anything else.
 *
 * zod's CommonJS build loads all of its ~50 message locales when it is first required (for `z.locales`), which is
 * half of zod's load time; the pipeline uses only the default (English) one, which zod loads on its own. This puts a
 * stand-in for the locales' index into Node's module cache (`require.cache`, a public API) that loads the real index
 * on the first read of any locale, so `z.locales.xx` still works and costs its load only when used.
 */
import Module from 'node:module';

export function deferZodLocales(): void {
  let path: string;
  try {
    path = require.resolve('zod/v4/locales');
  } catch {
    return; // a zod without this entry point: nothing to defer
  }
  if (require.cache[path] !== undefined) return;
  let real: Record<string | symbol, unknown> | undefined;
  const load = () => {
    if (real === undefined) {
      delete require.cache[path];
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- the real index, loaded on first use
      real = require(path) as Record<string | symbol, unknown>;
    }
    return real;
  };
  const standIn = new Module(path);
  standIn.filename = path;
  standIn.loaded = true;
  // `__esModule` answered without loading: zod's `__importStar` then keeps the object as it is and reads nothing else.
  standIn.exports = new Proxy({} as Record<string | symbol, unknown>, {
    get: (_t, key) => (key === '__esModule' ? true : load()[key]),
    has: (_t, key) => key in load(),
    ownKeys: () => Reflect.ownKeys(load()),
    getOwnPropertyDescriptor: (_t, key) => {
      const d = Reflect.getOwnPropertyDescriptor(load(), key);
      return d === undefined ? undefined : { ...d, configurable: true };
    },
  });
  require.cache[path] = standIn;
}
