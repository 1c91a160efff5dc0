/**
 * Start-up of the `brain` command line against a bare `node -e 0`, the three run in turn (so a busy machine slows
 * all of them alike), median of `reps` each: `brain --help` (commander alone) and `brain runs` (the bundle: connect,
 * read the event history, print) on a local nats-server set up by `brain setup`.
 *
 *   BENCH_SECTIONS=cli npm run bench
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { startNatsServer } from '../kit/nats-server';
import { median, REPO_ROOT } from './util';

export interface CliStartup {
  nodeMs: number;
  helpMs: number;
  runsMs: number;
}

export async function benchCliStartup(reps: number): Promise<CliStartup> {
  const nats = await startNatsServer();
  try {
    const env = { ...process.env, NATS_URL: nats.url, NATS_USER: '', NATS_PASS: '', LOG_LEVEL: 'warn' };
    const brain = join(REPO_ROOT, 'bin', 'brain.js');
    const timed = (args: string[]): number => {
      const t0 = process.hrtime.bigint();
      const r = spawnSync(process.execPath, args, { env, cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
      if (r.status !== 0) throw new Error(`node ${args.join(' ')} exited ${r.status}: ${r.stderr.toString()}`);
      return Number(process.hrtime.bigint() - t0) / 1e6;
    };
    timed([brain, 'setup']);
    timed([brain, 'trigger', 'transform']);
    const node: number[] = [];
    const help: number[] = [];
    const runs: number[] = [];
    for (let i = 0; i < reps; i++) {
      node.push(timed(['-e', '0']));
      help.push(timed([brain, '--help']));
      runs.push(timed([brain, 'runs']));
    }
    return { nodeMs: median(node), helpMs: median(help), runsMs: median(runs) };
  } finally {
    await nats.stop();
    await nats.cleanup();
  }
}
