/**
 * Sections 1 and 2: the new-data chain of no-op containers through the services, against a shell
 * script doing the same `docker run`s in the same order, with Docker's own start/die events for the hops.
 */
import { LABELS, containerName } from '../shared/docker';
import type { Stage } from '../shared/events';
import { TEST_IMAGES } from '../test/fixtures/build-images';
import { NO_OP_CHAIN, PHRASES, newRunId, type EnvFileKey, type Stack } from './stack';
import { BASELINE_LABEL, RUN_PREFIX, recordDockerEvents, timeShell, type DockerEvent } from './util';

const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/**
 * One `docker run --rm` of a stage as the service would create it: same name, env and bind mounts, and
 * its labels but BASELINE_LABEL for the managed one. Like the service, the script reads the output (and greps it for a phrase where the service scans).
 */
function dockerRun(stage: Stage, envFile: EnvFileKey, image: string, runId: string, mounts: [string, string][]): string {
  const env = { ...NO_OP_CHAIN[envFile], BRAIN_RUN_ID: runId, BRAIN_STAGE: stage };
  return [
    'docker run --rm',
    `--name ${containerName(stage, runId)}`,
    `--label ${BASELINE_LABEL} --label ${LABELS.stage}=${stage} --label ${LABELS.runId}=${runId}`,
    ...Object.entries(env).map(([k, v]) => `-e ${q(`${k}=${v}`)}`),
    ...mounts.map(([src, dst]) => `--mount type=bind,source=${src},target=${dst}`),
    image,
  ].join(' ');
}

export function baselineChainScript(stack: Stack, runId: string): string {
  const { aws, processed, viz } = stack.dirs;
  return [
    'set -o pipefail',
    `${dockerRun('transform', 'transform', TEST_IMAGES.transform, runId, [[aws, '/app/.aws'], [processed, '/app/processed'], [viz, '/app/viz']])} | grep -F ${q(PHRASES.newData)} > /dev/null || exit 1`,
    `${dockerRun('load-processed', 'loadProcessed', TEST_IMAGES.load, runId, [[processed, '/app/collect_point'], [aws, '/root/.aws']])} > /dev/null & p1=$!`,
    `${dockerRun('load-viz', 'loadViz', TEST_IMAGES.load, runId, [[viz, '/app/collect_point'], [aws, '/root/.aws']])} > /dev/null & p2=$!`,
    'wait $p1 && wait $p2 || exit 1',
    `${dockerRun('model-trigger', 'modelTrigger', TEST_IMAGES.modelTrigger, runId, [])} | grep -F ${q(PHRASES.mismatch)} > /dev/null || exit 1`,
    `${dockerRun('train', 'train', TEST_IMAGES.train, runId, [[aws, '/root/.aws']])} > /dev/null`,
  ].join('\n');
}

type Action = DockerEvent['action'];

function eventAt(events: readonly DockerEvent[], runId: string, action: Action, stage: Stage): number {
  const e = events.find((x) => x.runId === runId && x.action === action && x.stage === stage);
  if (e === undefined) throw new Error(`no docker ${action} event for ${stage} of ${runId}`);
  return e.atMs;
}

/**
 * Gaps of one run from a stage container's `from` event to the next stage container's `to` event:
 * transform → each load, the later load → gate, gate → train.
 */
export function hopsOf(events: readonly DockerEvent[], runId: string, from: Action, to: Action): number[] {
  const at = (action: Action, stage: Stage) => eventAt(events, runId, action, stage);
  const loadsDone = Math.max(at(from, 'load-processed'), at(from, 'load-viz'));
  return [
    at(to, 'load-processed') - at(from, 'transform'),
    at(to, 'load-viz') - at(from, 'transform'),
    at(to, 'model-trigger') - loadsDone,
    at(to, 'train') - at(from, 'model-trigger'),
  ];
}

/** `to` minus `from` of each container of the run. */
function withinContainers(events: readonly DockerEvent[], runId: string, from: Action, to: Action): number[] {
  const stages: Stage[] = ['transform', 'load-processed', 'load-viz', 'model-trigger', 'train'];
  return stages.map((stage) => eventAt(events, runId, to, stage) - eventAt(events, runId, from, stage));
}

/** Where a hop's time goes, for the service's runs or the script's. */
export interface HopParts {
  /** Exit to the next container's start: the hop. */
  dieToStart: number[];
  /** A container's exit to its removal: Docker's cleanup, then (service) wait, inspect and remove. */
  dieToDestroy: number[];
  /** Removal to the next container's creation: events, lock and create (service), or CLI exit and start (script). */
  destroyToCreate: number[];
  /** Docker's own create→start. */
  createToStart: number[];
}

function hopParts(events: readonly DockerEvent[], runIds: readonly string[]): HopParts {
  const parts: HopParts = { dieToStart: [], dieToDestroy: [], destroyToCreate: [], createToStart: [] };
  for (const runId of runIds) {
    parts.dieToStart.push(...hopsOf(events, runId, 'die', 'start'));
    parts.destroyToCreate.push(...hopsOf(events, runId, 'destroy', 'create'));
    parts.dieToDestroy.push(...withinContainers(events, runId, 'die', 'destroy'));
    parts.createToStart.push(...withinContainers(events, runId, 'create', 'start'));
  }
  return parts;
}

export interface ChainResult {
  serviceMs: number[];
  baselineMs: number[];
  serviceHops: HopParts;
  baselineHops: HopParts;
}

/** Alternates a service run and a baseline run, `reps` times each, after one warm-up of each. */
export async function benchChain(stack: Stack, reps: number): Promise<ChainResult> {
  stack.writeEnvFiles(NO_OP_CHAIN);
  const serviceMs: number[] = [];
  const baselineMs: number[] = [];
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
      serviceMs.push(end.at - t0);
      baselineMs.push(shellMs);
      serviceRuns.push(runId);
      baselineRuns.push(shellRun);
    }
  } finally {
    await recorder.stop();
  }
  const ours = recorder.events.filter((e) => e.runId.startsWith(RUN_PREFIX));
  return { serviceMs, baselineMs, serviceHops: hopParts(ours, serviceRuns), baselineHops: hopParts(ours, baselineRuns) };
}
