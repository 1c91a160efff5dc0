/**
 * The runs view with 20 runs stored and with 10,000: `GET /api/runs?limit=25` through the web service, median of
 * repeated requests. Each run is written (four at a time, as runs barely overlap under their locks) through the services' own record API (`createStepRecords`): four steps,
 * each opened, its container recorded, ended and closed, as a real chain writes them.
 *
 *   node dist/bench/web-runs.js [--runs 10000] [--requests 40]
 *   BENCH_SECTIONS=web npm run bench      (the same, as a row of the bench table)
 */
import { connect } from '@nats-io/transport-node';
import { createLogger } from '../shared/logger';
import { openRuns } from '../shared/nats';
import { createStepRecords, STEPS, type Step } from '../shared/record';
import { ensureTopology } from '../services/composition-root';
import { createWeb } from '../services/web/service';
import { startNatsServer } from '../kit/nats-server';

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
};

const ENDINGS: Record<Step, { subject: string; body: Record<string, unknown> }[]> = {
  transform: [
    { subject: 'transform.done', body: { outcome: 'new-data', exitCode: 0, durationMs: 700 } },
    { subject: 'data.new', body: {} },
  ],
  load: [
    {
      subject: 'load.done',
      body: {
        outcome: 'loaded',
        loads: [
          { target: 'processed', outcome: 'loaded', exitCode: 0 },
          { target: 'viz', outcome: 'loaded', exitCode: 0 },
        ],
        durationMs: 1000,
      },
    },
    { subject: 'model.trigger', body: { reason: 'loaded' } },
  ],
  'model-trigger': [{ subject: 'model.mismatch', body: { reason: 'mismatch' } }],
  train: [{ subject: 'model.done', body: { outcome: 'trained', exitCode: 0, durationMs: 500 } }],
};
const CONTAINER: Record<Step, 'transform' | 'load-processed' | 'model-trigger' | 'train'> = {
  transform: 'transform',
  load: 'load-processed',
  'model-trigger': 'model-trigger',
  train: 'train',
};

export interface WebRunsResult {
  limit: number;
  /** Median of `GET /api/runs?limit=25` with 20 runs stored, and with `total`. */
  smallMs: number;
  largeMs: number;
  total: number;
  ratio: number;
  writeSeconds: number;
  /** Runs on a page far back in the history (the cursor works at depth). */
  deepPageRuns: number;
}

/** The runs view with 20 runs stored, then with `total`: the median of `requests` requests each (after five warm-ups). */
export async function benchWebRuns(total = 10_000, requests = 40): Promise<WebRunsResult> {
  const nats = await startNatsServer();
  const nc = await connect({ servers: nats.url, name: 'bench-web' });
  try {
    await ensureTopology(nc, { lockTtlMs: 90_000, ackWaitMs: 30_000 });
    const records = createStepRecords({ kv: await openRuns(nc), logger: createLogger('bench', 'silent') });
    let seq = 1;
    async function writeRun(i: number): Promise<void> {
      const runId = `bench${String(i).padStart(6, '0')}`;
      for (const step of STEPS) {
        const h = await records.open({ runId, step, subject: step === 'transform' ? 'transform.trigger' : 'x', trigger: seq++, reason: 'bench' });
        await h.container(CONTAINER[step], { id: `c${i}${step}`, name: `brain-${step}-${runId}`, state: 'exited', exitCode: 0, durationMs: 400 });
        await h.end(ENDINGS[step].map((e) => ({ ...e, msgId: `${runId}:${e.subject}` })));
        await h.close();
      }
    }
    async function writeRuns(from: number, to: number): Promise<void> {
      let next = from;
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          while (next < to) await writeRun(next++);
        }),
      );
    }
    const web = createWeb({
      connect: ({ name }) => connect({ servers: nats.url, name }),
      logger: createLogger('web', 'silent'),
      config: { host: '127.0.0.1', port: 0, transformSchedule: '0 * * * *' },
    });
    await web.start();
    const measure = async (): Promise<number> => {
      const times: number[] = [];
      for (let i = 0; i < requests + 5; i++) {
        const t0 = performance.now();
        const res = await fetch(`http://127.0.0.1:${web.port}/api/runs?limit=25`);
        const body = (await res.json()) as { runs: unknown[] };
        if (res.status !== 200 || body.runs.length === 0) throw new Error(`GET /api/runs answered ${res.status}`);
        if (i >= 5) times.push(performance.now() - t0); // five warm-up requests
      }
      times.sort((a, b) => a - b);
      return times[Math.floor(times.length / 2)] ?? NaN;
    };
    await writeRuns(0, 20);
    const small = await measure();
    const started = performance.now();
    await writeRuns(20, total);
    const wrote = (performance.now() - started) / 1000;
    const large = await measure();
    const deep = await fetch(`http://127.0.0.1:${web.port}/api/runs?limit=25&before=${Math.floor(total * 8)}`).then((r) => r.json() as Promise<{ runs: unknown[] }>);
    await web.stop();
    return { limit: 25, smallMs: small, largeMs: large, total, ratio: large / small, writeSeconds: wrote, deepPageRuns: deep.runs.length };
  } finally {
    await nc.close();
    await nats.stop();
    await nats.cleanup();
  }
}

async function main(): Promise<void> {
  const total = arg('runs', 10_000);
  const r = await benchWebRuns(total, arg('requests', 40));
  process.stdout.write(
    `${JSON.stringify({ bench: 'web runs view', limit: r.limit, runs20MedianMs: Number(r.smallMs.toFixed(2)), [`runs${total}MedianMs`]: Number(r.largeMs.toFixed(2)), ratio: Number(r.ratio.toFixed(2)), writeSeconds: Number(r.writeSeconds.toFixed(1)), deepPageRuns: r.deepPageRuns })}\n`,
  );
}

// `npm run bench` imports benchWebRuns; `node dist/bench/web-runs.js` runs it alone.
if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`${String(err)}\n`);
    process.exit(1);
  });
}
