/**
 * Soak: N chains back to back, each under one random fault (a stage's service killed -9 mid-stage and
 * restarted, nats-server killed -9 and restarted, a failing stage, a duplicate trigger, a concurrent trigger),
 * then counts runs started, completed correctly, lost, doubled, wrong (a terminal outcome other than the one
 * the chain's fault calls for), orphaned containers and lock anomalies.
 *
 * Each chain knows its runs' expected end: a fault the pipeline must ride out (a restart, a NATS crash, a
 * duplicate) ends `model.done trained`; only the deliberately failing stage may end `failed` (with its own exit
 * code), and only the concurrent trigger `busy`. A `failed` caused by an injected restart is a soak failure.
 *
 * `npm run soak` (bench/soak.ts) runs it at length; test/soak.test.ts runs five chains.
 */
import { Kvm } from '@nats-io/kv';
import { LOCKS_BUCKET } from '../shared/nats';
import { startNatsServer } from './nats-server';
import { ClusterPipeline, type StageService } from './cluster-pipeline';
import { waitForContainer } from './containers';
import { isRunTerminal, type RecordedEvent } from './event-log';

export const FAULTS = ['restart-service', 'kill-nats', 'failing-stage', 'duplicate-trigger', 'concurrent-trigger'] as const;
export type Fault = (typeof FAULTS)[number];

/** The terminal event a run must end with: subject, outcome and, for a deliberate failure, the stage's exit code. */
export interface ExpectedEnd {
  subject: 'transform.done' | 'load.done' | 'model.done';
  outcome: string;
  exitCode?: number;
}

export interface SoakReport {
  chains: { fault: Fault; detail: string; runIds: string[]; expected: Record<string, ExpectedEnd> }[];
  started: number;
  /** Runs that ended exactly once, with the terminal outcome their chain called for. */
  completed: number;
  lost: string[];
  doubled: string[];
  /** Runs whose terminal outcome is not the expected one (e.g. `failed` after an injected restart). */
  wrong: string[];
  orphaned: string[];
  lockAnomalies: string[];
  /** Terminal outcome of each run, e.g. `model.done trained`. */
  outcomes: Record<string, number>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** How a run that rides out its fault ends: new data, both loads, a mismatch, training. */
const TRAINED: ExpectedEnd = { subject: 'model.done', outcome: 'trained' };
const describeEnd = (e: RecordedEvent) =>
  `${e.subject} ${e.data.outcome}${e.data.exitCode !== undefined && e.data.exitCode !== null ? ` exit ${e.data.exitCode}` : ''}${e.data.error !== undefined ? ` (${e.data.error})` : ''}`;
const describeExpected = (e: ExpectedEnd) => `${e.subject} ${e.outcome}${e.exitCode !== undefined ? ` exit ${e.exitCode}` : ''}`;
const isExpected = (e: RecordedEvent, want: ExpectedEnd) =>
  e.subject === want.subject && e.data.outcome === want.outcome && (want.exitCode === undefined || e.data.exitCode === want.exitCode);
const LOCK_TTL_S = 6;
const RUN_DEADLINE_MS = 60_000;

/** mulberry32: a small seeded generator, so a seed replays the same faults. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export async function runSoak(opts: { chains: number; seed: number; log?: (line: string) => void }): Promise<SoakReport> {
  const log = opts.log ?? (() => undefined);
  const rand = random(opts.seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)] as T;
  const nats = await startNatsServer();
  const report: SoakReport = { chains: [], started: 0, completed: 0, lost: [], doubled: [], wrong: [], orphaned: [], lockAnomalies: [], outcomes: {} };
  try {
    const p = await ClusterPipeline.start({
      natsUrls: [nats.url],
      env: { ACK_WAIT: '2', LOCK_TTL: String(LOCK_TTL_S) },
      envFiles: {
        // Run ids tell the stand-ins to fail: `failt…` in the transform, `failm…` in training.
        transform: {
          SCRIPT:
            'case "$BRAIN_RUN_ID" in failt*) echo "transform failing"; exit 3;; esac; sleep 2; echo rows > "/app/processed/$BRAIN_RUN_ID.csv"; echo plot > "/app/viz/$BRAIN_RUN_ID.png"; echo "New data was transformed"',
        },
        loadProcessed: { TARGET: 'processed', SLEEP: '1' },
        loadViz: { TARGET: 'viz', SLEEP: '1' },
        train: { SCRIPT: 'case "$BRAIN_RUN_ID" in failm*) echo "training failing"; exit 4;; esac; sleep 1; echo "trained $BRAIN_RUN_ID"' },
      },
    });
    try {
      let order: Fault[] = [];
      for (let chain = 0; chain < opts.chains; chain++) {
        // Every fault once per cycle of five, in a seeded order.
        if (order.length === 0) order = [...FAULTS].sort(() => rand() - 0.5);
        const fault = order.shift() as Fault;
        const started = Date.now();
        const { runIds, detail, expected } = await injectChain(p, fault, pick, nats);
        const ends = await Promise.allSettled(runIds.map((runId) => p.waitForRunEnd(runId, RUN_DEADLINE_MS)));
        const summary = ends
          .map((e, i) => {
            const want = expected[runIds[i] ?? ''];
            if (e.status !== 'fulfilled') return `${runIds[i]}: LOST`;
            const verdict = want !== undefined && isExpected(e.value, want) ? 'ok' : `WRONG, expected ${want !== undefined ? describeExpected(want) : '?'}`;
            return `${runIds[i]}: ${describeEnd(e.value)} [${verdict}]`;
          })
          .join(', ');
        log(`chain ${chain + 1}/${opts.chains} ${fault} (${detail}) in ${Date.now() - started} ms: ${summary}`);
        ends.forEach((e, i) => {
          const runId = runIds[i] ?? '';
          const want = expected[runId];
          if (e.status === 'fulfilled' && want !== undefined && isExpected(e.value, want)) return;
          // What the services said about a run that went wrong, for its diagnosis.
          for (const [name, proc] of p.processes) for (const line of proc.output.filter((l) => l.includes(runId)).slice(-15)) log(`  ${name}: ${line}`);
          for (const w of p.lockWrites.filter((w) => w.runId === runId || w.operation !== 'PUT').slice(-20)) {
            log(`  lock ${w.key} rev ${w.revision} ${w.operation} ${w.runId ?? ''} ${w.holder ?? ''} at ${w.created.toISOString()}`);
          }
        });
        report.chains.push({ fault, detail, runIds, expected });
      }
      await sleep(2000); // late duplicates would show up here
      const runIds = report.chains.flatMap((c) => c.runIds);
      report.started = runIds.length;
      const starts = { transform: p.starts('transform'), load: p.starts('load'), train: p.starts('train') };
      for (const chain of report.chains) {
        for (const runId of chain.runIds) {
          const terminals = p.eventsOf(runId).filter(isRunTerminal);
          const first = terminals[0];
          const want = chain.expected[runId];
          if (first === undefined) report.lost.push(runId);
          else {
            const key = `${first.subject} ${String(first.data.outcome)}`;
            report.outcomes[key] = (report.outcomes[key] ?? 0) + 1;
            if (want !== undefined && isExpected(first, want)) {
              if (terminals.length === 1) report.completed++;
            } else {
              report.wrong.push(
                `${runId} (seed ${opts.seed}, ${chain.fault}: ${chain.detail}): expected ${want !== undefined ? describeExpected(want) : '?'}, got ${describeEnd(first)}`,
              );
            }
          }
          if (terminals.length > 1) report.doubled.push(`${runId}: ${terminals.length} terminal events (${terminals.map((e) => `${e.subject} ${e.data.outcome}`).join(', ')})`);
          for (const [stage, lines] of Object.entries(starts)) {
            const mine = lines.filter((l) => l.split(' ')[0] === runId);
            if (new Set(mine).size !== mine.length) report.doubled.push(`${runId}: ${stage} container started ${mine.length} times (${mine.join(', ')})`);
          }
        }
      }
      const deadline = Date.now() + 15_000;
      let left = await p.containers(runIds);
      while (left.length > 0 && Date.now() < deadline) {
        await sleep(500);
        left = await p.containers(runIds);
      }
      report.orphaned = left.map((c) => `${c.Names.join(',')} (run ${c.runId})`);
      report.lockAnomalies.push(...p.lockAnomalies);
      const kv = await new Kvm(p.client).open(LOCKS_BUCKET);
      for (const key of ['transform', 'model']) {
        const entry = await kv.get(key);
        if (entry?.operation === 'PUT' && Date.now() - entry.created.getTime() < LOCK_TTL_S * 1000)
          report.lockAnomalies.push(`lock ${key} still held at the end: ${entry.string()}`);
      }
    } finally {
      await p.close();
    }
  } finally {
    await nats.stop('SIGKILL');
    await nats.cleanup();
  }
  return report;
}

type Nats = Awaited<ReturnType<typeof startNatsServer>>;

/** Triggers one chain with its fault injected; returns the run ids it started. */
async function injectChain(
  p: ClusterPipeline,
  fault: Fault,
  pick: <T>(items: readonly T[]) => T,
  nats: Nats,
): Promise<{ runIds: string[]; detail: string; expected: Record<string, ExpectedEnd> }> {
  switch (fault) {
    case 'restart-service': {
      const [service, stage] = pick<[StageService, string]>([
        ['transformer', 'transform'],
        ['loader', 'load-processed'],
        ['trainer', 'train'],
      ]);
      const runId = p.runId();
      await p.publish('transform.trigger', { runId });
      await waitForContainer(runId, stage, 30_000);
      await p.kill(service, 0);
      await p.spawn(service, 0);
      return { runIds: [runId], detail: `${service} killed -9 during ${stage}`, expected: { [runId]: TRAINED } };
    }
    case 'kill-nats': {
      const runId = p.runId();
      await p.publish('transform.trigger', { runId });
      await waitForContainer(runId, 'transform', 30_000);
      await nats.stop('SIGKILL');
      await sleep(1000);
      await nats.restart();
      return { runIds: [runId], detail: 'nats-server killed -9 during transform', expected: { [runId]: TRAINED } };
    }
    case 'failing-stage': {
      const prefix = pick(['failt', 'failm']);
      const runId = p.runId(prefix);
      await p.publish('transform.trigger', { runId });
      const expected: ExpectedEnd = prefix === 'failt' ? { subject: 'transform.done', outcome: 'failed', exitCode: 3 } : { subject: 'model.done', outcome: 'failed', exitCode: 4 };
      return { runIds: [runId], detail: prefix === 'failt' ? 'transform exits 3' : 'training exits 4', expected: { [runId]: expected } };
    }
    case 'duplicate-trigger': {
      const runId = p.runId();
      await p.publish('transform.trigger', { runId }, `trigger-${runId}`);
      await p.publish('transform.trigger', { runId }, `trigger-${runId}`);
      return { runIds: [runId], detail: 'the trigger published twice with one message id', expected: { [runId]: TRAINED } };
    }
    case 'concurrent-trigger': {
      const runId = p.runId();
      await p.publish('transform.trigger', { runId });
      await waitForContainer(runId, 'transform', 30_000);
      const second = p.runId();
      await p.publish('transform.trigger', { runId: second });
      return {
        runIds: [runId, second],
        detail: 'a second run triggered during the transform',
        expected: { [runId]: TRAINED, [second]: { subject: 'transform.done', outcome: 'busy' } },
      };
    }
  }
}

export function printReport(report: SoakReport, write: (line: string) => void): void {
  write(`runs started     ${report.started}`);
  write(
    `runs completed   ${report.completed}  correctly (all ends: ${Object.entries(report.outcomes)
      .map(([k, n]) => `${n}× ${k}`)
      .join(', ')})`,
  );
  write(`runs lost        ${report.lost.length}${report.lost.length > 0 ? `: ${report.lost.join(', ')}` : ''}`);
  write(`runs doubled     ${report.doubled.length}${report.doubled.map((d) => `\n  ${d}`).join('')}`);
  write(`runs wrong       ${report.wrong.length}${report.wrong.map((d) => `\n  ${d}`).join('')}`);
  write(`orphaned         ${report.orphaned.length}${report.orphaned.map((d) => `\n  ${d}`).join('')}`);
  write(`lock anomalies   ${report.lockAnomalies.length}${report.lockAnomalies.map((d) => `\n  ${d}`).join('')}`);
}

export const failed = (r: SoakReport) => r.lost.length + r.doubled.length + r.wrong.length + r.orphaned.length + r.lockAnomalies.length > 0;
