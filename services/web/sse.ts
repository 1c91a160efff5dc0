import { once } from 'node:events';
import type { ServerResponse } from 'node:http';

/** Headers of every response: nothing is loaded from outside the service, nothing is framed or sniffed. */
export const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cross-origin-resource-policy': 'same-origin',
};

/**
 * A Server-Sent Events response: `send` waits while the socket's buffer is full (a slow client slows its reader, it
 * does not grow memory); a comment every `heartbeatMs` keeps proxies from closing an idle stream.
 */
export interface SseStream {
  send(event: { id?: number | string; event?: string; data: unknown }): Promise<void>;
  readonly closed: boolean;
  /** Aborted when the client goes away. */
  readonly signal: AbortSignal;
  end(): void;
}

export function openSse(res: ServerResponse, heartbeatMs: number): SseStream {
  const controller = new AbortController();
  res.writeHead(200, {
    ...SECURITY_HEADERS,
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-store',
    connection: 'keep-alive',
    // nginx and similar proxies buffer responses unless told not to.
    'x-accel-buffering': 'no',
  });
  res.write('retry: 2000\n\n');
  const heartbeat = setInterval(() => {
    if (!res.writableEnded) res.write(': keep-alive\n\n');
  }, heartbeatMs);
  const close = () => {
    clearInterval(heartbeat);
    controller.abort();
  };
  res.once('close', close);
  return {
    async send(e) {
      if (controller.signal.aborted) return;
      const head = `${e.id !== undefined ? `id: ${e.id}\n` : ''}${e.event !== undefined ? `event: ${e.event}\n` : ''}`;
      if (!res.write(`${head}data: ${JSON.stringify(e.data)}\n\n`)) {
        await Promise.race([once(res, 'drain'), once(controller.signal, 'abort')]);
      }
    },
    get closed() {
      return controller.signal.aborted;
    },
    signal: controller.signal,
    end() {
      close();
      if (!res.writableEnded) res.end();
    },
  };
}
