/**
 * The README's dashboard screenshots: a pipeline of every service on the stand-in stages, a few runs of each kind
 * (new data, no new data, a failed training, a model run), then Debian's chromium photographs the grid and a run
 * page. `npx tsc -p tsconfig.json && node dist/kit/screenshots.js [dir]` (default docs/).
 */
import { resolve } from 'node:path';
import { chromium } from 'playwright-core';
import { SERVICE_NAMES } from '../services/index';
import { Pipeline } from './pipeline';
import { writeEnvFiles, type EnvFiles } from './run-dirs';

const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** The port the pipeline's web service took (WEB_PORT=0), from its "listening" log line. */
export function webPortOf(lines: readonly string[]): number {
  for (const line of lines) {
    try {
      const entry = JSON.parse(line) as { msg?: string; port?: unknown };
      if (entry.msg === 'web service listening' && typeof entry.port === 'number') return entry.port;
    } catch {
      // not a JSON log line
    }
  }
  throw new Error('the web service logged no listening port');
}

/** Each run: what the stand-ins do, and how it is triggered. */
const RUNS: { pipeline: 'transform' | 'model'; reason: string; envFiles: EnvFiles }[] = [
  { pipeline: 'transform', reason: 'nightly data drop', envFiles: { transform: { NEW_DATA: '1', SLEEP: '2' } } },
  { pipeline: 'transform', reason: 'nothing new yet', envFiles: { transform: { SLEEP: '1' } } },
  { pipeline: 'transform', reason: 'new survey batch', envFiles: { transform: { NEW_DATA: '1', SLEEP: '3' }, train: { SLEEP: '2' } } },
  { pipeline: 'model', reason: 'retrain after a fix', envFiles: { train: { SLEEP: '1', EXIT_CODE: '1' } } },
  { pipeline: 'transform', reason: 'weekly refresh', envFiles: { transform: { NEW_DATA: '1', SLEEP: '4', TRAILING: '1' }, train: { SLEEP: '3' } } },
];

async function main(dir: string): Promise<void> {
  const pipeline = await Pipeline.start({ services: SERVICE_NAMES, env: { TRANSFORM_SCHEDULE: '0 6 * * *' } });
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS, headless: true });
  try {
    const origin = `http://127.0.0.1:${webPortOf(pipeline.logLines)}`;
    let last = '';
    for (const run of RUNS) {
      writeEnvFiles(pipeline.dirs.env, run.envFiles);
      const res = await fetch(`${origin}/api/runs`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ pipeline: run.pipeline, reason: run.reason }),
      });
      const { runId } = (await res.json()) as { runId: string };
      await pipeline.waitForRunEnd(runId, 120_000);
      if (run.pipeline === 'transform' && run.envFiles.transform?.NEW_DATA === '1') last = runId;
    }
    const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    const grid = await context.newPage();
    await grid.goto(`${origin}/`);
    await grid.waitForSelector('body[data-ready="grid"]');
    await grid.waitForSelector('body[data-status="loaded"]');
    await grid.waitForSelector('#chart canvas');
    await grid.waitForTimeout(300);
    await grid.screenshot({ path: resolve(dir, 'dashboard-grid.png'), fullPage: true });
    const page = await context.newPage();
    await page.goto(`${origin}/runs/${last}`);
    await page.waitForSelector('body[data-log-ended="true"]');
    await page.screenshot({ path: resolve(dir, 'dashboard-run.png'), fullPage: true });
    process.stdout.write(`wrote ${resolve(dir, 'dashboard-grid.png')} and ${resolve(dir, 'dashboard-run.png')}\n`);
  } finally {
    await browser.close();
    await pipeline.close();
  }
}

if (require.main === module) {
  main(process.argv[2] ?? resolve(__dirname, '../../docs')).catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}
