import { rmSync } from 'node:fs';
import { Writable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import Docker from 'dockerode';
import { SERVICE_NAMES, loadConfig, type Config, type ServiceName } from '../../shared/config';
import { LABELS } from '../../shared/docker';
import { runServices, type RunningServices } from '../../cli/run';
import { standInStageEnv } from '../fixtures/build-images';
import { startNatsServer, type NatsServer } from './nats-server';
import { EventLog, type RecordedEvent } from './event-log';
import { makeRunDirs, writeEnvFiles, type EnvFiles, type RunDirs } from './run-dirs';

export { isRunTerminal, type RecordedEvent } from './event-log';

export type { EnvFileKey } from './run-dirs';

export interface PipelineOptions {
  /** Configuration overrides (environment variables). */
  env?: Record<string, string>;
  /** Contents of each stage's env file. */
  envFiles?: EnvFiles;
  services?: readonly ServiceName[];
  /** Docker client for the services (default: the local engine). */
  docker?: Docker;
  /** Keep logs.* batches in memory (off for tests that flood the log). */
  recordLogs?: boolean;
}

export const docker = new Docker();
export const uid = (prefix = 'r') => `${prefix}${randomBytes(5).toString('hex')}`;

export class Pipeline extends EventLog {
  readonly logLines: string[] = [];
  readonly logBatches: RecordedEvent[] = [];
  running: RunningServices | undefined;
  private subs: Subscription[] = [];

  private constructor(
    readonly nats: NatsServer,
    readonly client: NatsConnection,
    readonly dirs: RunDirs,
    readonly env: Record<string, string>,
    readonly services: readonly ServiceName[],
    private readonly serviceDocker: Docker,
  ) {
    super(dirs.aws);
  }

  static async start(opts: PipelineOptions = {}): Promise<Pipeline> {
    const nats = await startNatsServer();
    const dirs = makeRunDirs('brain-run-');
    writeEnvFiles(dirs.env, opts.envFiles);
    const env = {
      NATS_URL: nats.url,
      BRAIN_ENV_DIR: dirs.env,
      ...standInStageEnv(dirs),
      HEALTH_PORT: '0',
      HEALTH_HOST: '127.0.0.1',
      LOG_LEVEL: 'debug',
      ...opts.env,
    };
    const client = await connect({ servers: nats.url, name: 'test-observer' });
    const pipeline = new Pipeline(nats, client, dirs, env, opts.services ?? SERVICE_NAMES.filter((s) => s !== 'scheduler'), opts.docker ?? docker);
    pipeline.observe(opts.recordLogs ?? true);
    try {
      await pipeline.startServices();
    } catch (err) {
      await pipeline.close();
      throw err;
    }
    return pipeline;
  }

  get config(): Config {
    return loadConfig(this.env, this.services);
  }

  private observe(recordLogs: boolean): void {
    const subjects = ['transform.>', 'data.>', 'load.>', 'model.>', 'rejected.>'];
    if (recordLogs) subjects.push('logs.>');
    for (const subject of subjects) {
      const sub = this.client.subscribe(subject, {
        callback: (_err, msg) => {
          let data: RecordedEvent['data'];
          try {
            data = msg.json();
          } catch {
            data = { raw: msg.string() };
          }
          const event = { subject: msg.subject, data };
          if (msg.subject.startsWith('logs.')) {
            this.logBatches.push(event);
            return;
          }
          this.record(event);
        },
      });
      this.subs.push(sub);
    }
  }

  async startServices(): Promise<void> {
    const sink = new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        for (const line of chunk.toString().split('\n')) if (line.trim() !== '') this.logLines.push(line);
        cb();
      },
    });
    this.running = await runServices(this.services, this.config, { logDestination: sink, docker: this.serviceDocker });
  }

  async stopServices(): Promise<void> {
    await this.running?.stop();
    this.running = undefined;
  }

  /** Publishes like a person would: a core publish of raw bytes or JSON, no ack awaited. */
  async publish(subject: string, body: unknown = {}): Promise<void> {
    const data = typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body);
    this.client.publish(subject, data);
    await this.client.flush();
  }

  logLinesOf(runId: string, stage?: string): string[] {
    return this.logBatches
      .filter((b) => b.data.runId === runId && (stage === undefined || b.data.stage === stage))
      .flatMap((b) => b.data.lines as string[]);
  }

  async containers(runId?: string): Promise<Docker.ContainerInfo[]> {
    const label = [`${LABELS.managed}=true`];
    if (runId !== undefined) label.push(`${LABELS.runId}=${runId}`);
    return docker.listContainers({ all: true, filters: { label } });
  }

  /**
   * The run's containers once its step has finished with them: a service removes a container only after
   * its outcome is stored, a moment after the event a test waits for. Waits up to `timeoutMs` for none.
   */
  async leftBehind(runId: string, timeoutMs = 10_000): Promise<Docker.ContainerInfo[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = await this.containers(runId);
      if (left.length === 0 || Date.now() > deadline) return left;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async close(): Promise<void> {
    await this.stopServices();
    for (const sub of this.subs) sub.unsubscribe();
    await this.client.close();
    await this.nats.stop();
    await this.nats.cleanup();
    rmSync(this.dirs.root, { recursive: true, force: true });
  }
}

/** Waits for a container of the run and stage to be running. */
export async function waitForContainer(runId: string, stage: string, timeoutMs = 20_000): Promise<Docker.ContainerInfo> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const found = await docker.listContainers({ filters: { label: [`${LABELS.runId}=${runId}`, `${LABELS.stage}=${stage}`], status: ['running'] } });
    if (found[0] !== undefined) return found[0];
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no running ${stage} container for ${runId} after ${timeoutMs} ms`);
}
