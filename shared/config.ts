import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { parse as parseDotenv } from 'dotenv';
import { z } from 'zod';
import { ConfigError } from './errors';

export const DEFAULT_NEW_DATA_PHRASE = 'New data was transformed';
export const DEFAULT_MISMATCH_PHRASE = 'File counts differ between the dataset commit and master.';

const bool = z
  .enum(['true', 'false', '1', '0', 'TRUE', 'FALSE', 'True', 'False', ''])
  .default('false')
  .transform((v) => v.toLowerCase() === 'true' || v === '1');

/** Seconds; unset or empty (compose passes `${X:-}` through as empty) means the default. */
const seconds = (fallback: number) =>
  z.preprocess(
    (v) => (typeof v === 'string' && v.trim() === '' ? undefined : v),
    z.coerce.number({ message: 'must be a number of seconds' }).positive('must be a positive number of seconds').default(fallback),
  );

const optionalText = z
  .string()
  .optional()
  .transform((v) => (v === undefined || v.trim() === '' ? undefined : v.trim()));

const hostDir = optionalText.refine((v) => v === undefined || isAbsolute(v), {
  message: 'must be an absolute path on the Docker host',
});

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
/** A container memory limit such as `512m` or `2g` (bytes when no unit); unset means no limit. */
const memory = optionalText
  .refine((v) => v === undefined || /^\d+(\.\d+)?\s*[bkmg]?$/i.test(v), { message: 'must be a size such as 512m or 2g' })
  .transform((v) => {
    if (v === undefined) return undefined;
    const match = /^(\d+(?:\.\d+)?)\s*([bkmg]?)$/i.exec(v);
    return match === null ? undefined : Math.round(Number(match[1]) * (UNITS[(match[2] ?? '').toLowerCase()] ?? 1));
  });

/**
 * The GPUs a stage's container asks for (`<STAGE>_GPUS`): every GPU of the host, a number of them, or particular
 * devices (index or UUID). The Docker backend turns it into a `DeviceRequest` (`gpuDeviceRequest` in docker.ts);
 * the Swarm backend into generic resources.
 */
export type GpuRequest = { kind: 'all' } | { kind: 'count'; count: number } | { kind: 'devices'; deviceIds: string[] };

/** A GPU's index or its UUID (`GPU-…`, or `MIG-…` for a MIG instance), as `nvidia-smi -L` lists them. */
const GPU_DEVICE_ID = /^(\d+|(GPU|MIG)-[A-Za-z0-9_.:/-]+)$/;

/**
 * `<STAGE>_GPUS`: `all`; a count (`2`); device ids, comma-separated (`0,1`, `GPU-3f1c…`), or with Docker's own
 * `device=` prefix, which is the way to name a single numeric device (`device=0`: a lone number is a count).
 * Unset or empty: no GPUs.
 */
export function parseGpus(value: string | undefined): GpuRequest | undefined | { problem: string } {
  const v = (value ?? '').trim();
  if (v === '') return undefined;
  if (v.toLowerCase() === 'all') return { kind: 'all' };
  if (/^\d+$/.test(v)) {
    const count = Number(v);
    return count >= 1 ? { kind: 'count', count } : { problem: 'must be at least 1 GPU (leave it unset for none)' };
  }
  const list = v.startsWith('device=') ? v.slice('device='.length) : v;
  const ids = list.split(',').map((id) => id.trim());
  if (ids.every((id) => GPU_DEVICE_ID.test(id))) return { kind: 'devices', deviceIds: ids };
  return { problem: 'must be all, a number of GPUs, or comma-separated device indexes or GPU-… UUIDs (device=0 for the single device 0)' };
}

const gpus = optionalText.transform((v, ctx): GpuRequest | undefined => {
  const parsed = parseGpus(v);
  if (parsed !== undefined && 'problem' in parsed) {
    ctx.addIssue({ code: 'custom', message: parsed.problem });
    return z.NEVER;
  }
  return parsed;
});

/** The backend that runs a stage's containers: plain containers on the Docker engine, or Swarm jobs on the swarm it manages. */
export type RunnerKind = 'docker' | 'swarm';
const runnerKind = z.preprocess(
  (v) => (typeof v === 'string' && v.trim() === '' ? undefined : v),
  z.enum(['docker', 'swarm'], { message: 'must be docker or swarm' }).default('docker'),
);

/** Swarm placement constraints, comma-separated (`node.labels.gpu==true,node.role!=manager`); unset means none. */
const constraints = optionalText
  .refine((v) => v === undefined || v.split(',').every((c) => /^[A-Za-z0-9_.-]+\s*(==|!=)\s*\S+$/.test(c.trim())), {
    message: 'must be Swarm placement constraints separated by commas, such as node.labels.gpu==true',
  })
  .transform((v) => (v === undefined ? [] : v.split(',').map((c) => c.trim())));

const natsUrl = z
  .string()
  .default('nats://127.0.0.1:4222')
  .refine((v) => v.split(',').every((u) => /^(nats|tls|ws|wss):\/\/[^\s]+$|^[^\s:/]+:\d+$/.test(u.trim())), {
    message: 'must be one or more nats:// URLs separated by commas',
  });

/** croner, loaded when a schedule is checked: a CLI command that needs only the NATS settings never loads it. */
// eslint-disable-next-line @typescript-eslint/no-require-imports -- loading on first use is the point
const croner = () => require('croner') as typeof import('croner');

const cronExpression = z
  .string()
  .optional()
  .superRefine((v, ctx) => {
    if (v === undefined) return;
    try {
      new (croner().Cron)(v, { paused: true, timezone: 'UTC' }).stop();
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: `is not a valid cron expression (${(err as Error).message})` });
    }
  })
  .transform((v) => v ?? '0 * * * *');

const schema = z.object({
  NATS_URL: natsUrl,
  NATS_REPLICAS: z.coerce
    .number({ message: 'must be 1, 3 or 5' })
    .int()
    .refine((n) => [1, 3, 5].includes(n), 'must be 1, 3 or 5')
    .default(1),
  NATS_USER: optionalText,
  NATS_PASS: optionalText,
  NATS_INBOX_PREFIX: optionalText.refine((v) => v === undefined || /^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$/.test(v), {
    message: 'must be subject tokens (letters, digits, _ $ -) separated by dots, no wildcards',
  }),
  DOCKER_HOST: optionalText,
  BRAIN_ENV_DIR: z.string().default('./env'),
  TRANSFORM_IMAGE: z.string().min(1).default('brain-transform:latest'),
  LOAD_IMAGE: z.string().min(1).default('brain-load:latest'),
  MODEL_TRIGGER_IMAGE: z.string().min(1).default('brain-model-trigger:latest'),
  TRAIN_IMAGE: z.string().min(1).default('brain-train:latest'),
  HOST_AWS_DIR: hostDir,
  HOST_PROCESSED_DIR: hostDir,
  HOST_VIZ_DIR: hostDir,
  CONTAINER_NETWORK: optionalText,
  PULL_POLICY: z.enum(['always', 'missing', 'never'], { message: 'must be always, missing or never' }).default('missing'),
  TRANSFORM_SCHEDULE: cronExpression,
  IS_DEVELOPMENT: bool,
  DEV_SKIP_TRIGGER: bool,
  DEV_SKIP_MODEL: bool,
  DEV_FORCE_TRAINING: bool,
  NEW_DATA_PHRASE: z.string().min(1).default(DEFAULT_NEW_DATA_PHRASE),
  MISMATCH_PHRASE: z.string().min(1).default(DEFAULT_MISMATCH_PHRASE),
  TRANSFORM_TIMEOUT: seconds(3600),
  LOAD_TIMEOUT: seconds(1800),
  MODEL_TRIGGER_TIMEOUT: seconds(900),
  TRAIN_TIMEOUT: seconds(6 * 3600),
  TRANSFORM_MEMORY: memory,
  LOAD_MEMORY: memory,
  MODEL_TRIGGER_MEMORY: memory,
  TRAIN_MEMORY: memory,
  TRANSFORM_GPUS: gpus,
  LOAD_GPUS: gpus,
  MODEL_TRIGGER_GPUS: gpus,
  TRAIN_GPUS: gpus,
  TRANSFORM_RUNNER: runnerKind,
  LOAD_RUNNER: runnerKind,
  MODEL_TRIGGER_RUNNER: runnerKind,
  TRAIN_RUNNER: runnerKind,
  TRANSFORM_CONSTRAINTS: constraints,
  LOAD_CONSTRAINTS: constraints,
  MODEL_TRIGGER_CONSTRAINTS: constraints,
  TRAIN_CONSTRAINTS: constraints,
  SWARM_SCHEDULING_TIMEOUT: seconds(60),
  SWARM_GPU_RESOURCE: z.string().min(1).default('NVIDIA-GPU'),
  // A lease must outlive the redelivery that follows a crash (at most one ack wait after the last heartbeat),
  // with time to spare: its holder refreshed it at most TTL/3 before the crash. 3 × ACK_WAIT leaves TTL/3.
  LOCK_TTL: seconds(90),
  ACK_WAIT: seconds(30),
  HEALTH_PORT: z.coerce.number({ message: 'must be a port number' }).int().min(0).max(65535).default(8080),
  HEALTH_HOST: z.string().default('0.0.0.0'),
  WEB_PORT: z.coerce.number({ message: 'must be a port number' }).int().min(0).max(65535).default(8088),
  WEB_HOST: z.string().default('127.0.0.1'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

type Raw = z.infer<typeof schema>;
/** The name of one environment setting, e.g. `HOST_AWS_DIR`. */
export type SettingName = keyof Raw;

/** What a service needs of the configuration (see `ServiceDefinition.requires`). */
export interface ConfigNeeds {
  readonly name: string;
  readonly requires: readonly SettingName[];
}

export interface Config {
  /**
   * `replicas`: copies of each stream and bucket (3 in a cluster). `inboxPrefix`: NATS_INBOX_PREFIX as set; unset,
   * a named user's connection uses `_INBOX_<user>` (see `inboxPrefixFor`).
   */
  nats: { servers: string[]; user?: string; pass?: string; replicas: number; inboxPrefix?: string };
  dockerHost?: string;
  envDir: string;
  images: { transform: string; load: string; modelTrigger: string; train: string };
  hostDirs: { aws?: string; processed?: string; viz?: string };
  network?: string;
  pullPolicy: 'always' | 'missing' | 'never';
  transformSchedule: string;
  flags: { isDevelopment: boolean; devSkipTrigger: boolean; devSkipModel: boolean; devForceTraining: boolean };
  phrases: { newData: string; mismatch: string };
  timeoutsMs: { transform: number; load: number; modelTrigger: number; train: number };
  /** Container memory limits in bytes, per stage; undefined means none. */
  memoryBytes: { transform?: number; load?: number; modelTrigger?: number; train?: number };
  /** GPUs requested per stage (`<STAGE>_GPUS`); undefined means none. */
  gpus: { transform?: GpuRequest; load?: GpuRequest; modelTrigger?: GpuRequest; train?: GpuRequest };
  /** Each stage's backend (`<STAGE>_RUNNER`). */
  runners: { transform: RunnerKind; load: RunnerKind; modelTrigger: RunnerKind; train: RunnerKind };
  /** Each stage's Swarm placement constraints (`<STAGE>_CONSTRAINTS`), for the Swarm backend. */
  constraints: { transform: string[]; load: string[]; modelTrigger: string[]; train: string[] };
  /** How long a Swarm job may wait for a node, and the generic resource kind the nodes call their GPUs. */
  swarm: { schedulingTimeoutMs: number; gpuResource: string };
  lockTtlMs: number;
  ackWaitMs: number;
  logLevel: Raw['LOG_LEVEL'];
  /** `/healthz` and `/metrics`; port 0 picks a free port. */
  health: { port: number; host: string };
  /** The web service's HTTP API and dashboard (WEB_PORT, WEB_HOST); port 0 picks a free port. */
  web: { port: number; host: string };
}

/**
 * Validates the environment for the given services (what each requires: `ServiceDefinition.requires`) and reports
 * every problem at once. The composition root's `loadConfig` takes service names instead.
 * @throws ConfigError listing each problem, one per line.
 */
export function parseConfig(given: NodeJS.ProcessEnv, services: readonly ConfigNeeds[]): Config {
  const problems: string[] = [];
  const env = withPasswordFile(given, problems);
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const value = env[String(issue.path[0])];
      const shown = value === undefined ? '' : ` (got ${JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value)})`;
      problems.push(`${issue.path.join('.')}: ${issue.message}${shown}`);
    }
  }
  for (const service of services) {
    for (const key of service.requires) {
      const missing = (env[key] ?? '').trim() === '';
      if (missing && !problems.some((p) => p.startsWith(`${key}:`))) problems.push(`${key}: is required by the ${service.name} service`);
    }
  }
  if (parsed.success) {
    for (const prefix of ['TRANSFORM', 'LOAD', 'MODEL_TRIGGER', 'TRAIN'] as const) {
      if (parsed.data[`${prefix}_RUNNER`] === 'swarm' && parsed.data[`${prefix}_GPUS`]?.kind === 'all') {
        problems.push(`${prefix}_GPUS: all cannot be asked of a Swarm job (${prefix}_RUNNER=swarm): name a count or device ids`);
      }
    }
  }
  if (((env.NATS_USER ?? '') === '') !== ((env.NATS_PASS ?? '') === '')) {
    problems.push('NATS_USER and NATS_PASS: set both or neither');
  }
  if (!parsed.success || problems.length > 0) throw new ConfigError(problems);
  const raw = parsed.data;
  return {
    nats: {
      servers: raw.NATS_URL.split(',').map((s) => s.trim()),
      replicas: raw.NATS_REPLICAS,
      ...(raw.NATS_USER !== undefined ? { user: raw.NATS_USER } : {}),
      ...(raw.NATS_PASS !== undefined ? { pass: raw.NATS_PASS } : {}),
      ...(raw.NATS_INBOX_PREFIX !== undefined ? { inboxPrefix: raw.NATS_INBOX_PREFIX } : {}),
    },
    ...(raw.DOCKER_HOST !== undefined ? { dockerHost: raw.DOCKER_HOST } : {}),
    envDir: resolve(raw.BRAIN_ENV_DIR),
    images: { transform: raw.TRANSFORM_IMAGE, load: raw.LOAD_IMAGE, modelTrigger: raw.MODEL_TRIGGER_IMAGE, train: raw.TRAIN_IMAGE },
    hostDirs: {
      ...(raw.HOST_AWS_DIR !== undefined ? { aws: raw.HOST_AWS_DIR } : {}),
      ...(raw.HOST_PROCESSED_DIR !== undefined ? { processed: raw.HOST_PROCESSED_DIR } : {}),
      ...(raw.HOST_VIZ_DIR !== undefined ? { viz: raw.HOST_VIZ_DIR } : {}),
    },
    ...(raw.CONTAINER_NETWORK !== undefined ? { network: raw.CONTAINER_NETWORK } : {}),
    pullPolicy: raw.PULL_POLICY,
    transformSchedule: raw.TRANSFORM_SCHEDULE,
    flags: {
      isDevelopment: raw.IS_DEVELOPMENT,
      devSkipTrigger: raw.DEV_SKIP_TRIGGER,
      devSkipModel: raw.DEV_SKIP_MODEL,
      devForceTraining: raw.DEV_FORCE_TRAINING,
    },
    phrases: { newData: raw.NEW_DATA_PHRASE, mismatch: raw.MISMATCH_PHRASE },
    timeoutsMs: {
      transform: raw.TRANSFORM_TIMEOUT * 1000,
      load: raw.LOAD_TIMEOUT * 1000,
      modelTrigger: raw.MODEL_TRIGGER_TIMEOUT * 1000,
      train: raw.TRAIN_TIMEOUT * 1000,
    },
    memoryBytes: {
      ...(raw.TRANSFORM_MEMORY !== undefined ? { transform: raw.TRANSFORM_MEMORY } : {}),
      ...(raw.LOAD_MEMORY !== undefined ? { load: raw.LOAD_MEMORY } : {}),
      ...(raw.MODEL_TRIGGER_MEMORY !== undefined ? { modelTrigger: raw.MODEL_TRIGGER_MEMORY } : {}),
      ...(raw.TRAIN_MEMORY !== undefined ? { train: raw.TRAIN_MEMORY } : {}),
    },
    gpus: {
      ...(raw.TRANSFORM_GPUS !== undefined ? { transform: raw.TRANSFORM_GPUS } : {}),
      ...(raw.LOAD_GPUS !== undefined ? { load: raw.LOAD_GPUS } : {}),
      ...(raw.MODEL_TRIGGER_GPUS !== undefined ? { modelTrigger: raw.MODEL_TRIGGER_GPUS } : {}),
      ...(raw.TRAIN_GPUS !== undefined ? { train: raw.TRAIN_GPUS } : {}),
    },
    runners: { transform: raw.TRANSFORM_RUNNER, load: raw.LOAD_RUNNER, modelTrigger: raw.MODEL_TRIGGER_RUNNER, train: raw.TRAIN_RUNNER },
    constraints: { transform: raw.TRANSFORM_CONSTRAINTS, load: raw.LOAD_CONSTRAINTS, modelTrigger: raw.MODEL_TRIGGER_CONSTRAINTS, train: raw.TRAIN_CONSTRAINTS },
    swarm: { schedulingTimeoutMs: raw.SWARM_SCHEDULING_TIMEOUT * 1000, gpuResource: raw.SWARM_GPU_RESOURCE },
    lockTtlMs: raw.LOCK_TTL * 1000,
    ackWaitMs: raw.ACK_WAIT * 1000,
    logLevel: raw.LOG_LEVEL,
    health: { port: raw.HEALTH_PORT, host: raw.HEALTH_HOST },
    web: { port: raw.WEB_PORT, host: raw.WEB_HOST },
  };
}

/**
 * NATS_PASS_FILE names a file whose first line is the password, used when NATS_PASS is empty: the compose stack
 * generates its passwords into a volume (deploy/nats/passwords.sh) and each service reads its own file.
 */
function withPasswordFile(env: NodeJS.ProcessEnv, problems: string[]): NodeJS.ProcessEnv {
  const file = (env.NATS_PASS_FILE ?? '').trim();
  if (file === '' || (env.NATS_PASS ?? '').trim() !== '') return env;
  try {
    return { ...env, NATS_PASS: readFileSync(file, 'utf8').split('\n')[0] ?? '' };
  } catch (err) {
    problems.push(`NATS_PASS_FILE: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'unknown error'})`);
    return env;
  }
}

/** The process environment overlaid on an optional `.env` file (the environment wins). */
export function environmentWithDotenv(env: NodeJS.ProcessEnv, dotenvPath = '.env'): NodeJS.ProcessEnv {
  if (!existsSync(dotenvPath)) return env;
  return { ...parseDotenv(readFileSync(dotenvPath)), ...env };
}
