import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface NatsServer {
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  /** Stops the server (SIGTERM, or the given signal) and waits for it to exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and store. */
  restart(): Promise<void>;
  /** Removes the store. */
  cleanup(): Promise<void>;
}

/**
 * Launches a real nats-server with JetStream on a random loopback port (`-p -1`) and a temp store,
 * like nats.js's own test helper. `config` is extra nats-server configuration text.
 */
export async function startNatsServer(opts: { config?: string } = {}): Promise<NatsServer> {
  const dir = mkdtempSync(join(tmpdir(), 'brain-nats-'));
  const storeDir = join(dir, 'store');
  const configFile = join(dir, 'nats.conf');
  let port = -1;
  let child: ChildProcess | undefined;

  const launch = async () => {
    writeFileSync(configFile, `listen: 127.0.0.1:${port}\njetstream { store_dir: "${storeDir}" }\n${opts.config ?? ''}\n`);
    const proc = spawn('nats-server', ['-c', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    child = proc;
    port = await new Promise<number>((resolve, reject) => {
      let seen = '';
      const timer = setTimeout(() => reject(new Error(`nats-server did not start:\n${seen}`)), 10_000);
      proc.once('exit', (code) => reject(new Error(`nats-server exited with ${code}:\n${seen}`)));
      proc.stderr?.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        const match = /Listening for client connections on [^\s]+:(\d+)/.exec(seen);
        if (match?.[1] !== undefined && /Server is ready/.test(seen)) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
    });
    proc.stderr?.resume();
  };

  await launch();
  return {
    get url() {
      return `nats://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    storeDir,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      const proc = child;
      if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
      proc.kill(signal);
      await exited;
    },
    restart: launch,
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
      return Promise.resolve();
    },
  };
}
