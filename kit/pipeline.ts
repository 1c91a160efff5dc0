/**
 * The pipeline in the test's own process: a real nats-server of its own, the services started through the
 * composition root (`runServices`, as `brain up` does) with their log lines captured, and an observer that records
 * every event as it arrives.
 */
import { rmSync } from 'node:fs';
import { Writable } from 'node:stream';
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import type Docker from 'dockerode';
import type { Config } from '../shared/config';
import { EVENT_SUBJECTS } from '../shared/nats';
import { SERVICE_NAMES, type ServiceName } from '../services/index';
import { loadConfig, runServices, type RunningServices } from '../services/composition-root';
import { standInServiceEnv } from './stand-ins';
import { startNatsServer, type NatsServer } from './nats-server';
import { docker, managedContainers, untilNone } from './containers';
import { EventLog, observeLive, type RecordedEvent } from './event-log';
import { makeRunDirs, writeEnvFiles, type EnvFiles, type RunDirs } from './run-dirs';

export { isRunTerminal, type RecordedEvent } from './event-log';
export { docker, uid, waitForContainer } from './containers';

export type { EnvFileKey } from './run-dirs';

export interface PipelineOptions {
  /** Configuration overrides (environment variables). */
  env?: Record<string, string>;
  /** Contents of each stage's env file. */
  envFiles?: EnvFiles;
  /** The services to run (default: every service but the scheduler and the web service). */
  services?: readonly ServiceName[];
  /** Docker client for the services (default: the local engine). */
  docker?: Docker;
  /** Keep logs.* batches in memory (off for tests that flood the log). */
  recordLogs?: boolean;
}

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
      ...standInServiceEnv(dirs),
      LOG_LEVEL: 'debug',
      ...opts.env,
    };
    const client = await connect({ servers: nats.url, name: 'test-observer' });
    const pipeline = new Pipeline(nats, client, dirs, env, opts.services ?? SERVICE_NAMES.filter((s) => s !== 'scheduler' && s !== 'web'), opts.docker ?? docker);
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
    const subjects = recordLogs ? [...EVENT_SUBJECTS, 'logs.>'] : EVENT_SUBJECTS;
    this.subs = observeLive(this.client, subjects, (event) => {
      if (event.subject.startsWith('logs.')) this.logBatches.push(event);
      else this.record(event);
    });
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
    return this.logBatches.filter((b) => b.data.runId === runId && (stage === undefined || b.data.stage === stage)).flatMap((b) => b.data.lines as string[]);
  }

  async containers(runId?: string): Promise<Docker.ContainerInfo[]> {
    return managedContainers(runId);
  }

  /**
   * The run's containers once its step has finished with them: a service removes a container only after
   * its outcome is stored, a moment after the event a test waits for. Waits up to `timeoutMs` for none.
   */
  async leftBehind(runId: string, timeoutMs = 10_000): Promise<Docker.ContainerInfo[]> {
    return untilNone(() => this.containers(runId), timeoutMs);
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
