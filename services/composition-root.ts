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
import { parseConfig, type Config, type SettingName } from '../shared/config';
import { contendedLocksOf, type ServiceDefinition, type StageSettings } from '../shared/definition';
import { createContainerRunner, createDockerClient, type ContainerRunner, type RunnerDeps } from '../shared/docker';
import { ConfigError, describeError } from '../shared/errors';
import type { Stage } from '../shared/events';
import { stageRunners } from '../shared/runners';
import { createSwarmRunner, swarmManagerProblem } from '../shared/swarm';
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

/** The setting that picks each stage's backend. */
const RUNNER_SETTINGS = {
  transform: 'TRANSFORM_RUNNER',
  load: 'LOAD_RUNNER',
  modelTrigger: 'MODEL_TRIGGER_RUNNER',
  train: 'TRAIN_RUNNER',
} as const satisfies Record<StageSettings, SettingName>;

/** The stage settings of the named services whose stages run as Swarm jobs (`<STAGE>_RUNNER=swarm`). */
const swarmSettingsOf = (names: readonly ServiceName[], config: Config): StageSettings[] => [
  ...new Set(names.flatMap((n) => definitionOf(n).stages.map((s) => s.settings)).filter((k) => config.runners[k] === 'swarm')),
];

/**
 * The configuration problems of the Swarm backend for the named services: each `<STAGE>_RUNNER=swarm` needs an engine
 * that is an active swarm manager (asked with `docker.info()`). Empty when no stage of theirs runs on Swarm.
 */
export async function swarmProblems(names: readonly ServiceName[], config: Config, docker: Pick<Docker, 'info'>): Promise<string[]> {
  const settings = swarmSettingsOf(names, config);
  if (settings.length === 0) return [];
  let problem: string | undefined;
  try {
    problem = swarmManagerProblem((await docker.info()) as Parameters<typeof swarmManagerProblem>[0]);
  } catch (err) {
    problem = `the Docker engine could not be asked whether it manages a swarm (${describeError(err)})`;
  }
  const engine = config.dockerHost ?? 'the local Docker engine';
  return problem === undefined ? [] : settings.map((k) => `${RUNNER_SETTINGS[k]}: swarm runs the stage as a Swarm job, but ${problem.replace('the Docker engine', engine)}`);
}

/**
 * A service's container runner: each of its stages on its own backend (`<STAGE>_RUNNER`): one Docker runner, and a
 * Swarm runner per stage setting on swarm (its placement constraints are the setting's).
 */
function serviceRunner(definition: ServiceDefinition, config: Config, base: Omit<RunnerDeps, 'pullPolicy'>): ContainerRunner {
  const docker = createContainerRunner({ ...base, pullPolicy: config.pullPolicy });
  const swarm = new Map<StageSettings, ContainerRunner>();
  const byStage = new Map<Stage, ContainerRunner>();
  for (const { stage, settings } of definition.stages) {
    if (config.runners[settings] !== 'swarm') continue;
    let runner = swarm.get(settings);
    if (runner === undefined) {
      runner = createSwarmRunner({
        ...base,
        constraints: config.constraints[settings],
        schedulingTimeoutMs: config.swarm.schedulingTimeoutMs,
        gpuResourceKind: config.swarm.gpuResource,
      });
      swarm.set(settings, runner);
    }
    byStage.set(stage, runner);
  }
  return stageRunners(byStage, docker);
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
  const docker = opts.docker ?? createDockerClient(config.dockerHost);
  const problems = await swarmProblems(names, config, docker);
  if (problems.length > 0) {
    logger.fatal({ problems }, `invalid configuration: ${problems.join('; ')}`);
    throw new ConfigError(problems);
  }
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
      const definition = definitionOf(name);
      const runner = serviceRunner(definition, config, {
        docker,
        service: name,
        instance,
        logger: serviceLogger,
        onContainerStart: (stage) => metrics.containerStarted(stage),
      });
      allLocks.push(locks);
      const records = createStepRecords({ kv: runsKv, logger: serviceLogger });
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
