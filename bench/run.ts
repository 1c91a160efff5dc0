/**
 * `npm run bench`: the pipeline against the floor it stands on, measured in the same run, printed as
 * a table of ratios (medians of BENCH_REPS repetitions). Sizes come from the environment:
 *
 *   BENCH_REPS=5  BENCH_LOG_MB=50  BENCH_MEM_MB=256  BENCH_EVENTS=500  BENCH_CONTENDERS=50
 *   BENCH_LOCK_ROUNDS=20  BENCH_TRIGGERS=1000  BENCH_LOAD_BATCHES=5  BENCH_COMPOSE=1  BENCH_WEB_RUNS=10000
 *   BENCH_SECTIONS=chain,floor,logs,memory,bus,footprint,load,web,compose,cli,backends  BENCH_CPU_PROF=<dir> (profiles the services)
 */
import { buildTestImages } from '../kit/stand-ins';
import { SERVICE_NAMES } from '../services/index';
import { benchBackends } from './backends';
import { benchBus } from './bus';
import { benchChain, type HopParts } from './chain';
import { benchCliStartup } from './cli';
import { FLOOR_NETWORKS, benchFloor } from './floor';
import { composeFootprint, serviceMemory } from './footprint';
import { benchLoad } from './load';
import { benchLogMemory, benchLogScan } from './logscan';
import { startStack } from './stack';
import { benchWebRuns } from './web-runs';
import { envInt, median, percentile, removeBenchContainers } from './util';

const MB = 1024 * 1024;
const cfg = {
  reps: envInt('BENCH_REPS', 5),
  logBytes: envInt('BENCH_LOG_MB', 50) * MB,
  memBytes: envInt('BENCH_MEM_MB', 256) * MB,
  events: envInt('BENCH_EVENTS', 500),
  contenders: envInt('BENCH_CONTENDERS', 50),
  lockRounds: envInt('BENCH_LOCK_ROUNDS', 20),
  triggers: envInt('BENCH_TRIGGERS', 1000),
  loadBatches: envInt('BENCH_LOAD_BATCHES', 5),
  webRuns: envInt('BENCH_WEB_RUNS', 10_000),
  sections: new Set((process.env.BENCH_SECTIONS ?? 'chain,floor,logs,memory,bus,footprint,load,web,compose,cli,backends').split(',').filter((s) => s !== '')),
  cpuProf: process.env.BENCH_CPU_PROF,
};
if (process.env.BENCH_COMPOSE === '0') cfg.sections.delete('compose');

interface Row {
  metric: string;
  ours: string;
  baseline: string;
  ratio: string;
  target: string;
  met: boolean | undefined;
}
const rows: Row[] = [];
const ms = (x: number) => `${x.toFixed(1)} ms`;
const p5095 = (xs: number[]) => `${ms(percentile(xs, 50))} / ${ms(percentile(xs, 95))}`;
const mb = (kb: number) => `${(kb / 1024).toFixed(1)} MB`;
function row(metric: string, ours: string, baseline: string, ratio: number | undefined, target: string, met?: boolean): void {
  rows.push({ metric, ours, baseline, ratio: ratio === undefined ? '' : `${ratio.toFixed(2)}x`, target, met });
  process.stderr.write(`  ${metric}: ${ours}${baseline !== '' ? ` vs ${baseline}` : ''}${ratio !== undefined ? ` (${ratio.toFixed(2)}x)` : ''}\n`);
}
const log = (text: string) => process.stderr.write(`${new Date().toISOString()} ${text}\n`);

function printTable(): void {
  const header: Row = { metric: 'metric', ours: 'pipeline', baseline: 'baseline', ratio: 'ratio', target: 'target', met: undefined };
  const cells = (r: Row) => [r.metric, r.ours, r.baseline, r.ratio, r.target, r === header ? 'met' : r.met === undefined ? '' : r.met ? 'yes' : 'NO'];
  const all = [header, ...rows].map(cells);
  const widths = (all[0] as string[]).map((_, i) => Math.max(...all.map((c) => (c[i] as string).length)));
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(widths[i] as number)).join(' | ')} |`;
  process.stdout.write(`${line(all[0] as string[])}\n|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|\n`);
  for (const c of all.slice(1)) process.stdout.write(`${line(c)}\n`);
}

/** The sections measured on the stack of service processes (started only when one of them is asked for). */
const PIPELINE_SECTIONS = ['footprint', 'chain', 'floor', 'logs', 'memory', 'load'];

async function pipelineSections(): Promise<void> {
  if (!PIPELINE_SECTIONS.some((s) => cfg.sections.has(s))) return;
  const stack = await startStack(cfg.cpuProf !== undefined ? ['--cpu-prof', `--cpu-prof-dir=${cfg.cpuProf}`] : []);
  const p = stack.pipeline;
  try {
    if (cfg.sections.has('footprint')) {
      log('5. footprint: idle services');
      await new Promise((r) => setTimeout(r, 3000));
      const mem = serviceMemory(p);
      for (const name of SERVICE_NAMES) row(`5. idle RSS ${name}`, mb(mem[name]?.rssKb ?? 0), `PSS ${mb(mem[name]?.pssKb ?? 0)}`, undefined, '');
      const rss = Object.values(mem).reduce((a, b) => a + b.rssKb, 0);
      const pss = Object.values(mem).reduce((a, b) => a + b.pssKb, 0);
      row(`5. idle, ${SERVICE_NAMES.length} service processes: PSS sum (RSS sum)`, `${mb(pss)} (${mb(rss)})`, '', undefined, '< 400 MB', pss < 400 * 1024);
    }
    if (cfg.sections.has('chain')) {
      log(`1-2. chain: ${cfg.reps} runs each through the services, a shell script and the bare Docker API, in turn`);
      const r = await benchChain(p, cfg.reps);
      const [ours, shell, api] = [median(r.serviceMs), median(r.shellMs), median(r.apiMs)];
      row('1. chain trigger→model.done, median', ms(ours), `shell ${ms(shell)}`, ours / shell, '≤ 1.10x (aim 1.05x)', ours / shell <= 1.1);
      row('1. chain trigger→model.done, median', ms(ours), `Docker API alone ${ms(api)}`, ours / api, '');
      for (const [p, target] of [
        [50, 20],
        [95, 50],
      ] as const) {
        const [o, sh, a] = [percentile(r.serviceHops.dieToStart, p), percentile(r.shellHops.dieToStart, p), percentile(r.apiHops.dieToStart, p)];
        row(`2. hop die→next start p${p}`, ms(o), `shell ${ms(sh)}`, o / sh, `≤ ${target} ms`, o <= target);
        row(`2. hop die→next start p${p}`, ms(o), `Docker API alone ${ms(a)}`, o / a, '');
      }
      const part = (key: keyof HopParts, label: string) => {
        const [o, a] = [percentile(r.serviceHops[key], 50), percentile(r.apiHops[key], 50)];
        row(label, ms(o), `Docker API alone ${ms(a)}`, o / a, '');
        return [o, a] as const;
      };
      part('dieToDestroy', '2.  of which die→destroy p50 (Docker cleanup; wait, inspect, rm)');
      const [create, dockerCreate] = part('destroyToCreate', '2.  of which destroy→next create p50 (services: events, lock, create)');
      row('2.    destroy→hand-off event p50 / p95 (lock, publish)', p5095(r.serviceHops.destroyToHandOff), '', undefined, '');
      row('2.    hand-off event→next create p50 / p95 (consume, lock, env file, create)', p5095(r.serviceHops.handOffToCreate), '', undefined, '');
      part('createToStart', '2.  of which create→start p50 (attach, Docker start)');
      row('2.  services’ own part of a hop p50 (destroy→create minus Docker API alone)', ms(create - dockerCreate), '', undefined, '');
      log(`   service hops: ${r.serviceHops.dieToStart.map((h) => h.toFixed(0)).join(' ')}`);
      log(`   shell hops:   ${r.shellHops.dieToStart.map((h) => h.toFixed(0)).join(' ')}`);
      log(`   API hops:     ${r.apiHops.dieToStart.map((h) => h.toFixed(0)).join(' ')}`);
      log(
        `   destroy→hand-off: ${r.serviceHops.destroyToHandOff.map((h) => h.toFixed(0)).join(' ')}; hand-off→create: ${r.serviceHops.handOffToCreate.map((h) => h.toFixed(0)).join(' ')}`,
      );
    }
    if (cfg.sections.has('floor')) {
      log(`2. floor: ${cfg.reps * 2} runs of each Docker-only probe`);
      const floor = await benchFloor(cfg.reps * 2);
      for (const network of FLOOR_NETWORKS) {
        row(`2. floor: Docker start of a created container, alone, ${network} network, p50 / p95`, p5095(floor.startAlone[network]), '', undefined, '');
      }
      const [atDie, afterWait] = [percentile(floor.startAtDie, 50), percentile(floor.startAfterWait, 50)];
      const removing = percentile(floor.startAfterWaitRemoving, 50);
      row('2. floor: die→next created and started p50, at die', ms(atDie), `after wait and rm ${ms(afterWait)}`, atDie / afterWait, '');
      row('2. floor: die→next created and started p50, after wait, rm meanwhile', ms(removing), `after wait and rm ${ms(afterWait)}`, removing / afterWait, '');
      const list = (xs: number[]) => xs.map((h) => h.toFixed(0)).join(' ');
      log(`   at die: ${list(floor.startAtDie)}; after wait, rm meanwhile: ${list(floor.startAfterWaitRemoving)}; after wait and rm: ${list(floor.startAfterWait)}`);
    }
    if (cfg.sections.has('logs')) {
      log(`3. log scan: ${cfg.logBytes / MB} MB, ${cfg.reps} runs each`);
      const r = await benchLogScan(p, cfg.logBytes, cfg.reps);
      const [ours, base] = [median(r.serviceMs), median(r.baselineMs)];
      row(`3. scan ${cfg.logBytes / MB} MB log vs docker logs -f → grep, median`, ms(ours), ms(base), ours / base, '≤ 1.05x', ours / base <= 1.05);
      const attach = median(r.attachMs);
      row(`3. scan ${cfg.logBytes / MB} MB log vs docker run → grep (attach), median`, ms(ours), ms(attach), ours / attach, '');
      log(
        `   service ${r.serviceMs.map((x) => x.toFixed(0)).join(' ')}; logs -f ${r.baselineMs.map((x) => x.toFixed(0)).join(' ')}; attach ${r.attachMs.map((x) => x.toFixed(0)).join(' ')}`,
      );
    }
    if (cfg.sections.has('memory')) {
      log(`3. log memory: ${cfg.memBytes / MB} MB`);
      const r = await benchLogMemory(p, cfg.memBytes);
      const growth = r.peakRssKb - r.idleRssKb;
      row(`3. transformer peak−idle RSS, ${cfg.memBytes / MB} MB log`, mb(growth), `idle ${mb(r.idleRssKb)}`, undefined, '≤ 64 MB', growth <= 64 * 1024);
    }
    if (cfg.sections.has('load')) {
      log(`6. load: ${cfg.loadBatches} batches of ${cfg.triggers} triggers`);
      const r = await benchLoad(p, cfg.triggers, cfg.loadBatches);
      row(`6. ${cfg.triggers} triggers, transform.done/s (median of batches)`, `${median(r.throughput).toFixed(0)}/s`, '', undefined, '');
      row(
        '6. outcomes (all batches)',
        Object.entries(r.outcomes)
          .map(([k, v]) => `${k} ${v}`)
          .join(', '),
        '',
        undefined,
        '',
      );
      log(
        `   after each batch: RSS ${r.samples.map((s) => mb(s.rssKb)).join(', ')}; heap ${r.samples.map((s) => mb(s.heapUsedBytes / 1024)).join(', ')}; fds ${r.samples.map((s) => s.fds).join(', ')}`,
      );
      // Batch 1 warms up (JIT, pools); growth is judged from the middle batch to the last.
      const mid = r.samples[Math.ceil(r.samples.length / 2)];
      const last = r.samples[r.samples.length - 1];
      if (mid !== undefined && last !== undefined && r.samples.length > 2) {
        const idle = r.samples[0];
        const heapGrowth = (last.heapUsedBytes - mid.heapUsedBytes) / MB;
        row(
          '6. transformer V8 heap after GC, mid → last batch',
          `${(mid.heapUsedBytes / MB).toFixed(1)} → ${(last.heapUsedBytes / MB).toFixed(1)} MB`,
          `idle ${((idle?.heapUsedBytes ?? 0) / MB).toFixed(1)} MB`,
          undefined,
          'no growth (< 2 MB)',
          heapGrowth < 2,
        );
        row(
          '6. transformer RSS, mid → last batch',
          `${mb(mid.rssKb)} → ${mb(last.rssKb)}`,
          `idle ${mb(idle?.rssKb ?? 0)}`,
          undefined,
          'no growth (< 5 MB)',
          last.rssKb - mid.rssKb < 5 * 1024,
        );
        row('6. transformer open fds, mid → last batch', `${mid.fds} → ${last.fds}`, `idle ${idle?.fds ?? 0}`, undefined, 'no growth', last.fds <= mid.fds);
      }
    }
  } finally {
    await stack.close();
  }
}

async function main(): Promise<void> {
  const t0 = Date.now();
  buildTestImages();
  try {
    await pipelineSections();
    if (cfg.sections.has('bus')) {
      log(`4. bus: ${cfg.events} events; locks: ${cfg.contenders} contenders × ${cfg.lockRounds}`);
      const r = await benchBus({ events: cfg.events, contenders: cfg.contenders, rounds: cfg.lockRounds });
      const raw99 = percentile(r.rawRoundTrip, 99);
      const rawC99 = percentile(r.rawRoundTripContended, 99);
      const pub99 = percentile(r.publishToConsume, 99);
      row('4. publish→consume p99 (durable consumer)', ms(pub99), `raw req/reply ${ms(raw99)}`, pub99 / raw99, '');
      const acq99 = percentile(r.lockAcquire, 99);
      const rel99 = percentile(r.lockRelease, 99);
      row(`4. lock acquire p99, ${cfg.contenders} contenders`, ms(acq99), `raw req/reply ×${cfg.contenders} ${ms(rawC99)}`, acq99 / rawC99, '');
      const kvCreate99 = percentile(r.rawKvCreate, 99);
      row(`4. lock acquire p99, ${cfg.contenders} contenders`, ms(acq99), `bare kv.create ×${cfg.contenders} ${ms(kvCreate99)}`, acq99 / kvCreate99, '');
      row(`4. lock release p99 (${r.lockGranted} granted)`, ms(rel99), `raw req/reply ×${cfg.contenders} ${ms(rawC99)}`, rel99 / rawC99, '');
      const kvDelete99 = percentile(r.rawKvDelete, 99);
      row(`4. lock release p99 (${r.lockGranted} granted)`, ms(rel99), `bare kv.delete ×${cfg.contenders} ${ms(kvDelete99)}`, rel99 / kvDelete99, '');
    }
    if (cfg.sections.has('web')) {
      log(`7. runs view: GET /api/runs?limit=25 with 20 runs stored, then ${cfg.webRuns}`);
      const r = await benchWebRuns(cfg.webRuns);
      row(`7. runs view GET /api/runs?limit=25, median, ${r.total} runs`, ms(r.largeMs), `20 runs ${ms(r.smallMs)}`, r.ratio, '≤ 1.5x', r.ratio <= 1.5);
      log(`   wrote ${r.total - 20} runs in ${r.writeSeconds.toFixed(1)} s; a page deep in the history has ${r.deepPageRuns} runs`);
    }
    if (cfg.sections.has('cli')) {
      log('8. brain start-up: --help and runs against node -e 0, in turn');
      const r = await benchCliStartup(Math.max(cfg.reps * 4, 15));
      row('8. brain --help, median', ms(r.helpMs), `node -e 0 ${ms(r.nodeMs)}`, r.helpMs / r.nodeMs, '≤ 2x', r.helpMs <= 2 * r.nodeMs);
      row('8. brain runs (connect, read, print), median', ms(r.runsMs), `node -e 0 ${ms(r.nodeMs)}`, r.runsMs / r.nodeMs, '≤ 2x', r.runsMs <= 2 * r.nodeMs);
    }
    if (cfg.sections.has('backends')) {
      log(`9. backends: the train stage through the trainer, ${cfg.reps} runs on Swarm jobs and on Docker, each against the same by hand`);
      const r = await benchBackends(cfg.reps);
      for (const [name, hand, times] of [
        ['Swarm job', 'docker service create --mode replicated-job, logs, rm', r.swarm],
        ['Docker container', 'docker run --rm', r.docker],
      ] as const) {
        const [ours, base] = [median(times.serviceMs), median(times.handMs)];
        row(`9. train stage as a ${name}: model.mismatch→model.done, median`, ms(ours), `${hand} ${ms(base)}`, ours / base, '');
        log(`   ${name}: service ${times.serviceMs.map((x) => x.toFixed(0)).join(' ')}; by hand ${times.handMs.map((x) => x.toFixed(0)).join(' ')}`);
      }
    }
    if (cfg.sections.has('compose')) {
      log('5. footprint: compose stack');
      const stats = await composeFootprint();
      const total = Object.values(stats).reduce((a, b) => a + b, 0);
      row(
        '5. compose stack, docker stats sum',
        mb(total),
        Object.entries(stats)
          .map(([k, v]) => `${k} ${(v / 1024).toFixed(0)}`)
          .join(', '),
        undefined,
        '< 400 MB',
        total < 400 * 1024,
      );
    }
  } finally {
    await removeBenchContainers();
  }
  printTable();
  process.stdout.write(`\n${cfg.reps} reps, log ${cfg.logBytes / MB} MB, memory log ${cfg.memBytes / MB} MB; ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
