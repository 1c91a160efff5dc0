/**
 * A two-node swarm on one machine: the suite's engine is the manager, and a second dockerd, in a network namespace of
 * its own joined to the host over a veth pair, is a worker. The worker shares the host's filesystem (bind mounts work
 * the same on both), not its images: the stand-ins are copied into it. Take the swarm lock (swarm-lock.ts) first.
 */
import { execFileSync, execSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import Docker from 'dockerode';
import { createDockerClient } from '../../shared/docker';

export interface TwoNodeSwarm {
  /** The suite's engine, the swarm's manager. */
  manager: Docker;
  managerNodeId: string;
  /** The second dockerd (a worker), on `workerUrl`. */
  worker: Docker;
  workerUrl: string;
  workerNodeId: string;
  /** Both ends of the veth pair. */
  addresses: { manager: string; worker: string };
}

export interface TwoNodeOptions {
  /** Node labels of the worker (`docker node update --label-add`). */
  labels?: Record<string, string>;
  /** Images copied from the suite's engine into the worker (`docker save | docker -H … load`). */
  images?: readonly string[];
  /** The worker dockerd's `--node-generic-resource` values, e.g. `NVIDIA-GPU=GPU-fake-0` (what Swarm schedules GPUs by). */
  genericResources?: readonly string[];
}

/** The veth addresses this helper uses: a swarm advertising on one is a leftover of it. */
const LEFTOVER = /^10\.231\./;

const ip = (...args: string[]): void => void execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not after ${timeoutMs} ms`);
    await sleep(200);
  }
}

/**
 * Inits the suite's engine as a swarm manager advertising on the host end of a new veth pair, starts the worker's
 * dockerd in its namespace (`nsenter --net`, not `ip netns exec`, which remounts /sys and hides the cgroup mounts),
 * joins it, labels it and loads the images into it. Everything is torn down in `t`'s teardown: the worker leaves and
 * is removed, its dockerd killed, the namespace (and with it the veth pair) deleted, the manager leaves the swarm.
 * @throws when the suite's engine is already in a swarm (another file's, or a leftover: `docker swarm leave --force`).
 */
export async function startTwoNodeSwarm(t: { teardown: (fn: () => void | Promise<void>) => void }, opts: TwoNodeOptions = {}): Promise<TwoNodeSwarm> {
  const manager = new Docker();
  const state = (await manager.info()) as { Swarm: { LocalNodeState: string; NodeAddr?: string } };
  if (state.Swarm.LocalNodeState !== 'inactive' && LEFTOVER.test(state.Swarm.NodeAddr ?? '')) {
    // An earlier two-node swarm of this helper whose process died before its teardown: under the lock, nobody uses it.
    await manager.swarmLeave({ force: true });
  } else if (state.Swarm.LocalNodeState !== 'inactive') {
    throw new Error(`the suite's engine is already a swarm node (${state.Swarm.LocalNodeState}); a two-node swarm needs it to start outside any swarm`);
  }
  const tag = `bn${process.pid % 100_000}`;
  const netns = `${tag}-ns`;
  const octet = (process.pid % 250) + 1;
  const addresses = { manager: `10.231.${octet}.1`, worker: `10.231.${octet}.2` };
  const dir = mkdtempSync(join(tmpdir(), 'brain-node-'));
  const workerUrl = `unix://${join(dir, 'docker.sock')}`;
  const teardowns: (() => Promise<void> | void)[] = [];
  const tearDown = async () => {
    process.off('SIGTERM', onSignal).off('SIGINT', onSignal);
    for (const step of teardowns.splice(0).reverse()) {
      try {
        await step();
      } catch (err) {
        console.error(`two-node swarm teardown: ${(err as Error).message}`);
      }
    }
  };
  // A test process stopped by a signal (tap's timeout, a Ctrl-C) runs no teardown: take the namespace, the second
  // dockerd and the swarm down first, then exit as the signal would have.
  const onSignal = (signal: NodeJS.Signals) => {
    void tearDown().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGTERM', onSignal).once('SIGINT', onSignal);
  t.teardown(tearDown);

  ip('netns', 'add', netns);
  teardowns.push(() => ip('netns', 'del', netns)); // deleting the namespace deletes the veth pair too
  ip('link', 'add', `${tag}h`, 'type', 'veth', 'peer', 'name', `${tag}n`);
  ip('link', 'set', `${tag}n`, 'netns', netns);
  ip('addr', 'add', `${addresses.manager}/24`, 'dev', `${tag}h`);
  ip('link', 'set', `${tag}h`, 'up');
  ip('-n', netns, 'addr', 'add', `${addresses.worker}/24`, 'dev', `${tag}n`);
  ip('-n', netns, 'link', 'set', `${tag}n`, 'up');
  ip('-n', netns, 'link', 'set', 'lo', 'up');
  teardowns.push(() => ip('link', 'del', `${tag}h`)); // before the namespace goes (a no-op error after it)

  const args = ['--data-root', join(dir, 'data'), '--exec-root', join(dir, 'exec'), '--pidfile', join(dir, 'docker.pid'), '-H', workerUrl, '--bridge=none', '--iptables=false'];
  for (const r of opts.genericResources ?? []) args.push('--node-generic-resource', r);
  const dockerd: ChildProcess = spawn('nsenter', [`--net=/run/netns/${netns}`, 'dockerd', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  dockerd.stderr?.on('data', (d: Buffer) => (log = (log + d.toString()).slice(-4000)));
  teardowns.push(async () => {
    rmSync(dir, { recursive: true, force: true });
  });
  teardowns.push(async () => {
    if (dockerd.exitCode !== null || dockerd.signalCode !== null) return;
    const exited = new Promise((r) => dockerd.once('exit', r));
    dockerd.kill('SIGTERM');
    if ((await Promise.race([exited.then(() => true), sleep(20_000).then(() => false)])) === false) {
      dockerd.kill('SIGKILL');
      await exited;
    }
  });
  const worker = createDockerClient(workerUrl);
  await until('the second dockerd answers', 30_000, async () => {
    if (dockerd.exitCode !== null) throw new Error(`the second dockerd exited: ${log}`);
    return (await worker.ping()) !== undefined ? true : undefined;
  }).catch((err: Error) => {
    throw new Error(`${err.message}\n${log}`);
  });
  if (opts.images !== undefined && opts.images.length > 0) {
    execSync(`docker save ${opts.images.join(' ')} | docker -H ${workerUrl} load`, { stdio: 'ignore' });
  }

  await manager.swarmInit({ ListenAddr: `${addresses.manager}:2377`, AdvertiseAddr: addresses.manager, ForceNewCluster: false });
  teardowns.push(async () => {
    await manager.swarmLeave({ force: true });
  });
  const swarm = (await manager.swarmInspect()) as { JoinTokens: { Worker: string } };
  const managerNodeId = ((await manager.info()) as { Swarm: { NodeID: string } }).Swarm.NodeID;
  await worker.swarmJoin({
    ListenAddr: `${addresses.worker}:2377`,
    AdvertiseAddr: addresses.worker,
    RemoteAddrs: [`${addresses.manager}:2377`],
    JoinToken: swarm.JoinTokens.Worker,
  });
  const workerNodeId = ((await worker.info()) as { Swarm: { NodeID: string } }).Swarm.NodeID;
  teardowns.push(async () => {
    await worker.swarmLeave({ force: true }).catch(() => undefined);
    await manager.getNode(workerNodeId).remove({ force: true });
  });

  await until('the worker is ready on the manager', 30_000, async () => {
    const node = (await manager.getNode(workerNodeId).inspect()) as { Status: { State: string } };
    return node.Status.State === 'ready' ? true : undefined;
  });
  if (opts.labels !== undefined) {
    const node = (await manager.getNode(workerNodeId).inspect()) as { Version: { Index: number }; Spec: { Labels?: Record<string, string> } };
    await manager.getNode(workerNodeId).update({ version: node.Version.Index, ...node.Spec, Labels: { ...node.Spec.Labels, ...opts.labels } });
  }
  return { manager, managerNodeId, worker, workerUrl, workerNodeId, addresses };
}
