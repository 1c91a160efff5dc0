import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A unix-socket proxy in front of the Docker engine. `cut()` drops every connection and refuses
 * new ones, as a restarting dockerd does; `restore()` accepts again. Containers keep running.
 */
export interface SocketProxy {
  readonly path: string;
  cut(): Promise<void>;
  restore(): Promise<void>;
  close(): Promise<void>;
}

export async function startSocketProxy(target = '/var/run/docker.sock'): Promise<SocketProxy> {
  const dir = mkdtempSync(join(tmpdir(), 'brain-proxy-'));
  const path = join(dir, 'docker.sock');
  const sockets = new Set<Socket>();
  let server: Server | undefined;

  const listen = () =>
    new Promise<void>((resolve) => {
      server = createServer((client) => {
        const upstream = createConnection(target);
        sockets.add(client);
        sockets.add(upstream);
        const drop = () => {
          client.destroy();
          upstream.destroy();
          sockets.delete(client);
          sockets.delete(upstream);
        };
        client.on('error', drop).on('close', drop);
        upstream.on('error', drop).on('close', drop);
        client.pipe(upstream).pipe(client);
      });
      server.listen(path, () => resolve());
    });
  const stop = async () => {
    const closing = new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    for (const s of sockets) s.destroy();
    sockets.clear();
    await closing;
    server = undefined;
  };

  await listen();
  return {
    path,
    cut: stop,
    restore: listen,
    async close() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
