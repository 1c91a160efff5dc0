/**
 * Section 9: one stage (train, a no-op) on each backend against the same work done by hand on that backend. The trainer
 * service (in-process, on the kit's Pipeline) takes model.mismatch and ends with model.done, its stage run
 * - with TRAIN_RUNNER=swarm, against `docker service create --mode replicated-job` of the same job (the CLI waits for
 *   its completion), then `docker service logs` and `docker service rm`;
 * - with TRAIN_RUNNER=docker, against `docker run --rm` of the same container.
 * The engine is made a single-node swarm manager for the section when it is not one, and leaves the swarm after.
 */
import { execFileSync } from 'node:child_process';
import Docker from 'dockerode';
import { LABELS, containerName } from '../shared/docker';
import { Pipeline, uid } from '../kit/pipeline';
import { TEST_IMAGES } from '../kit/stand-ins';
import { takeSwarmLock } from '../kit/swarm-lock';
import { BASELINE_LABEL, RUN_PREFIX, timeShell } from './util';

export interface BackendTimes {
  /** model.mismatch published → model.done received, through the trainer service. */
  serviceMs: number[];
  /** The same stage by hand on the same backend. */
  handMs: number[];
}

const docker = new Docker();

/** The by-hand command for the train stage of `runId` on `backend`: same name, env, label and bind mount as the service's. */
function byHand(backend: 'swarm' | 'docker', runId: string, aws: string): string {
  const name = containerName('train', runId);
  const common = `-e BRAIN_RUN_ID=${runId} -e BRAIN_STAGE=train -e SCRIPT=true --mount type=bind,source=${aws},target=/root/.aws`;
  if (backend === 'docker') return `docker run --rm --name ${name} --label ${BASELINE_LABEL} ${common} ${TEST_IMAGES.train} > /dev/null`;
  return [
    `docker service create --quiet --name ${name} --mode replicated-job --restart-condition none --label ${BASELINE_LABEL} --container-label ${BASELINE_LABEL} ${common} ${TEST_IMAGES.train} > /dev/null`,
    `docker service logs ${name} > /dev/null`,
    `docker service rm ${name} > /dev/null`,
    // Docker 20.10 leaves a removed job's task container (moby/moby#42789): removed as the runner does.
    `docker rm -f $(docker ps -aq --filter label=com.docker.swarm.service.name=${name}) > /dev/null 2>&1 || true`,
  ].join(' && ');
}

/** Makes the engine a swarm manager when it is not one; returns how to undo that (a no-op when it already was). */
async function ensureSwarm(): Promise<() => Promise<void>> {
  const info = (await docker.info()) as { Swarm?: { LocalNodeState?: string; ControlAvailable?: boolean } };
  if (info.Swarm?.LocalNodeState === 'active' && info.Swarm.ControlAvailable === true) return () => Promise.resolve();
  const hadGwBridge = (await docker.listNetworks({ filters: { name: ['docker_gwbridge'] } })).length > 0;
  execFileSync('docker', ['swarm', 'init', '--advertise-addr', '127.0.0.1'], { stdio: 'pipe' });
  return async () => {
    execFileSync('docker', ['swarm', 'leave', '--force'], { stdio: 'pipe' });
    if (!hadGwBridge)
      await docker
        .getNetwork('docker_gwbridge')
        .remove()
        .catch(() => undefined);
  };
}

async function measure(backend: 'swarm' | 'docker', reps: number): Promise<BackendTimes> {
  const p = await Pipeline.start({ services: ['trainer'], env: { TRAIN_RUNNER: backend, LOG_LEVEL: 'warn' }, envFiles: { train: { SCRIPT: 'true' } }, recordLogs: false });
  const out: BackendTimes = { serviceMs: [], handMs: [] };
  try {
    for (let i = 0; i <= reps; i++) {
      const runId = uid(RUN_PREFIX);
      const t0 = performance.now();
      await p.publish('model.mismatch', { v: 1, runId, at: new Date().toISOString(), reason: 'forced' });
      const done = await p.waitForRunEnd(runId, 60_000);
      if (done.data.outcome !== 'trained') throw new Error(`bench train run ${runId} on ${backend} ended ${String(done.data.outcome)}: ${String(done.data.error)}`);
      const ours = done.at - t0;
      const hand = await timeShell(byHand(backend, uid(RUN_PREFIX), p.dirs.aws));
      if (i === 0) continue; // warm-up: images, the first service start, the swarm's first task
      out.serviceMs.push(ours);
      out.handMs.push(hand);
    }
  } finally {
    await p.close();
  }
  return out;
}

export async function benchBackends(reps: number): Promise<{ swarm: BackendTimes; docker: BackendTimes }> {
  const release: (() => void | Promise<void>)[] = [];
  await takeSwarmLock({ teardown: (fn) => release.push(fn) }); // no swarm test file runs meanwhile
  const leave = await ensureSwarm();
  try {
    const swarm = await measure('swarm', reps);
    const left = (await docker.listServices({ filters: { label: [`${LABELS.managed}=true`] } })).length;
    if (left > 0) throw new Error(`${left} labelled job services left after the swarm runs`);
    return { swarm, docker: await measure('docker', reps) };
  } finally {
    await leave();
    for (const fn of release) await fn();
  }
}
