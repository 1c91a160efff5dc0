/**
 * The composition root: the one place that reads the configuration for named services, builds the NATS connection,
 * the Docker client and each service's dependencies from the definitions (`SERVICES`), and starts them.
 * `brain service`, `brain up`, the tests and the bench all start services through `runServices`.
 */

import { hostname } from 'node:os';
import type { DestinationStream } from 'pino';
import type Docker from 'dockerode';
import type { NatsConnection } from '@nats-io/transport-node';
import { Svcm, type Service as MicroService } from '@nats-io/services';
import { createEventBus } from '../shared/bus';
import { parseConfig, type Config } from '../shared/config';
import { contendedLocksOf } from '../shared/definition';
import { createContainerRunner, createDockerClient } from '../shared/docker';
import { createLocks, type Locks } from '../shared/lock';
import { createStepRecords } from '../shared/record';
import { openSchedule } from '../shared/schedule';
import { createLogger } from '../shared/logger';
import {
  connectNats,
  convergeTopology,
  deploymentId,
  describeChange,
  lockStore,
  openRuns,
  topologyOf,
  topologyOptions,
  verifyTopology,
  type Topology,
  type TopologyChange,
  type TopologyOptions,
} from '../shared/nats';
import { createMetrics, type Metrics } from '../shared/metrics';
import { startHealthServer, type HealthServer } from '../shared/health';
import type { Service } from '../shared/service';
import { createOrphanSweeper, type OrphanSweeper } from '../shared/orphans';
import { SERVICES, definitionOf, type ServiceName } from './index';

/**
 * Validates the environment for the named services and reports every problem at once.
 * @throws ConfigError listing each problem, one per line.
 */
export const loadConfig = (given: NodeJS.ProcessEnv, names: readonly ServiceName[]): Config => parseConfig(given, names.map(definitionOf));

/**
 * The topology the configuration wants. `names` narrows it to what those services use (the streams, the buckets
 * and their own consumers), which is also all their NATS users may read; `brain setup` takes all of it.
 */
export function wantedTopology(opts: TopologyOptions, names: readonly ServiceName[] | 'all' = 'all'): Topology {
  const used = names === 'all' ? SERVICES : names.map(definitionOf);
  return topologyOf(
    opts,
    used.flatMap((d) => (d.consumes !== undefined ? [d.consumes] : [])),
  );
}

/** Creates (or brings up to date) the streams, every durable consumer and the buckets. Idempotent; returns what changed. */
export async function ensureTopology(nc: NatsConnection, opts: TopologyOptions): Promise<TopologyChange[]> {
  return convergeTopology(nc, wantedTopology(opts));
}

/** How long a lock winner waits before confirming its write on a replicated bucket (see `createLocks`). */
const LOCK_SETTLE_MS = 200;

export interface RunOptions {
  logDestination?: DestinationStream;
  docker?: Docker;
}

export interface RunningServices {
  readonly nc: NatsConnection;
  readonly metrics: Metrics;
  /** The deployment's id, on every container label (see `deploymentId`). */
  readonly instance: string;
  /** Port of `/healthz` and `/metrics`. */
  readonly healthPort: number;
  /** Stops every service (in-flight work handed back, containers left to be adopted) and drains NATS. */
  stop(): Promise<void>;
}

/** The composition root: one NATS connection, one Docker client, and the named services on top. */
export async function runServices(names: readonly ServiceName[], config: Config, opts: RunOptions = {}): Promise<RunningServices> {
  const label = names.length === 1 ? (names[0] as string) : 'brain';
  const logger = createLogger(label, config.logLevel, opts.logDestination);
  const nc = await connectNats(config, label);
  const services: Service[] = [];
  const micro: MicroService[] = [];
  const sweepers: OrphanSweeper[] = [];
  const allLocks: Locks[] = [];
  const metrics = createMetrics({ service: label });
  let health: HealthServer | undefined;
  const startedAt = new Date().toISOString();
  let instance: string;
  if (config.lockTtlMs < 2 * config.ackWaitMs) {
    logger.warn(
      { lockTtlS: config.lockTtlMs / 1000, ackWaitS: config.ackWaitMs / 1000 },
      'LOCK_TTL is under twice ACK_WAIT: after a crash a lease may expire before its event is redelivered, and the run is then recovered without its lock (the default is 3x)',
    );
  }
  try {
    // Only read unless it differs: then converged if this NATS user may manage topology, else a TopologyError.
    const changes = await verifyTopology(nc, wantedTopology(topologyOptions(config), names), config.nats.user !== undefined ? { user: config.nats.user } : {});
    for (const change of changes) logger.info({ change: describeChange(change) }, 'NATS topology converged');
    const { kv, leader } = await lockStore(nc);
    instance = await deploymentId(nc);
    const holder = `${label}@${hostname()}:${process.pid}`;
    const docker = opts.docker ?? createDockerClient(config.dockerHost);
    const bus = createEventBus({ nc, logger, ackWaitMs: config.ackWaitMs, metrics, contendedLocks: contendedLocksOf(SERVICES) });
    const runsKv = await openRuns(nc);
    const schedule = await openSchedule(nc);
    for (const name of names) {
      const serviceLogger = logger.child({ service: name });
      const locks = createLocks({
        kv,
        leader,
        holder: `${name}:${holder}`,
        ttlMs: config.lockTtlMs,
        logger: serviceLogger,
        settleMs: config.nats.replicas > 1 ? LOCK_SETTLE_MS : 0,
      });
      const runner = createContainerRunner({
        docker,
        pullPolicy: config.pullPolicy,
        service: name,
        instance,
        logger: serviceLogger,
        onContainerStart: (stage) => metrics.containerStarted(stage),
      });
      allLocks.push(locks);
      const records = createStepRecords({ kv: runsKv, logger: serviceLogger });
      const definition = definitionOf(name);
      const service = await definition.create({ config, bus, locks, runner, records, schedule, logger: serviceLogger });
      await service.start();
      services.push(service);
      if (definition.lock !== undefined && definition.stages.length > 0) {
        const sweeper = createOrphanSweeper({
          runner,
          locks,
          stages: definition.stages.map((s) => s.stage),
          lock: definition.lock,
          graceMs: 2 * config.ackWaitMs + config.lockTtlMs,
          logger: serviceLogger,
        });
        sweeper.start();
        sweepers.push(sweeper);
      }
      // Registered with the NATS services API, so `nats micro ls` and `brain status` list it.
      micro.push(
        await new Svcm(nc).add({
          name: `brain-${name}`,
          version: '0.1.0',
          description: `brain-pipeline ${name}`,
          metadata: { service: name, startedAt, holder },
        }),
      );
    }
    health = await startHealthServer({
      port: config.health.port,
      host: config.health.host,
      metrics,
      healthy: () => ({
        ok: !nc.isClosed() && services.length === names.length,
        detail: { services: names, nats: nc.isClosed() ? 'closed' : 'connected', server: nc.getServer() },
      }),
    });
    logger.info({ services: names }, 'services started');
  } catch (err) {
    await Promise.allSettled([...sweepers.map((s) => s.stop()), ...services.map((s) => s.stop()), ...micro.map((m) => m.stop())]);
    await health?.close();
    await nc.close();
    throw err;
  }
  let stopping: Promise<void> | undefined;
  const healthServer = health;
  return {
    nc,
    metrics,
    instance,
    healthPort: healthServer.port,
    stop() {
      stopping ??= (async () => {
        await Promise.allSettled([...sweepers.map((s) => s.stop()), ...micro.map((m) => m.stop()), ...services.map((s) => s.stop())]);
        for (const locks of allLocks) locks.close();
        await healthServer.close();
        await nc.drain();
        logger.info('services stopped');
      })();
      return stopping;
    },
  };
}
