import { createHash, randomBytes } from 'node:crypto';
import type { NatsConnection } from '@nats-io/transport-node';
import { errors as natsErrors } from '@nats-io/nats-core';
import { z } from 'zod';
import { describeError } from '../../shared/errors';
import type { Logger } from '../../shared/logger';

/** NATS credentials taken from an HTTP Basic `Authorization` header. */
export interface Credentials {
  user: string;
  pass: string;
}

/** Opens a NATS connection: as `creds` when given, else with the web service's own configured identity (if any). */
export type ConnectNats = (opts: { creds?: Credentials; name: string }) => Promise<NatsConnection>;

// eslint-disable-next-line no-control-regex -- control characters are what it refuses
const USER_CHARS = /^[^\s\x00-\x1f:]+$/;
// eslint-disable-next-line no-control-regex -- control characters are what it refuses
const PASS_CHARS = /^[^\x00-\x1f]+$/;
const User = z.string().min(1).max(128).regex(USER_CHARS);
const Pass = z.string().min(1).max(1024).regex(PASS_CHARS);

/** The credentials of a Basic header, or null when it is missing or malformed. */
export function parseBasic(header: string | undefined): Credentials | null {
  if (header === undefined) return null;
  const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
  if (match?.[1] === undefined) return null;
  const text = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon < 0) return null;
  const user = User.safeParse(text.slice(0, colon));
  const pass = Pass.safeParse(text.slice(colon + 1));
  return user.success && pass.success ? { user: user.data, pass: pass.data } : null;
}

/** The NATS server refused these credentials (the client's error class, through causes). */
export function isAuthRefused(err: unknown): boolean {
  let e: unknown = err;
  for (let depth = 0; depth < 5 && e instanceof Error; depth++) {
    if (e instanceof natsErrors.AuthorizationError || e instanceof natsErrors.UserAuthenticationExpiredError) return true;
    e = e.cause;
  }
  return false;
}

export class AuthRefused extends Error {
  constructor() {
    super('the NATS server refused these credentials');
    this.name = 'AuthRefused';
  }
}

/** A connection held for one request (or one open stream); `release` once done with it. */
export interface Lease {
  readonly nc: NatsConnection;
  /** The NATS user, when the connection is a person's. */
  readonly user?: string;
  release(): void;
}

export interface ConnectionPool {
  acquire(creds: Credentials): Promise<Lease>;
  readonly size: number;
  close(): Promise<void>;
}

interface Entry {
  nc: Promise<NatsConnection>;
  refs: number;
  idle?: NodeJS.Timeout;
}

/**
 * One NATS connection per set of credentials, kept `idleMs` after its last use. The key is the user and a salted
 * hash of the password, so a wrong password never reaches another's connection and no password is kept as a key.
 */
export function createConnectionPool(deps: { connect: ConnectNats; logger: Logger; idleMs: number }): ConnectionPool {
  const salt = randomBytes(16);
  const entries = new Map<string, Entry>();
  let closed = false;
  const keyOf = (c: Credentials) => `${c.user}\0${createHash('sha256').update(salt).update(c.pass).digest('hex')}`;

  function drop(key: string, entry: Entry): void {
    if (entries.get(key) === entry) entries.delete(key);
    clearTimeout(entry.idle);
    entry.nc.then((nc) => nc.close()).catch(() => undefined);
  }

  async function acquire(creds: Credentials): Promise<Lease> {
    if (closed) throw new Error('the web service is stopping');
    const key = keyOf(creds);
    let entry = entries.get(key);
    if (entry === undefined) {
      const fresh: Entry = { nc: deps.connect({ creds, name: `brain-web:${creds.user}` }), refs: 0 };
      entry = fresh;
      entries.set(key, fresh);
      fresh.nc.then(
        (nc) => {
          // Closed by the server (a password changed, the user removed): the next request connects again.
          nc.closed().then(
            () => {
              if (entries.get(key) === fresh) entries.delete(key);
            },
            () => undefined,
          );
        },
        () => {
          if (entries.get(key) === fresh) entries.delete(key);
        },
      );
    }
    const held = entry;
    held.refs++;
    clearTimeout(held.idle);
    held.idle = undefined;
    let nc: NatsConnection;
    try {
      nc = await held.nc;
    } catch (err) {
      held.refs--;
      if (isAuthRefused(err)) throw new AuthRefused();
      deps.logger.warn({ user: creds.user, err: describeError(err) }, 'could not connect to NATS for a request');
      throw err;
    }
    let released = false;
    return {
      nc,
      user: creds.user,
      release() {
        if (released) return;
        released = true;
        held.refs--;
        if (held.refs === 0 && !closed) {
          held.idle = setTimeout(() => {
            if (held.refs === 0) drop(key, held);
          }, deps.idleMs);
          held.idle.unref();
        }
      },
    };
  }

  return {
    acquire,
    get size() {
      return entries.size;
    },
    async close() {
      closed = true;
      const all = [...entries.entries()];
      entries.clear();
      await Promise.allSettled(
        all.map(async ([, e]) => {
          clearTimeout(e.idle);
          await (await e.nc).close();
        }),
      );
    },
  };
}
