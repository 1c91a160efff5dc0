/**
 * The pipeline against any NATS (one server or a cluster): each service as its own `brain service` child process,
 * as deployed, any number of replicas of each, an observer of the events and a watcher of the locks bucket. The
 * tests run it on a cluster and under faults; the bench runs every service in it, observed as events arrive.
 */
import { rmSync } from 'node:fs';
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages, type JetStreamClient } from '@nats-io/jetstream';
import { Kvm, type KvWatchEntry } from '@nats-io/kv';
import type { QueuedIterator } from '@nats-io/nats-core';
import { LABELS } from '../shared/docker';
import { EVENTS_STREAM, EVENT_SUBJECTS, LOCKS_BUCKET } from '../shared/nats';
import type { ServiceName } from '../services/index';
import { ensureTopology } from '../services/composition-root';
import { standInServiceEnv } from './stand-ins';
import { docker, uid, untilNone } from './containers';
import { makeRunDirs, writeEnvFiles, type EnvFiles, type RunDirs } from './run-dirs';
import { EventLog, bodyOf, observeLive, type RecordedEvent } from './event-log';
import { freeLoopbackPort } from './ports';
import { spawnService, type ServiceProcess } from './service-process';

export type StageService = 'transformer' | 'loader' | 'model-gate' | 'trainer';
export const STAGE_SERVICES: readonly StageService[] = ['transformer', 'loader', 'model-gate', 'trainer'];

export interface ClusterPipelineOptions {
  /** NATS_URL of each replica of every service (one entry per replica); the observer uses the first. */
  natsUrls: string[];
  /** Configuration overrides (environment variables) for every service. */
  env?: Record<string, string>;
  envFiles?: EnvFiles;
  /** The services to run, each with one replica per NATS URL (default: the four stage services). */
  services?: readonly ServiceName[];
  /** Arguments for each child's node, before the script (e.g. `--cpu-prof`). */
  nodeArgs?: readonly string[];
  /**
   * How events are observed: `stream` (default) reads the events stream with a durable consumer, so nothing is
   * missed across a NATS node failure; `live` subscribes to the subjects, so each event's `at` is when it was
   * published, with no consumer delivery in between (what the bench times).
   */
  observe?: 'stream' | 'live';
  /** Watch the locks bucket for anomalies (default true). */
  watchLocks?: boolean;
  /** `any` (default): each service picks a free health port itself; `free`: one is chosen here, read by `healthPort()`. */
  healthPorts?: 'any' | 'free';
}

/** One write to the locks bucket, as the watcher saw it. */
export interface LockWrite {
  key: string;
  operation: 'PUT' | 'DEL' | 'PURGE';
  runId?: string;
  holder?: string;
  revision: number;
  created: Date;
}

/** Every event observed, in stream order (`events`, from EventLog; `seq` is the stream sequence when read from the stream). */
export class ClusterPipeline extends EventLog<RecordedEvent & { seq?: number }> {
  readonly lockWrites: LockWrite[] = [];
  /** Two different runs seen holding one lock at once (a put over an unexpired lease of another run). */
  readonly lockAnomalies: string[] = [];
  /** `service#replica` → its process. */
  readonly processes = new Map<string, ServiceProcess>();
  /** Run ids handed out by `runId()`: their containers are removed on close. */
  readonly runIds: string[] = [];
  private readonly held = new Map<string, LockWrite>();
  private readonly loops: Promise<void>[] = [];
  private readonly healthPorts = new Map<string, number>();
  private messages: ConsumerMessages | undefined;
  private watch: QueuedIterator<KvWatchEntry> | undefined;
  private subs: Subscription[] = [];
  readonly js: JetStreamClient;

  private constructor(
    readonly client: NatsConnection,
    readonly dirs: RunDirs,
    readonly env: Record<string, string>,
    readonly natsUrls: string[],
    private readonly opts: Pick<ClusterPipelineOptions, 'nodeArgs' | 'healthPorts'>,
  ) {
    super(dirs.aws);
    this.js = jetstream(client);
  }

  static async start(opts: ClusterPipelineOptions): Promise<ClusterPipeline> {
    const dirs = makeRunDirs('brain-cluster-run-');
    writeEnvFiles(dirs.env, opts.envFiles);
    const env: Record<string, string> = {
      ...standInServiceEnv(dirs),
      LOG_LEVEL: 'info',
      ...opts.env,
    };
    const first = opts.natsUrls[0] ?? '';
    let client: NatsConnection | undefined;
    try {
      client = await connect({ servers: first.split(','), name: 'test-observer', maxReconnectAttempts: -1, reconnectTimeWait: 250 });
      const p = new ClusterPipeline(client, dirs, env, opts.natsUrls, opts);
      const ackWaitMs = Number(env.ACK_WAIT ?? 30) * 1000;
      const lockTtlMs = Number(env.LOCK_TTL ?? 30) * 1000;
      // Made here first, so the service replicas starting side by side do not race to create it.
      await ensureTopology(client, { replicas: Number(env.NATS_REPLICAS ?? 1), lockTtlMs, ackWaitMs });
      if (opts.observe === 'live') p.subs = observeLive(client, EVENT_SUBJECTS, (event) => p.record(event));
      else await p.observeStream();
      if (opts.watchLocks !== false) await p.watchLocks(lockTtlMs);
      await Promise.all((opts.services ?? STAGE_SERVICES).flatMap((name) => opts.natsUrls.map((_, i) => p.spawn(name, i))));
      return p;
    } catch (err) {
      await client?.close();
      rmSync(dirs.root, { recursive: true, force: true });
      throw err;
    }
  }

  private async observeStream(): Promise<void> {
    // A durable consumer (replicated like the services' own) survives a node failure; an ordered one
    // stopped delivering when its node died. Redeliveries are dropped by stream sequence.
    const jsm = await jetstreamManager(this.client);
    await jsm.consumers.add(EVENTS_STREAM, { durable_name: 'test-observer', ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, ack_wait: 5_000_000_000 });
    const consumer = await this.js.consumers.get(EVENTS_STREAM, 'test-observer');
    const messages = await consumer.consume({ idle_heartbeat: 1000, expires: 5000 });
    this.messages = messages;
    const seen = new Set<number>();
    this.loops.push(
      (async () => {
        for await (const m of messages) {
          m.ack();
          if (seen.has(m.seq)) continue;
          seen.add(m.seq);
          this.record({ subject: m.subject, data: bodyOf(m), at: performance.now(), seq: m.seq });
        }
      })(),
    );
  }

  private async watchLocks(lockTtlMs: number): Promise<void> {
    const kv = await new Kvm(this.client).open(LOCKS_BUCKET);
    const watch = await kv.watch({ key: '>' });
    this.watch = watch;
    this.loops.push(
      (async () => {
        for await (const e of watch) {
          const write: LockWrite = { key: e.key, operation: e.operation, revision: e.revision, created: e.created };
          if (e.operation === 'PUT') {
            try {
              const value = e.json<{ runId?: string; holder?: string }>();
              write.runId = value.runId;
              write.holder = value.holder;
            } catch {
              // an unreadable lease value is recorded without a run
            }
            const before = this.held.get(e.key);
            if (before !== undefined && before.runId !== write.runId && e.created.getTime() - before.created.getTime() < lockTtlMs) {
              this.lockAnomalies.push(`lock ${e.key}: ${write.runId} (rev ${e.revision}) written over ${before.runId} (rev ${before.revision}) while its lease was live`);
            }
            this.held.set(e.key, write);
          } else {
            this.held.delete(e.key);
          }
          this.lockWrites.push(write);
        }
      })(),
    );
  }

  /** Starts replica `i` of a service (its NATS_URL is `natsUrls[i]`) and waits until it serves. */
  async spawn(name: ServiceName, i: number): Promise<ServiceProcess> {
    const env: Record<string, string> = { ...this.env, NATS_URL: this.natsUrls[i] ?? '' };
    if (this.opts.healthPorts === 'free') {
      env.HEALTH_PORT = String(await freeLoopbackPort());
      this.healthPorts.set(`${name}#${i}`, Number(env.HEALTH_PORT));
    }
    const proc = spawnService(['service', name], env, { nodeArgs: this.opts.nodeArgs });
    this.processes.set(`${name}#${i}`, proc);
    await proc.waitForLog(/services started/, 30_000);
    return proc;
  }

  /** Replica `i` of a running service. */
  process(name: ServiceName, i = 0): ServiceProcess {
    const proc = this.processes.get(`${name}#${i}`);
    if (proc === undefined) throw new Error(`${name}#${i} is not running`);
    return proc;
  }

  /** The port of replica `i`'s `/healthz` and `/metrics` on 127.0.0.1 (with `healthPorts: 'free'`). */
  healthPort(name: ServiceName, i = 0): number {
    const port = this.healthPorts.get(`${name}#${i}`);
    if (port === undefined) throw new Error(`no known health port for ${name}#${i} (start with healthPorts: 'free')`);
    return port;
  }

  /** kill -9 of replica `i` of a service. */
  async kill(name: ServiceName, i: number): Promise<void> {
    const proc = this.processes.get(`${name}#${i}`);
    if (proc === undefined) return;
    proc.signal('SIGKILL');
    await proc.exited;
  }

  /** A new run id, remembered for the clean-up. */
  runId(prefix = 'r'): string {
    const id = uid(prefix);
    this.runIds.push(id);
    return id;
  }

  /** A JetStream publish (acknowledged by the stream); with `msgId`, deduplicated by it. */
  async publish(subject: string, body: unknown, msgId?: string): Promise<void> {
    await this.js.publish(subject, JSON.stringify(body), msgId !== undefined ? { msgID: msgId, timeout: 10_000 } : { timeout: 10_000 });
  }

  /** Labelled containers of the given runs. */
  async containers(runIds: readonly string[]): Promise<{ Id: string; Names: string[]; runId: string }[]> {
    const all = await docker.listContainers({ all: true, filters: { label: [`${LABELS.managed}=true`] } });
    return all.filter((c) => runIds.includes(c.Labels[LABELS.runId] ?? '')).map((c) => ({ Id: c.Id, Names: c.Names, runId: c.Labels[LABELS.runId] ?? '' }));
  }

  /** The runs' containers once their steps are done with them (removed just after each outcome is stored). */
  async leftBehind(runIds: readonly string[], timeoutMs = 10_000): Promise<{ Id: string; Names: string[]; runId: string }[]> {
    return untilNone(() => this.containers(runIds), timeoutMs);
  }

  /** Output of every service process, for a failure's diagnosis. */
  serviceLogs(): string {
    return [...this.processes].map(([name, proc]) => `== ${name}\n${proc.output.slice(-40).join('\n')}`).join('\n');
  }

  async close(): Promise<void> {
    await Promise.all(
      [...this.processes.values()].map(async (proc) => {
        proc.signal('SIGTERM');
        const timer = setTimeout(() => proc.signal('SIGKILL'), 10_000);
        await proc.exited;
        clearTimeout(timer);
      }),
    );
    for (const c of await this.containers(this.runIds))
      await docker
        .getContainer(c.Id)
        .remove({ force: true })
        .catch(() => undefined);
    for (const sub of this.subs) sub.unsubscribe();
    this.messages?.stop();
    this.watch?.stop();
    await Promise.allSettled(this.loops);
    await this.client.close();
    rmSync(this.dirs.root, { recursive: true, force: true });
  }
}
