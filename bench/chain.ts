/**
 * Sections 1 and 2: the new-data chain of no-op containers through the services, against a shell
 * script doing the same `docker run`s in the same order, with Docker's own start/die events for the hops.
 */
import Docker from 'dockerode';
import { LABELS, containerName } from '../shared/docker';
import type { Stage } from '../shared/events';
import type { ClusterPipeline } from '../kit/cluster-pipeline';
import type { RecordedEvent } from '../kit/event-log';
import { TEST_IMAGES } from '../kit/stand-ins';
import { NO_OP_CHAIN, PHRASES, newRunId, setEnvFiles, trigger, type EnvFileKey } from './stack';
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

interface StageRun {
  stage: Stage;
  envFile: EnvFileKey;
  image: string;
  mounts: [string, string][];
}

/** The chain's stages as the services run them: image, env file and bind mounts. */
function chainStages(p: ClusterPipeline): Record<'transform' | 'loadProcessed' | 'loadViz' | 'gate' | 'train', StageRun> {
  const { aws, processed, viz } = p.dirs;
  return {
    transform: {
      stage: 'transform',
      envFile: 'transform',
      image: TEST_IMAGES.transform,
      mounts: [
        [aws, '/app/.aws'],
        [processed, '/app/processed'],
        [viz, '/app/viz'],
      ],
    },
    loadProcessed: {
      stage: 'load-processed',
      envFile: 'loadProcessed',
      image: TEST_IMAGES.load,
      mounts: [
        [processed, '/app/collect_point'],
        [aws, '/root/.aws'],
      ],
    },
    loadViz: {
      stage: 'load-viz',
      envFile: 'loadViz',
      image: TEST_IMAGES.load,
      mounts: [
        [viz, '/app/collect_point'],
        [aws, '/root/.aws'],
      ],
    },
    gate: { stage: 'model-trigger', envFile: 'modelTrigger', image: TEST_IMAGES.modelTrigger, mounts: [] },
    train: { stage: 'train', envFile: 'train', image: TEST_IMAGES.train, mounts: [[aws, '/root/.aws']] },
  };
}

export function baselineChainScript(p: ClusterPipeline, runId: string): string {
  const s = chainStages(p);
  const run = (r: StageRun) => dockerRun(r.stage, r.envFile, r.image, runId, r.mounts);
  return [
    'set -o pipefail',
    `${run(s.transform)} | grep -F ${q(PHRASES.newData)} > /dev/null || exit 1`,
    `${run(s.loadProcessed)} > /dev/null & p1=$!`,
    `${run(s.loadViz)} > /dev/null & p2=$!`,
    'wait $p1 && wait $p2 || exit 1',
    `${run(s.gate)} | grep -F ${q(PHRASES.mismatch)} > /dev/null || exit 1`,
    `${run(s.train)} > /dev/null`,
  ].join('\n');
}

const docker = new Docker();
const [baselineLabelKey, baselineLabelValue] = BASELINE_LABEL.split('=') as [string, string];

/**
 * One stage through the Docker API and nothing else, the least any orchestrator does: create, attach,
 * start, read the output to its end, wait, remove. Resolves with the output (frames and all).
 */
async function apiStage(r: StageRun, runId: string): Promise<string> {
  const env = { ...NO_OP_CHAIN[r.envFile], BRAIN_RUN_ID: runId, BRAIN_STAGE: r.stage };
  const container = await docker.createContainer({
    name: containerName(r.stage, runId),
    Image: r.image,
    Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    AttachStdout: true,
    AttachStderr: true,
    Labels: { [baselineLabelKey]: baselineLabelValue, [LABELS.stage]: r.stage, [LABELS.runId]: runId },
    HostConfig: { Mounts: r.mounts.map(([Source, Target]) => ({ Type: 'bind' as const, Source, Target })) },
  });
  const stream = (await container.attach({ stream: true, stdout: true, stderr: true })) as NodeJS.ReadableStream;
  const chunks: Buffer[] = [];
  const ended = new Promise<void>((resolve, reject) => {
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', resolve);
    stream.on('error', reject);
  });
  await container.start();
  await ended;
  await container.wait();
  await container.remove();
  return Buffer.concat(chunks).toString();
}

/** The chain through the Docker API alone (no NATS, no locks, no CLI): the floor the services stand on. */
async function apiChain(p: ClusterPipeline, runId: string): Promise<number> {
  const s = chainStages(p);
  const t0 = performance.now();
  if (!(await apiStage(s.transform, runId)).includes(PHRASES.newData)) throw new Error('API chain: no new data');
  await Promise.all([apiStage(s.loadProcessed, runId), apiStage(s.loadViz, runId)]);
  if (!(await apiStage(s.gate, runId)).includes(PHRASES.mismatch)) throw new Error('API chain: no mismatch');
  await apiStage(s.train, runId);
  return performance.now() - t0;
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

/** Where a hop's time goes, for the service's runs or a baseline's. */
export interface HopParts {
  /** Exit to the next container's start: the hop. */
  dieToStart: number[];
  /** A container's exit to its removal: Docker's cleanup, then wait, inspect and remove. */
  dieToDestroy: number[];
  /** Removal to the next container's creation: events, lock and create (service), CLI exit and start (script), create (API). */
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

/** The events that hand a run from one stage's service to the next, with the stages on either side. */
const HAND_OFFS: { subject: string; from: Stage[]; to: Stage[] }[] = [
  { subject: 'data.new', from: ['transform'], to: ['load-processed', 'load-viz'] },
  { subject: 'model.trigger', from: ['load-processed', 'load-viz'], to: ['model-trigger'] },
  { subject: 'model.mismatch', from: ['model-trigger'], to: ['train'] },
];
export const HAND_OFF_SUBJECTS = HAND_OFFS.map((h) => h.subject);

/** The services' side of a hop, split at the hand-off event as the observer received it. */
export interface HandOffParts {
  /** The previous container's removal to the hand-off event: lock, publish. */
  destroyToHandOff: number[];
  /** The hand-off event to the next container's creation: consume, lock, env file, Docker's create. */
  handOffToCreate: number[];
}

function handOffParts(events: readonly DockerEvent[], observed: readonly RecordedEvent[], runIds: readonly string[]): HandOffParts {
  const parts: HandOffParts = { destroyToHandOff: [], handOffToCreate: [] };
  for (const runId of runIds) {
    for (const { subject, from, to } of HAND_OFFS) {
      const event = observed.find((o) => o.subject === subject && o.data.runId === runId);
      if (event === undefined) throw new Error(`no ${subject} observed for ${runId}`);
      const handOffAt = performance.timeOrigin + event.at;
      parts.destroyToHandOff.push(handOffAt - Math.max(...from.map((stage) => eventAt(events, runId, 'destroy', stage))));
      for (const stage of to) parts.handOffToCreate.push(eventAt(events, runId, 'create', stage) - handOffAt);
    }
  }
  return parts;
}

export interface ChainResult {
  serviceMs: number[];
  shellMs: number[];
  apiMs: number[];
  serviceHops: HopParts & HandOffParts;
  shellHops: HopParts;
  apiHops: HopParts;
}

/** Runs the chain through the services, the shell script and the bare Docker API in turn, `reps` times each, after one warm-up of each. */
export async function benchChain(p: ClusterPipeline, reps: number): Promise<ChainResult> {
  setEnvFiles(p, NO_OP_CHAIN);
  const times = { service: [] as number[], shell: [] as number[], api: [] as number[] };
  const recorder = await recordDockerEvents();
  const runs = { service: [] as string[], shell: [] as string[], api: [] as string[] };
  try {
    for (let i = 0; i <= reps; i++) {
      const runId = newRunId();
      const done = p.waitFor((e) => e.subject === 'model.done' && e.data.runId === runId, 60_000, `model.done of ${runId}`);
      const t0 = await trigger(p, runId);
      const end = await done;
      if (end.data.outcome !== 'trained') throw new Error(`chain ${runId} ended ${end.data.outcome}`);
      const shellRun = newRunId();
      const shellMs = await timeShell(baselineChainScript(p, shellRun));
      const apiRun = newRunId();
      const apiMs = await apiChain(p, apiRun);
      if (i === 0) continue; // warm-up
      times.service.push(end.at - t0);
      times.shell.push(shellMs);
      times.api.push(apiMs);
      runs.service.push(runId);
      runs.shell.push(shellRun);
      runs.api.push(apiRun);
    }
  } finally {
    await recorder.stop();
  }
  const ours = recorder.events.filter((e) => e.runId.startsWith(RUN_PREFIX));
  return {
    serviceMs: times.service,
    shellMs: times.shell,
    apiMs: times.api,
    serviceHops: { ...hopParts(ours, runs.service), ...handOffParts(ours, p.events, runs.service) },
    shellHops: hopParts(ours, runs.shell),
    apiHops: hopParts(ours, runs.api),
  };
}
