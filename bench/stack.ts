/** The pipeline under test: a real nats-server, the four Docker services as child processes, and an observer. */
import { rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { ServiceName } from '../shared/config';
import { standInStageEnv } from '../test/fixtures/build-images';
import { startNatsServer, type NatsServer } from '../test/helpers/nats-server';
import { makeRunDirs, writeEnvFiles, type EnvFileKey } from '../test/helpers/run-dirs';
import { RUN_PREFIX, startChildService, type ChildService } from './util';

export type { EnvFileKey };
type EnvFiles = Record<EnvFileKey, Record<string, string>>;

export const PHRASES = { newData: 'New data was transformed', mismatch: 'File counts differ between the dataset commit and master.' };

/** Every stage a no-op: the transform and the gate print their phrase, so the whole chain runs. */
export const NO_OP_CHAIN: EnvFiles = {
  transform: { SCRIPT: `echo '${PHRASES.newData}'` },
  loadProcessed: { SCRIPT: 'true' },
  loadViz: { SCRIPT: 'true' },
  modelTrigger: { SCRIPT: `echo '${PHRASES.mismatch}'` },
  train: { SCRIPT: 'true' },
};

export const newRunId = () => `${RUN_PREFIX}${randomBytes(5).toString('hex')}`;

export interface Observed {
  subject: string;
  data: { runId?: string; outcome?: string; durationMs?: number; error?: string };
  /** performance.now() when it arrived. */
  at: number;
}

export class Stack {
  readonly children = new Map<ServiceName, ChildService>();
  private waiters: { pred: (e: Observed) => boolean; resolve: (e: Observed) => void }[] = [];

  private constructor(
    readonly nats: NatsServer,
    readonly client: NatsConnection,
    readonly root: string,
    readonly env: Record<string, string>,
  ) {}

  static async start(): Promise<Stack> {
    const nats = await startNatsServer();
    const dirs = makeRunDirs('brain-bench-');
    const env = {
      NATS_URL: nats.url,
      BRAIN_ENV_DIR: dirs.env,
      ...standInStageEnv(dirs),
      LOG_LEVEL: 'info',
      TRANSFORM_SCHEDULE: '0 0 1 1 *',
    };
    const client = await connect({ servers: nats.url, name: 'bench-observer' });
    const stack = new Stack(nats, client, dirs.root, env);
    stack.writeEnvFiles(NO_OP_CHAIN);
    for (const subject of ['transform.done', 'load.done', 'model.done', 'rejected.>']) {
      client.subscribe(subject, {
        callback: (_err, msg) => {
          const event: Observed = { subject: msg.subject, data: msg.json(), at: performance.now() };
          stack.waiters = stack.waiters.filter((w) => {
            if (!w.pred(event)) return true;
            w.resolve(event);
            return false;
          });
        },
      });
    }
    await client.flush();
    return stack;
  }

  get dirs() {
    return { env: this.env.BRAIN_ENV_DIR as string, aws: this.env.HOST_AWS_DIR as string, processed: this.env.HOST_PROCESSED_DIR as string, viz: this.env.HOST_VIZ_DIR as string };
  }

  /** Env files are read at each stage start, so they can change between runs without a restart. */
  writeEnvFiles(files: EnvFiles): void {
    writeEnvFiles(this.env.BRAIN_ENV_DIR as string, files);
  }

  async startServices(names: readonly ServiceName[], nodeArgs: readonly string[] = []): Promise<void> {
    for (const name of names) this.children.set(name, await startChildService(name, this.env, nodeArgs));
  }

  child(name: ServiceName): ChildService {
    const c = this.children.get(name);
    if (c === undefined) throw new Error(`${name} is not running`);
    return c;
  }

  waitFor(pred: (e: Observed) => boolean, timeoutMs: number, what: string): Promise<Observed> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs).unref();
      this.waiters.push({
        pred,
        resolve: (e) => {
          clearTimeout(timer);
          resolve(e);
        },
      });
    });
  }

  /** Records every event on `subjects` (with its arrival time) until stopped. */
  record(subjects: readonly string[]): { events: Observed[]; stop(): void } {
    const events: Observed[] = [];
    const subs = subjects.map((subject) =>
      this.client.subscribe(subject, {
        callback: (_err, msg) => {
          events.push({ subject: msg.subject, data: msg.json(), at: performance.now() });
        },
      }),
    );
    return { events, stop: () => subs.forEach((s) => s.unsubscribe()) };
  }

  /** Publishes transform.trigger like `brain trigger` does; resolves with performance.now() at the publish. */
  async trigger(runId: string): Promise<number> {
    const at = performance.now();
    this.client.publish('transform.trigger', JSON.stringify({ runId, reason: 'bench' }));
    await this.client.flush();
    return at;
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.children.values()].map((c) => c.stop()));
    await this.client.close();
    await this.nats.stop();
    await this.nats.cleanup();
    rmSync(this.root, { recursive: true, force: true });
  }
}
