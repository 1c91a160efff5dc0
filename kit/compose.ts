/**
 * Drives the repository's docker-compose.yml (and its example override) for the smoke test: builds the images without
 * a registry, brings a uniquely named project up, and tears it down with everything it made.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import { LABELS } from '../shared/docker';
import { buildTestImages, standInStageEnv } from './stand-ins';
import { COMPOSE_BASE_IMAGES, buildBusyboxImage, buildNatsImage, buildNodeBaseImage, extraCaCertificates } from './compose-images';
import type { RunDirs } from './run-dirs';

const run = promisify(execFile);

export const REPO_ROOT = resolve(__dirname, '../..');
export const BRAIN_TEST_IMAGE = 'brain-test-pipeline:compose';

const docker = new Docker();

/** The example stage image as the tests build it (EXAMPLE_STAGES_IMAGE), on the local busybox. */
export const EXAMPLE_TEST_IMAGE = 'brain-test-example-stages:compose';

/** The compose files: the stack, and the override that runs it on the example stages (examples/stages). */
export const COMPOSE_FILE = 'docker-compose.yml';
export const EXAMPLE_COMPOSE_FILE = 'docker-compose.example.yml';

/**
 * What the stack is built from here: the brain image from the repository's Dockerfile as written (its `npm ci` stage
 * included) on the local node image, npm trusting this machine's extra certificates (a TLS-intercepting proxy's CA),
 * and the example stages on the local busybox.
 */
function localImageEnv(): Record<string, string> {
  return {
    BRAIN_IMAGE: BRAIN_TEST_IMAGE,
    NODE_IMAGE: COMPOSE_BASE_IMAGES.node,
    NPM_CA: extraCaCertificates(),
    EXAMPLE_STAGES_IMAGE: EXAMPLE_TEST_IMAGE,
    BUSYBOX_IMAGE: COMPOSE_BASE_IMAGES.busybox,
  };
}

/**
 * Builds every image the stack runs on this machine, none pulled: the stand-in stages and the node, nats and busybox
 * bases, then, through compose's own `build` of both files, the brain image (the Dockerfile as written, `npm ci` and
 * `tsc` in the build container) and the example stages image. Resolves with how long the compose build took.
 */
export async function buildComposeImages(): Promise<{ buildMs: number }> {
  buildTestImages();
  buildNodeBaseImage();
  buildNatsImage();
  buildBusyboxImage();
  const builder = new ComposeProject(`brainbuild${randomBytes(4).toString('hex')}`, localImageEnv(), [COMPOSE_FILE, EXAMPLE_COMPOSE_FILE]);
  const started = Date.now();
  // `setup` stands for the six services (one image); compose 1.29 builds with the classic builder, as users of it do.
  await builder.compose('build', '--quiet', 'setup', 'examples');
  return { buildMs: Date.now() - started };
}

/** The NATS users of docker-compose.yml, by the variable that sets each one's password. */
const NATS_USERS = {
  admin: 'NATS_ADMIN_PASS',
  scheduler: 'NATS_SCHEDULER_PASS',
  transformer: 'NATS_TRANSFORMER_PASS',
  loader: 'NATS_LOADER_PASS',
  modelGate: 'NATS_MODEL_GATE_PASS',
  trainer: 'NATS_TRAINER_PASS',
  monitor: 'NATS_MONITOR_PASS',
  operator: 'NATS_OPERATOR_PASS',
  web: 'NATS_WEB_PASS',
} as const;
export type ComposeNatsUser = keyof typeof NATS_USERS;
/** The NATS user name of each key of NATS_USERS. */
export const natsUserName = (user: ComposeNatsUser): string => (user === 'modelGate' ? 'model-gate' : user);

/**
 * A uniquely named project of the repository's docker-compose.yml on the images `buildComposeImages`
 * makes: the stand-in stages on `dirs`, NATS and the web service on random loopback ports (2.9's config), and a fresh
 * password for each NATS user set through its variable, or with `'generated'` none set, so that the stack
 * makes its own (read them with `project.natsPasswords()`). `env` adds or overrides variables.
 */
export function localComposeProject(namePrefix: string, dirs: RunDirs, env?: Record<string, string>): { project: ComposeProject; passwords: Record<ComposeNatsUser, string> };
export function localComposeProject(namePrefix: string, dirs: RunDirs, env: Record<string, string>, passwords: 'generated'): { project: ComposeProject };
export function localComposeProject(
  namePrefix: string,
  dirs: RunDirs,
  env: Record<string, string> = {},
  mode: 'set' | 'generated' = 'set',
): { project: ComposeProject; passwords?: Record<ComposeNatsUser, string> } {
  // nats-server parses an interpolated value as a config value: a password must start with a letter.
  const passwords = Object.fromEntries(Object.keys(NATS_USERS).map((user) => [user, `p${randomBytes(12).toString('hex')}`])) as Record<ComposeNatsUser, string>;
  const passwordEnv = mode === 'set' ? Object.fromEntries(Object.entries(NATS_USERS).map(([user, variable]) => [variable, passwords[user as ComposeNatsUser]])) : {};
  const project = new ComposeProject(`${namePrefix}${randomBytes(4).toString('hex')}`, {
    ...localImageEnv(),
    NATS_IMAGE: COMPOSE_BASE_IMAGES.nats,
    NATS_CONFIG: 'nats-2.9.conf',
    NATS_PUBLISH: '127.0.0.1:',
    // The web service on a free loopback port of the host (`project.published('web', 8088)`).
    WEB_PORT: '0',
    BRAIN_ENV_HOST_DIR: dirs.env,
    ...standInStageEnv(dirs),
    ...passwordEnv,
    ...env,
  });
  return mode === 'set' ? { project, passwords } : { project };
}

let composeCommand: Promise<[string, ...string[]]> | undefined;

/** `docker-compose` (1.29) when installed, else the `docker compose` plugin (v2): the file serves both. */
function composeCli(): Promise<[string, ...string[]]> {
  composeCommand ??= run('docker-compose', ['version']).then(
    (): [string] => ['docker-compose'],
    (): [string, string] => ['docker', 'compose'],
  );
  return composeCommand;
}

export class ComposeProject {
  constructor(
    readonly name: string,
    readonly env: Record<string, string>,
    readonly files: readonly string[] = [COMPOSE_FILE],
  ) {}

  /**
   * The same project with the example override: the example stages on host folders under `dataDir` (made by the
   * override's one-shot `examples` service) and the repository's own env/ files, as a newcomer runs it.
   */
  withExamples(dataDir: string): ComposeProject {
    return new ComposeProject(this.name, { ...this.env, EXAMPLE_DATA_DIR: dataDir, BRAIN_ENV_HOST_DIR: join(REPO_ROOT, 'env') }, [...this.files, EXAMPLE_COMPOSE_FILE]);
  }

  /** Runs compose on the repository's files with this project's name and environment. */
  async compose(...args: string[]): Promise<string> {
    const [cli, ...pre] = await composeCli();
    try {
      const files = this.files.flatMap((file) => ['-f', join(REPO_ROOT, file)]);
      const { stdout } = await run(cli, [...pre, '-p', this.name, ...files, ...args], {
        env: { ...process.env, ...this.env },
        maxBuffer: 64 * 1024 * 1024,
      });
      return stdout;
    } catch (err) {
      const { stderr, message } = err as { stderr?: string; message: string };
      throw new Error(`${[cli, ...pre, ...args].join(' ')} failed: ${stderr ?? message}`, { cause: err });
    }
  }

  /** The NATS users' passwords as the stack's documented command shows them (`passwords.sh show`). */
  async natsPasswords(): Promise<Record<ComposeNatsUser, string>> {
    const out = await this.compose('exec', '-T', 'nats', 'sh', '/etc/nats/passwords.sh', 'show');
    const shown = new Map(
      out
        .trim()
        .split('\n')
        .map((line) => line.split(' ') as [string, string]),
    );
    const passwords = {} as Record<ComposeNatsUser, string>;
    for (const user of Object.keys(NATS_USERS) as ComposeNatsUser[]) {
      const pass = shown.get(natsUserName(user));
      if (pass === undefined) throw new Error(`passwords.sh show lists no ${natsUserName(user)}:\n${out}`);
      passwords[user] = pass;
    }
    return passwords;
  }

  async containers(): Promise<Docker.ContainerInspectInfo[]> {
    const list = await docker.listContainers({ all: true, filters: { label: [`com.docker.compose.project=${this.name}`] } });
    return Promise.all(list.map((c) => docker.getContainer(c.Id).inspect()));
  }

  /**
   * Waits until every long-running container of the project reports `healthy` and each one-shot service (`setup`)
   * has exited 0; fails early on any other exit. Resolves with the long-running containers.
   */
  async waitHealthy(expected: number, timeoutMs: number, oneShot: readonly string[] = ['setup']): Promise<Docker.ContainerInspectInfo[]> {
    const deadline = Date.now() + timeoutMs;
    let last: Docker.ContainerInspectInfo[] = [];
    const isOneShot = (c: Docker.ContainerInspectInfo) => oneShot.includes(c.Config.Labels['com.docker.compose.service'] ?? '');
    while (Date.now() < deadline) {
      const all = await this.containers();
      const exited = all.find((c) => (c.State.Status === 'exited' && !(isOneShot(c) && c.State.ExitCode === 0)) || c.State.Restarting);
      if (exited !== undefined) throw new Error(`${exited.Name} is ${exited.State.Status}:\n${await this.compose('logs', '--no-color', '--tail', '50')}`);
      last = all.filter((c) => !isOneShot(c));
      const oneShotsDone = oneShot.every((name) => all.some((c) => isOneShot(c) && c.Config.Labels['com.docker.compose.service'] === name && c.State.Status === 'exited'));
      if (oneShotsDone && last.length === expected && last.every((c) => c.State.Health?.Status === 'healthy')) return last;
      await new Promise((r) => setTimeout(r, 1000));
    }
    const states = last.map((c) => `${c.Name} ${c.State.Status} ${c.State.Health?.Status ?? 'no healthcheck'}`).join('\n');
    throw new Error(`not all healthy after ${timeoutMs} ms:\n${states}\n${await this.compose('logs', '--no-color', '--tail', '50')}`);
  }

  /** The host address a service's container port is published on. */
  async published(service: string, port: number): Promise<string> {
    const container = (await this.containers()).find((c) => c.Config.Labels['com.docker.compose.service'] === service);
    const binding = container?.NetworkSettings.Ports[`${port}/tcp`]?.[0];
    if (binding === undefined) throw new Error(`${service}:${port} is not published (${container?.State.Status ?? 'no container'}, restarts ${container?.RestartCount ?? 0})`);
    return `${binding.HostIp}:${binding.HostPort}`;
  }

  /** `down -v`, then any stage container of the given runs that the services left behind. */
  async destroy(runIds: readonly string[]): Promise<void> {
    await this.compose('down', '-v', '--remove-orphans', '--timeout', '20');
    for (const runId of runIds) {
      const left = await docker.listContainers({ all: true, filters: { label: [`${LABELS.managed}=true`, `${LABELS.runId}=${runId}`] } });
      await Promise.all(left.map((c) => docker.getContainer(c.Id).remove({ force: true, v: true })));
    }
  }
}
