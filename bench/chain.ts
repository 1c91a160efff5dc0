/**
 * Sections 1 and 2: the new-data chain of no-op containers through the services, against a shell
 * script doing the same `docker run`s in the same order, with Docker's own start/die events for the hops.
 */
import { LABELS, containerName } from '../shared/docker';
import type { Stage } from '../shared/events';
import { TEST_IMAGES } from '../test/fixtures/build-images';
import { NO_OP_CHAIN, PHRASES, newRunId, type EnvFileKey, type Stack } from './stack';
import { RUN_PREFIX, recordDockerEvents, timeShell, type DockerEvent } from './util';

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/**
 * One `docker run --rm` of a stage as the service would create it: same name, labels, env and bind
 * mounts. Like the service, the script reads the output (and greps it for a phrase where the service scans).
 */
function dockerRun(stack: Stack, stage: Stage, envFile: EnvFileKey, image: string, runId: string, mounts: [string, string][]): string {
  const env = { ...NO_OP_CHAIN[envFile], BRAIN_RUN_ID: runId, BRAIN_STAGE: stage };
  return [
    'docker run --rm',
    `--name ${containerName(stage, runId)}`,
    `--label ${LABELS.managed}=true --label ${LABELS.stage}=${stage} --label ${LABELS.runId}=${runId}`,
    ...Object.entries(env).map(([k, v]) => `-e ${q(`${k}=${v}`)}`),
    ...mounts.map(([src, dst]) => `--mount type=bind,source=${src},target=${dst}`),
    image,
  ].join(' ');
}

export function baselineChainScript(stack: Stack, runId: string): string {
  const { aws, processed, viz } = stack.dirs;
  return [
    'set -o pipefail',
    `${dockerRun(stack, 'transform', 'transform', TEST_IMAGES.transform, runId, [[aws, '/app/.aws'], [processed, '/app/processed'], [viz, '/app/viz']])} | grep -F ${q(PHRASES.newData)} > /dev/null || exit 1`,
    `${dockerRun(stack, 'load-processed', 'loadProcessed', TEST_IMAGES.load, runId, [[processed, '/app/collect_point'], [aws, '/root/.aws']])} > /dev/null & p1=$!`,
    `${dockerRun(stack, 'load-viz', 'loadViz', TEST_IMAGES.load, runId, [[viz, '/app/collect_point'], [aws, '/root/.aws']])} > /dev/null & p2=$!`,
    'wait $p1 && wait $p2 || exit 1',
    `${dockerRun(stack, 'model-trigger', 'modelTrigger', TEST_IMAGES.modelTrigger, runId, [])} | grep -F ${q(PHRASES.mismatch)} > /dev/null || exit 1`,
    `${dockerRun(stack, 'train', 'train', TEST_IMAGES.train, runId, [[aws, '/root/.aws']])} > /dev/null`,
  ].join('\n');
}

/**
 * Gaps of one run from a container's exit to the next one's `next` event (`start`, or `create` for the
 * part before Docker's create+start): transform → each load, the later load → gate, gate → train.
 */
export function hopsOf(events: readonly DockerEvent[], runId: string, next: 'create' | 'start'): number[] {
  const at = (action: DockerEvent['action'], stage: Stage) => {
    const e = events.find((x) => x.runId === runId && x.action === action && x.stage === stage);
    if (e === undefined) throw new Error(`no docker ${action} event for ${stage} of ${runId}`);
    return e.atMs;
  };
  const loadsDone = Math.max(at('die', 'load-processed'), at('die', 'load-viz'));
  return [
    at(next, 'load-processed') - at('die', 'transform'),
    at(next, 'load-viz') - at('die', 'transform'),
    at(next, 'model-trigger') - loadsDone,
    at(next, 'train') - at('die', 'model-trigger'),
  ];
}

export interface ChainResult {
  serviceMs: number[];
  baselineMs: number[];
  /** Exit to the next start. */
  serviceHops: number[];
  baselineHops: number[];
  /** Exit to the next create: the part before Docker's own create+start. */
  serviceToCreate: number[];
  baselineToCreate: number[];
  /** Docker's own create→start of the service's containers. */
  dockerStart: number[];
}

/** Alternates a service run and a baseline run, `reps` times each, after one warm-up of each. */
export async function benchChain(stack: Stack, reps: number): Promise<ChainResult> {
  stack.writeEnvFiles(NO_OP_CHAIN);
  const result: ChainResult = { serviceMs: [], baselineMs: [], serviceHops: [], baselineHops: [], serviceToCreate: [], baselineToCreate: [], dockerStart: [] };
  const recorder = await recordDockerEvents();
  const serviceRuns: string[] = [];
  const baselineRuns: string[] = [];
  try {
    for (let i = 0; i <= reps; i++) {
      const runId = newRunId();
      const done = stack.waitFor((e) => e.subject === 'model.done' && e.data.runId === runId, 60_000, `model.done of ${runId}`);
      const t0 = await stack.trigger(runId);
      const end = await done;
      if (end.data.outcome !== 'trained') throw new Error(`chain ${runId} ended ${end.data.outcome}`);
      const shellRun = newRunId();
      const shellMs = await timeShell(baselineChainScript(stack, shellRun));
      if (i === 0) continue; // warm-up
      result.serviceMs.push(end.at - t0);
      result.baselineMs.push(shellMs);
      serviceRuns.push(runId);
      baselineRuns.push(shellRun);
    }
  } finally {
    await recorder.stop();
  }
  const ours = recorder.events.filter((e) => e.runId.startsWith(RUN_PREFIX));
  for (const runId of serviceRuns) {
    result.serviceHops.push(...hopsOf(ours, runId, 'start'));
    result.serviceToCreate.push(...hopsOf(ours, runId, 'create'));
    for (const created of ours.filter((e) => e.runId === runId && e.action === 'create')) {
      const started = ours.find((e) => e.runId === runId && e.action === 'start' && e.stage === created.stage);
      if (started !== undefined) result.dockerStart.push(started.atMs - created.atMs);
    }
  }
  for (const runId of baselineRuns) {
    result.baselineHops.push(...hopsOf(ours, runId, 'start'));
    result.baselineToCreate.push(...hopsOf(ours, runId, 'create'));
  }
  return result;
}
