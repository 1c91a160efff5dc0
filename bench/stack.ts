/**
 * The pipeline the bench measures: the kit's ClusterPipeline on its own nats-server, every service (the web one included) as
 * child processes (as deployed), every stage a no-op, events observed as they arrive (core subscriptions).
 */
import { join } from 'node:path';
import { DEFAULT_MISMATCH_PHRASE, DEFAULT_NEW_DATA_PHRASE } from '../shared/config';
import { SERVICE_NAMES } from '../services/index';
import { ClusterPipeline } from '../kit/cluster-pipeline';
import { uid } from '../kit/containers';
import { startNatsServer, type NatsServer } from '../kit/nats-server';
import { writeEnvFiles, type EnvFileKey } from '../kit/run-dirs';
import { REPO_ROOT, RUN_PREFIX, sleep } from './util';

export type { EnvFileKey };
type EnvFiles = Record<EnvFileKey, Record<string, string>>;

/** The phrases the services scan for: their defaults. */
export const PHRASES = { newData: DEFAULT_NEW_DATA_PHRASE, mismatch: DEFAULT_MISMATCH_PHRASE };

/** Every stage a no-op: the transform and the gate print their phrase, so the whole chain runs. */
export const NO_OP_CHAIN: EnvFiles = {
  transform: { SCRIPT: `echo '${PHRASES.newData}'` },
  loadProcessed: { SCRIPT: 'true' },
  loadViz: { SCRIPT: 'true' },
  modelTrigger: { SCRIPT: `echo '${PHRASES.mismatch}'` },
  train: { SCRIPT: 'true' },
};

export const newRunId = () => uid(RUN_PREFIX);

export interface Stack {
  readonly nats: NatsServer;
  readonly pipeline: ClusterPipeline;
  close(): Promise<void>;
}

/**
 * Starts nats-server and every service, each child preloading gc-on-signal.js (SIGUSR2 runs a full GC);
 * `nodeArgs` are added to each child's node (e.g. `--cpu-prof`).
 */
export async function startStack(nodeArgs: readonly string[] = []): Promise<Stack> {
  const nats = await startNatsServer();
  try {
    const pipeline = await ClusterPipeline.start({
      natsUrls: [nats.url],
      services: SERVICE_NAMES,
      env: { LOG_LEVEL: 'info', TRANSFORM_SCHEDULE: '0 0 1 1 *' },
      envFiles: NO_OP_CHAIN,
      nodeArgs: ['--expose-gc', '-r', join(REPO_ROOT, 'dist', 'bench', 'gc-on-signal.js'), ...nodeArgs],
      observe: 'live',
      watchLocks: false,
      healthPorts: 'free',
    });
    return {
      nats,
      pipeline,
      async close() {
        await pipeline.close();
        await nats.stop();
        await nats.cleanup();
      },
    };
  } catch (err) {
    await nats.stop();
    await nats.cleanup();
    throw err;
  }
}

/** Env files are read at each stage start, so they can change between runs without a restart. */
export function setEnvFiles(p: ClusterPipeline, files: EnvFiles): void {
  writeEnvFiles(p.dirs.env, files);
}

/** Publishes transform.trigger (a core publish, flushed); resolves with performance.now() at the publish. */
export async function trigger(p: ClusterPipeline, runId: string): Promise<number> {
  const at = performance.now();
  p.client.publish('transform.trigger', JSON.stringify({ runId, reason: 'bench' }));
  await p.client.flush();
  return at;
}

/** Runs a full garbage collection in a service child (see gc-on-signal.ts) and lets it settle. */
export async function collectGarbage(p: ClusterPipeline, service: 'transformer'): Promise<void> {
  p.process(service).signal('SIGUSR2');
  await sleep(500);
}
