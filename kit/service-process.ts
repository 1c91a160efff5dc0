/** `brain` commands as real child processes. */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';

const BRAIN = join(__dirname, '..', '..', 'bin', 'brain.js');

export interface ServiceProcess {
  readonly pid: number;
  readonly output: string[];
  /** Resolves once the process logged a line matching the pattern. */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<string>;
  signal(sig: NodeJS.Signals): void;
  /** Resolves with the exit code (or signal) once the process is gone. */
  readonly exited: Promise<number | NodeJS.Signals>;
  /** Peak resident set size so far, in bytes (from /proc). */
  peakRss(): number;
  rss(): number;
}

/** Runs `brain service <name>` (or `brain up`) as a real child process; `nodeArgs` go to node before the script. */
export function spawnService(args: string[], env: Record<string, string>, opts: { nodeArgs?: readonly string[] } = {}): ServiceProcess {
  const child: ChildProcess = spawn(process.execPath, [...(opts.nodeArgs ?? []), BRAIN, ...args], {
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  const waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  let partial = '';
  const onData = (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      output.push(line);
      for (const w of [...waiters]) {
        if (w.pattern.test(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<number | NodeJS.Signals>((resolve) => child.once('exit', (code, sig) => resolve(code ?? sig ?? 0)));
  const status = (field: string) => {
    try {
      const text = readFileSync(`/proc/${child.pid}/status`, 'utf8');
      const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(text);
      return match?.[1] !== undefined ? Number(match[1]) * 1024 : 0;
    } catch {
      return 0;
    }
  };
  return {
    pid: child.pid ?? -1,
    output,
    waitForLog(pattern, timeoutMs = 20_000) {
      const seen = output.find((l) => pattern.test(l));
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no log line matching ${pattern} after ${timeoutMs} ms:\n${output.slice(-20).join('\n')}`)), timeoutMs);
        waiters.push({ pattern, resolve: (l) => (clearTimeout(timer), resolve(l)) });
      });
    },
    signal: (sig) => void child.kill(sig),
    exited,
    peakRss: () => status('VmHWM'),
    rss: () => status('VmRSS'),
  };
}
