/**
 * Section 2's floor: what Docker alone takes to start a container, and whether reacting to a container's
 * `die` event (before Docker's cleanup of it, which `wait` waits for) would bring the next start sooner.
 */
import Docker from 'dockerode';
import { LABELS } from '../shared/docker';
import { TEST_IMAGES } from '../kit/stand-ins';
import { BASELINE_LABEL, RUN_PREFIX, sleep } from './util';

const docker = new Docker();
const [labelKey, labelValue] = BASELINE_LABEL.split('=') as [string, string];

/** Network modes of the `start` probe: the default bridge the stages get, and the two cheapest. */
export const FLOOR_NETWORKS = ['bridge', 'host', 'none'] as const;
type FloorNetwork = (typeof FLOOR_NETWORKS)[number];

export interface FloorResult {
  /** `start` of an already created container, nothing else running: Docker's own start, per network mode. */
  startAlone: Record<FloorNetwork, number[]>;
  /** Exit (the `die` event) → the next container created and started at once; the first is waited for and removed meanwhile. */
  startAtDie: number[];
  /** The same as the services do it: wait, remove, then create and start the next. */
  startAfterWait: number[];
  /** Wait, then create and start the next while the first is removed. */
  startAfterWaitRemoving: number[];
}

async function created(name: string, cmd: string[], network: FloorNetwork = 'bridge') {
  await docker
    .getContainer(name)
    .remove({ force: true })
    .catch(() => undefined);
  return docker.createContainer({
    name,
    Image: TEST_IMAGES.load,
    Entrypoint: ['/bin/sh', '-c'],
    Cmd: cmd,
    Labels: { [labelKey]: labelValue, [LABELS.runId]: `${RUN_PREFIX}floor` },
    HostConfig: { NetworkMode: network },
  });
}

/** Times Docker's `start` of a created no-op container. */
async function startAlone(network: FloorNetwork): Promise<number> {
  const container = await created(`brain-floor-${RUN_PREFIX}b`, ['true'], network);
  const t0 = performance.now();
  await container.start();
  const startMs = performance.now() - t0;
  await container.wait();
  await container.remove({ force: true });
  return startMs;
}

/** Resolves at the container's `die` event (subscribed before it starts). */
async function dieEvent(id: string): Promise<{ died: Promise<number>; close(): void }> {
  const abort = new AbortController();
  const stream = await docker.getEvents({ filters: JSON.stringify({ container: [id], event: ['die'] }), abortSignal: abort.signal });
  const died = new Promise<number>((resolve) => stream.once('data', () => resolve(performance.now())));
  stream.on('error', () => undefined); // the abort below
  return { died, close: () => abort.abort() };
}

/**
 * One hop from a container that exits at once to the next no-op container, created and started at
 * `die`, after `wait` (removing the first meanwhile), or after `wait` and the removal.
 */
async function hop(startAt: 'die' | 'wait' | 'removed'): Promise<number> {
  const first = await created(`brain-floor-${RUN_PREFIX}a`, ['true']);
  await docker
    .getContainer(`brain-floor-${RUN_PREFIX}b`)
    .remove({ force: true })
    .catch(() => undefined);
  const watch = await dieEvent(first.id);
  try {
    await first.start();
    const diedAt = await watch.died;
    const waited = first.wait();
    const cleanup = waited.then(() => first.remove());
    if (startAt === 'wait') await waited;
    if (startAt === 'removed') await cleanup;
    const next = await created(`brain-floor-${RUN_PREFIX}b`, ['true']);
    await next.start();
    const hopMs = performance.now() - diedAt;
    await Promise.all([cleanup, next.wait().then(() => next.remove())]);
    return hopMs;
  } finally {
    watch.close();
  }
}

export async function benchFloor(reps: number): Promise<FloorResult> {
  const result: FloorResult = { startAlone: { bridge: [], host: [], none: [] }, startAtDie: [], startAfterWait: [], startAfterWaitRemoving: [] };
  for (let i = 0; i <= reps; i++) {
    const starts: number[] = [];
    for (const network of FLOOR_NETWORKS) {
      starts.push(await startAlone(network));
      await sleep(200);
    }
    const atDie = await hop('die');
    await sleep(200);
    const afterWait = await hop('removed');
    await sleep(200);
    const removing = await hop('wait');
    await sleep(200);
    if (i === 0) continue; // warm-up
    FLOOR_NETWORKS.forEach((network, n) => result.startAlone[network].push(starts[n] as number));
    result.startAtDie.push(atDie);
    result.startAfterWait.push(afterWait);
    result.startAfterWaitRemoving.push(removing);
  }
  return result;
}
