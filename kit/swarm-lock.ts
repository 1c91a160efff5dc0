/**
 * One swarm at a time on the suite's engine: tap runs test files in parallel, and a swarm test file (or the bench's
 * backends section) inits the engine as a swarm manager and leaves it at its end. Every file that touches the engine's
 * swarm state, or that swarm mode would disturb (compose's DNS), takes this lock first and holds it until its teardown
 * (test/swarm.test.ts, test/swarm-nodes.test.ts, test/compose.test.ts, bench/backends.ts).
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const LOCK_DIR = '/tmp/brain-test-swarm.lock';

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
};

/** The pid holding the lock, or null when it is free or its holder died (stale: taken over). */
function holder(): number | null {
  try {
    const pid = Number(readFileSync(join(LOCK_DIR, 'pid'), 'utf8'));
    return Number.isInteger(pid) && alive(pid) ? pid : null;
  } catch {
    return null; // no pid file (yet, or a crash between mkdir and write): judged again next round
  }
}

/**
 * Takes the engine's swarm lock (mkdir is atomic), waiting up to `timeoutMs` for another file to finish with it;
 * releases it in the test's teardown, registered first so it runs after the file's own teardowns (tap runs them in reverse).
 */
export async function takeSwarmLock(t: { teardown: (fn: () => void | Promise<void>) => void }, timeoutMs = 10 * 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let pidless = 0;
  for (;;) {
    try {
      mkdirSync(LOCK_DIR);
      writeFileSync(join(LOCK_DIR, 'pid'), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = holder();
    pidless = pid === null ? pidless + 1 : 0;
    if (pidless >= 4) {
      rmSync(LOCK_DIR, { recursive: true, force: true }); // its holder died (or never wrote its pid in 2 s)
      continue;
    }
    if (Date.now() > deadline) throw new Error(`the swarm lock ${LOCK_DIR} is still held by pid ${String(pid)} after ${timeoutMs} ms`);
    await sleep(500);
  }
  t.teardown(() => {
    if (holder() === process.pid) rmSync(LOCK_DIR, { recursive: true, force: true });
  });
}
