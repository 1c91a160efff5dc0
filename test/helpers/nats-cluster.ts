import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';

export interface NatsCluster {
  /** Client URL of each node, in node order. */
  readonly urls: string[];
  /** Stops node `i` (SIGTERM, or the given signal) and waits for it to exit. */
  stop(i: number, signal?: NodeJS.Signals): Promise<void>;
  /** Starts node `i` again on the same ports and store (nothing when it is running). */
  restart(i: number): Promise<void>;
  /** Index of the node a connection reports as its server, e.g. `nc.getServer()`. */
  indexOf(server: string): number;
  /** Stops every node and removes the stores. */
  cleanup(): Promise<void>;
}

/** A free loopback port: bound on port 0, then released. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** Waits until JetStream answers account info, which it does only once the meta leader is elected. */
async function waitForJetStream(urls: string[], timeoutMs = 30_000): Promise<void> {
  const nc = await connect({ servers: urls, name: 'cluster-probe', maxReconnectAttempts: -1, reconnectTimeWait: 200 });
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  try {
    while (Date.now() < deadline) {
      try {
        await (await jetstreamManager(nc, { timeout: 2000 })).getAccountInfo();
        return;
      } catch (err) {
        last = err;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    throw new Error(`JetStream meta leader not elected after ${timeoutMs} ms: ${String(last)}`);
  } finally {
    await nc.close();
  }
}

/**
 * Three nats-server processes on loopback, routed into one cluster, JetStream on each with its own
 * temp store and `server_name`; returns once the JetStream meta leader is elected.
 */
export async function startNatsCluster(opts: { size?: number } = {}): Promise<NatsCluster> {
  const size = opts.size ?? 3;
  const dir = mkdtempSync(join(tmpdir(), 'brain-nats-cluster-'));
  const clientPorts: number[] = [];
  const routePorts: number[] = [];
  for (let i = 0; i < size; i++) {
    clientPorts.push(await freePort());
    routePorts.push(await freePort());
  }
  const urls = clientPorts.map((p) => `nats://127.0.0.1:${p}`);
  const children: (ChildProcess | undefined)[] = Array.from({ length: size }, () => undefined);

  const launch = async (i: number) => {
    const configFile = join(dir, `n${i}.conf`);
    const routes = routePorts.map((p) => `nats-route://127.0.0.1:${p}`).join(', ');
    writeFileSync(
      configFile,
      [
        `server_name: n${i}`,
        `listen: 127.0.0.1:${clientPorts[i]}`,
        `jetstream { store_dir: "${join(dir, `store-n${i}`)}" }`,
        `cluster { name: brain-test, listen: 127.0.0.1:${routePorts[i]}, routes: [${routes}] }`,
        '',
      ].join('\n'),
    );
    const proc = spawn('nats-server', ['-c', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    children[i] = proc;
    await new Promise<void>((resolve, reject) => {
      let seen = '';
      const timer = setTimeout(() => reject(new Error(`nats-server n${i} did not start:\n${seen}`)), 15_000);
      const onExit = (code: number | null) => reject(new Error(`nats-server n${i} exited with ${code}:\n${seen}`));
      proc.once('exit', onExit);
      const onData = (chunk: Buffer) => {
        seen += chunk.toString();
        if (/Server is ready/.test(seen)) {
          clearTimeout(timer);
          proc.off('exit', onExit);
          proc.stderr?.off('data', onData);
          proc.stderr?.resume();
          resolve();
        }
      };
      proc.stderr?.on('data', onData);
    });
  };

  const stop = async (i: number, signal: NodeJS.Signals = 'SIGTERM') => {
    const proc = children[i];
    if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill(signal);
    await exited;
  };

  const cleanup = async () => {
    await Promise.all(children.map((_, i) => stop(i, 'SIGKILL')));
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    await Promise.all(children.map((_, i) => launch(i)));
    await waitForJetStream(urls);
  } catch (err) {
    await cleanup();
    throw err;
  }
  return {
    urls,
    stop,
    async restart(i) {
      const proc = children[i];
      if (proc !== undefined && proc.exitCode === null && proc.signalCode === null) return;
      await launch(i);
      await waitForJetStream(urls);
    },
    indexOf(server) {
      const port = Number(/:(\d+)$/.exec(server)?.[1]);
      return clientPorts.indexOf(port);
    },
    cleanup,
  };
}
