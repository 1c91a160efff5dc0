import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A unix-socket proxy in front of the Docker engine. `cut()` drops every connection and refuses
 * new ones, as a restarting dockerd does; `restore()` accepts again. `endAttach()` closes only the
 * connections that carry a container attach stream, as a proxy timing out a long request does.
 * Containers keep running.
 */
export interface SocketProxy {
  readonly path: string;
  cut(): Promise<void>;
  restore(): Promise<void>;
  /** Closes the attach connections open now; resolves with how many there were. */
  endAttach(): number;
  /**
   * The next request whose path matches reaches Docker, but its connection is closed as Docker answers:
   * the caller never learns the result (as when dockerd restarts mid-request).
   */
  loseAnswerTo(path: RegExp): void;
  /** Requests seen so far, as `METHOD /path` (query cut off), oldest first. */
  readonly requests: string[];
  close(): Promise<void>;
}

interface Pair {
  client: Socket;
  upstream: Socket;
  /** The connection carried an attach request: from then on it is the container's output stream. */
  attach: boolean;
  /** Close the connection as soon as Docker answers. */
  loseAnswer: boolean;
}

const REQUEST_LINE = /(GET|POST|PUT|DELETE|HEAD) (\/[^ ?]*)/g;

export async function startSocketProxy(target = '/var/run/docker.sock'): Promise<SocketProxy> {
  const dir = mkdtempSync(join(tmpdir(), 'brain-proxy-'));
  const path = join(dir, 'docker.sock');
  const pairs = new Set<Pair>();
  const requests: string[] = [];
  let server: Server | undefined;
  let loseAnswerTo: RegExp | undefined;

  const listen = () =>
    new Promise<void>((resolve) => {
      server = createServer((client) => {
        const upstream = createConnection(target);
        const pair: Pair = { client, upstream, attach: false, loseAnswer: false };
        pairs.add(pair);
        const drop = () => {
          client.destroy();
          upstream.destroy();
          pairs.delete(pair);
        };
        client.on('error', drop).on('close', drop);
        upstream.on('error', drop).on('close', drop);
        // Keep-alive reuses connections: every chunk from the client may start a request.
        client.on('data', (chunk: Buffer) => {
          for (const match of chunk.toString('latin1').matchAll(REQUEST_LINE)) {
            requests.push(`${match[1]} ${match[2]}`);
            if (/\/containers\/[^/]+\/attach$/.test(match[2] ?? '')) pair.attach = true;
            if (loseAnswerTo?.test(match[2] ?? '') === true) {
              loseAnswerTo = undefined;
              pair.loseAnswer = true;
            }
          }
        });
        upstream.on('data', () => {
          if (pair.loseAnswer) drop();
        });
        client.pipe(upstream).pipe(client);
      });
      server.listen(path, () => resolve());
    });
  const stop = async () => {
    const closing = new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    for (const pair of pairs) {
      pair.client.destroy();
      pair.upstream.destroy();
    }
    pairs.clear();
    await closing;
    server = undefined;
  };

  await listen();
  return {
    path,
    requests,
    cut: stop,
    restore: listen,
    loseAnswerTo(path) {
      loseAnswerTo = path;
    },
    endAttach() {
      let ended = 0;
      for (const pair of [...pairs]) {
        if (!pair.attach) continue;
        pair.client.destroy();
        pair.upstream.destroy();
        pairs.delete(pair);
        ended++;
      }
      return ended;
    },
    async close() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
