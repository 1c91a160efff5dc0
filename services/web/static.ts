import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

/**
 * The dashboard's files, shipped in the package: the page (services/web/public) and the chart library (uPlot, from
 * node_modules). Nothing is fetched from elsewhere; the page works with no internet.
 */
export interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

export interface Assets {
  /** A hash of every asset: the path segment under /assets/, so a new release is never served from a stale cache. */
  readonly version: string;
  /** The page, with its asset URLs under the current version. */
  readonly page: Asset;
  get(name: string): Asset | undefined;
}

/** From dist/services/web (compiled) or services/web (sources), the repository's (or the image's /app) root. */
const ROOT = resolve(__dirname, __dirname.includes(`${join('dist', 'services')}`) ? '../../..' : '../..');
export const PUBLIC_DIR = join(ROOT, 'services', 'web', 'public');

const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
  '.svg': 'image/svg+xml',
};

const typeOf = (file: string) => TYPES[file.slice(file.lastIndexOf('.'))] ?? 'application/octet-stream';
const etagOf = (body: Buffer) => `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;

/** Reads every asset once. */
export function loadAssets(): Assets {
  const uplot = join(dirname(require.resolve('uplot/package.json')), 'dist');
  const files: Record<string, string> = {
    'app.js': join(PUBLIC_DIR, 'app.js'),
    'app.css': join(PUBLIC_DIR, 'app.css'),
    'favicon.svg': join(PUBLIC_DIR, 'favicon.svg'),
    'uplot.js': join(uplot, 'uPlot.esm.js'),
    'uplot.css': join(uplot, 'uPlot.min.css'),
  };
  const assets = new Map<string, Asset>();
  const whole = createHash('sha256');
  for (const [name, file] of Object.entries(files)) {
    const body = readFileSync(file);
    whole.update(name).update(body);
    assets.set(name, { body, type: typeOf(name), etag: etagOf(body) });
  }
  const template = readFileSync(join(PUBLIC_DIR, 'index.html'), 'utf8');
  whole.update(template);
  const version = whole.digest('hex').slice(0, 12);
  const html = Buffer.from(template.replaceAll('{{v}}', version));
  return { version, page: { body: html, type: typeOf('index.html'), etag: etagOf(html) }, get: (name) => assets.get(name) };
}
