/** Helpers shared by the benchmark sections: statistics, /proc sampling, shell commands, Docker events. */
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { LABELS } from '../shared/docker';

export const REPO_ROOT = resolve(__dirname, '../..');

export function median(xs: readonly number[]): number {
  return percentile(xs, 50);
}

/** Nearest-rank percentile. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const sorted = [...xs].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export const envInt = (name: string, fallback: number): number => {
  const raw = process.env[name];
  return raw === undefined || raw === '' ? fallback : Number(raw);
};

export interface ProcSample {
  rssKb: number;
  hwmKb: number;
  fds: number;
}

/** VmRSS, VmHWM and open file descriptors of a process. */
export function sampleProc(pid: number): ProcSample {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { rssKb: field('VmRSS'), hwmKb: field('VmHWM'), fds: readdirSync(`/proc/${pid}/fd`).length };
}

/** V8 heap in use (bytes), from the service's own Prometheus metrics. */
export async function heapUsedBytes(port: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return Number(/^brain_nodejs_heap_size_used_bytes(?:\{[^}]*\})? (\S+)/m.exec(text)?.[1] ?? Number.NaN);
}

/** Proportional set size (kB): shared pages (the node binary, libraries) split among the processes sharing them. */
export function pssKb(pid: number): number {
  return Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? Number.NaN);
}

/** Samples a process's RSS every `everyMs` until stopped; resolves with the largest seen. */
export function watchPeakRss(pid: number, everyMs = 20): { stop(): number } {
  let peak = 0;
  const timer = setInterval(() => {
    try {
      peak = Math.max(peak, sampleProc(pid).rssKb);
    } catch {
      // the process is gone
    }
  }, everyMs);
  return {
    stop() {
      clearInterval(timer);
      return peak;
    },
  };
}

/** Runs a command; resolves with its stdout, rejects with its stderr on a non-zero exit. */
export function exec(cmd: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolvePromise(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`))));
  });
}

/** Runs a bash script; resolves with its wall time in ms. */
export async function timeShell(script: string): Promise<number> {
  const t0 = performance.now();
  await exec('bash', ['-c', script]);
  return performance.now() - t0;
}

export interface DockerEvent {
  action: 'create' | 'start' | 'die' | 'destroy';
  stage: string;
  runId: string;
  /** Milliseconds since the epoch, with sub-millisecond precision. */
  atMs: number;
}

/** Records `docker events` create/start/die/destroy of containers with a run id label (services' and baselines') until stopped. */
export async function recordDockerEvents(): Promise<{ events: DockerEvent[]; stop(): Promise<void> }> {
  const child = spawn(
    'docker',
    ['events', '--format', '{{json .}}', '--filter', `label=${LABELS.runId}`, ...['create', 'start', 'die', 'destroy'].flatMap((e) => ['--filter', `event=${e}`])],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const events: DockerEvent[] = [];
  let partial = '';
  child.stdout.on('data', (c: Buffer) => {
    const lines = (partial + c.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (line === '') continue;
      const e = JSON.parse(line) as { status: string; timeNano: number; Actor: { Attributes: Record<string, string> } };
      events.push({
        action: e.status as DockerEvent['action'],
        stage: e.Actor.Attributes[LABELS.stage] ?? '',
        runId: e.Actor.Attributes[LABELS.runId] ?? '',
        atMs: e.timeNano / 1e6,
      });
    }
  });
  await sleep(300); // let the CLI subscribe before anything starts
  return {
    events,
    async stop() {
      await sleep(300);
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** Run ids of the bench start with this, so its containers are told from a concurrent test run's. */
export const RUN_PREFIX = 'bench';

/**
 * On the baselines' containers instead of `io.brain-pipeline.managed`, which would make them look like
 * orphans to the services' sweeper (their runs hold no lock) and get them removed mid-run.
 */
export const BASELINE_LABEL = 'io.brain-pipeline.bench=baseline';

/** Removes every container of the bench's runs, the services' and the baselines' (named `brain-<stage>-bench…`). */
export async function removeBenchContainers(): Promise<void> {
  const ids = (await exec('docker', ['ps', '-aq', '--filter', `label=${LABELS.runId}`, '--filter', `name=-${RUN_PREFIX}`])).split('\n').filter((s) => s !== '');
  if (ids.length > 0) await exec('docker', ['rm', '-f', ...ids]);
}
