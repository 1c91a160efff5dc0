import { createConnection, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/** A client→server publish seen by the proxy (`PUB` or `HPUB`). */
export interface ProxiedPublish {
  subject: string;
  reply: string | undefined;
  /** The raw NATS header block of an `HPUB` (`NATS/1.0\r\n…\r\n\r\n`), empty for a `PUB`. */
  headers: Buffer;
  /** The message body (without headers). */
  payload: Buffer;
}

export interface DropRule {
  /** The publishes this rule dropped so far, in order. */
  readonly dropped: readonly ProxiedPublish[];
  /** Resolves once the rule has dropped `count` publishes (never, for a rule without a count). */
  readonly done: Promise<void>;
  /** Stops dropping. */
  remove(): void;
}

export interface NatsProxy {
  /** `nats://127.0.0.1:<port>`: give this to the clients that should go through the proxy. */
  readonly url: string;
  readonly port: number;
  /** Every publish that went through (or was dropped), in order, across all connections. */
  readonly publishes: readonly ProxiedPublish[];
  /**
   * Drops client→server publishes for which `match` is true (the first `count` of them, or all while the rule
   * stands). Everything else, and the whole server→client direction, passes unchanged.
   */
  drop(match: (pub: ProxiedPublish) => boolean, opts?: { count?: number }): DropRule;
  /** Drops every connection and refuses new ones (closed at once after accept): a NATS outage for these clients only. */
  cut(): Promise<void>;
  /** Accepts connections again. */
  restore(): void;
  close(): Promise<void>;
}

/**
 * A TCP proxy on 127.0.0.1 (random port) in front of a nats-server that parses the client→server protocol:
 * `PUB <subject> [reply] <size>\r\n<payload>\r\n` and `HPUB <subject> [reply] <hdr size> <total size>\r\n<hdr><payload>\r\n`
 * are framed (so a payload is never mistaken for a command) and may be dropped; other lines pass through.
 */
export async function startNatsProxy(target: { host?: string; port: number }): Promise<NatsProxy> {
  const host = target.host ?? '127.0.0.1';
  const sockets = new Set<Socket>();
  const rules = new Set<{ match: (pub: ProxiedPublish) => boolean; left: number; dropped: ProxiedPublish[]; resolve: () => void }>();
  const publishes: ProxiedPublish[] = [];
  let refusing = false;

  const shouldDrop = (pub: ProxiedPublish): boolean => {
    for (const rule of rules) {
      if (rule.left <= 0 || !rule.match(pub)) continue;
      rule.left -= 1;
      rule.dropped.push(pub);
      if (rule.left === 0) {
        rules.delete(rule);
        rule.resolve();
      }
      return true;
    }
    return false;
  };

  const server: Server = createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = createConnection({ host, port: target.port });
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
    upstream.pipe(client);
    const parser = clientProtocolParser(
      (chunk) => upstream.write(chunk),
      (pub) => {
        publishes.push(pub);
        return !shouldDrop(pub);
      },
    );
    client.on('data', (chunk: Buffer) => {
      try {
        parser(chunk);
      } catch {
        drop(); // a malformed frame: behave like a server would and close the connection
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as AddressInfo).port;

  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    publishes,
    drop(match, opts = {}) {
      let resolve: () => void = () => undefined;
      const done = new Promise<void>((r) => (resolve = r));
      const rule = { match, left: opts.count ?? Number.POSITIVE_INFINITY, dropped: [] as ProxiedPublish[], resolve };
      rules.add(rule);
      return { dropped: rule.dropped, done, remove: () => void rules.delete(rule) };
    },
    async cut() {
      refusing = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    restore() {
      refusing = false;
    },
    async close() {
      refusing = true;
      for (const s of sockets) s.destroy();
      sockets.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const CRLF = Buffer.from('\r\n');

/**
 * An incremental parser of the client→server stream. `forward` gets the bytes to send on; `onPublish` is asked
 * about each complete `PUB`/`HPUB` frame (return false to drop it).
 */
function clientProtocolParser(forward: (bytes: Buffer) => void, onPublish: (pub: ProxiedPublish) => boolean): (chunk: Buffer) => void {
  let buffer: Buffer = Buffer.alloc(0);
  return (chunk) => {
    buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk]);
    const out: Buffer[] = [];
    for (;;) {
      const eol = buffer.indexOf(CRLF);
      if (eol < 0) break;
      const line = buffer.subarray(0, eol).toString('latin1');
      const [op = '', ...args] = line.trim().split(/[ \t]+/);
      const verb = op.toUpperCase();
      if (verb !== 'PUB' && verb !== 'HPUB') {
        out.push(buffer.subarray(0, eol + 2));
        buffer = buffer.subarray(eol + 2);
        continue;
      }
      const sizes = verb === 'PUB' ? 1 : 2;
      if (args.length < 1 + sizes || args.length > 2 + sizes) throw new Error(`malformed ${verb}: ${line}`);
      const subject = args[0] as string;
      const reply = args.length === 2 + sizes ? args[1] : undefined;
      const total = Number(args[args.length - 1]);
      const headerSize = verb === 'HPUB' ? Number(args[args.length - 2]) : 0;
      if (!Number.isInteger(total) || !Number.isInteger(headerSize) || headerSize > total) throw new Error(`malformed ${verb}: ${line}`);
      const frameEnd = eol + 2 + total + 2;
      if (buffer.length < frameEnd) break; // wait for the rest of the payload
      const body = buffer.subarray(eol + 2, eol + 2 + total);
      const pub: ProxiedPublish = {
        subject,
        reply,
        headers: Buffer.from(body.subarray(0, headerSize)),
        payload: Buffer.from(body.subarray(headerSize)),
      };
      if (onPublish(pub)) out.push(buffer.subarray(0, frameEnd));
      buffer = buffer.subarray(frameEnd);
    }
    // Copy what stays, so the next concat does not keep the whole chunk alive.
    buffer = Buffer.from(buffer);
    if (out.length > 0) forward(Buffer.concat(out));
  };
}
