import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { connect, type NatsConnection } from '@nats-io/transport-node';

/** The users of deploy/nats/auth.conf. `admin` may only create and update the topology (`brain setup`); `web` is the web service's own identity. */
export const NATS_ROLES = ['admin', 'scheduler', 'transformer', 'loader', 'model-gate', 'trainer', 'monitor', 'operator', 'web'] as const;
export type NatsRole = (typeof NATS_ROLES)[number];

const DEPLOY_NATS = resolve(__dirname, '../../../deploy/nats');

/** `model-gate` → `NATS_MODEL_GATE_PASS`, the variable auth.conf reads the password from. */
export const passwordVariable = (role: NatsRole) => `NATS_${role.toUpperCase().replace('-', '_')}_PASS`;

export interface AuthNatsServer {
  readonly url: string;
  readonly passwords: Record<NatsRole, string>;
  /** Every line nats-server wrote to stderr so far (permission violations are logged there). */
  readonly log: string[];
  /**
   * Connects as a user, with the inbox prefix the services derive from it (`_INBOX_<role>`, the only one auth.conf
   * lets it subscribe to) unless `inboxPrefix` says otherwise.
   */
  connectAs(role: NatsRole, name: string, opts?: { inboxPrefix?: string }): Promise<NatsConnection>;
  stop(): Promise<void>;
  /** Removes the rendered configuration and the store. */
  cleanup(): void;
}

/** Replaces the one line `pattern` matches; fails loudly when the deployed file no longer has it. */
function replaceLine(file: string, pattern: RegExp, line: string): void {
  const text = readFileSync(file, 'utf8');
  const matches = text.match(new RegExp(pattern.source, 'gm')) ?? [];
  if (matches.length !== 1) throw new Error(`${file}: expected exactly one line matching ${pattern}, found ${matches.length}`);
  writeFileSync(file, text.replace(new RegExp(pattern.source, 'm'), line));
}

/**
 * Runs nats-server on the repository's own deploy/nats/nats-2.9.conf (with server.conf and auth.conf, verbatim
 * but for three lines): client and monitoring ports become random loopback ports, the store a temp dir.
 * Each user gets a fresh password through the environment variable auth.conf names.
 */
export async function startAuthNatsServer(): Promise<AuthNatsServer> {
  const dir = mkdtempSync(join(tmpdir(), 'brain-nats-auth-'));
  const log: string[] = [];
  let child: ChildProcess | undefined;
  try {
    for (const file of ['nats-2.9.conf', 'server.conf', 'auth.conf']) copyFileSync(join(DEPLOY_NATS, file), join(dir, file));
    replaceLine(join(dir, 'server.conf'), /^listen: .*$/, 'listen: 127.0.0.1:-1');
    replaceLine(join(dir, 'server.conf'), /^http: .*$/, 'http: 127.0.0.1:-1');
    replaceLine(join(dir, 'nats-2.9.conf'), /^\s*store_dir: .*$/, `  store_dir: "${join(dir, 'store')}"`);

    // nats-server reads an interpolated value as a config value: a password must start with a letter.
    const passwords = Object.fromEntries(NATS_ROLES.map((role) => [role, `p${randomBytes(12).toString('hex')}`])) as Record<NatsRole, string>;
    const env = { ...process.env, ...Object.fromEntries(NATS_ROLES.map((role) => [passwordVariable(role), passwords[role]])) };
    const proc = spawn('nats-server', ['-c', join(dir, 'nats-2.9.conf')], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    child = proc;
    let partial = '';
    proc.stderr?.on('data', (chunk: Buffer) => {
      const lines = (partial + chunk.toString()).split('\n');
      partial = lines.pop() ?? '';
      log.push(...lines);
    });
    const port = await new Promise<number>((resolvePort, reject) => {
      const timer = setTimeout(() => reject(new Error(`nats-server did not start:\n${log.join('\n')}`)), 10_000);
      proc.once('exit', (code) => reject(new Error(`nats-server exited with ${code}:\n${log.join('\n')}`)));
      const check = () => {
        const listening = log.map((l) => /Listening for client connections on 127\.0\.0\.1:(\d+)/.exec(l)?.[1]).find((p) => p !== undefined);
        if (listening !== undefined && log.some((l) => l.includes('Server is ready'))) {
          clearTimeout(timer);
          resolvePort(Number(listening));
        }
      };
      proc.stderr?.on('data', () => setImmediate(check));
    });
    const url = `nats://127.0.0.1:${port}`;
    return {
      url,
      passwords,
      log,
      connectAs: (role, name, opts = {}) => connect({ servers: url, user: role, pass: passwords[role], name, inboxPrefix: opts.inboxPrefix ?? `_INBOX_${role}` }),
      async stop() {
        if (proc.exitCode !== null || proc.signalCode !== null) return;
        const exited = new Promise<void>((r) => proc.once('exit', () => r()));
        proc.kill('SIGTERM');
        await exited;
      },
      cleanup: () => rmSync(dir, { recursive: true, force: true }),
    };
  } catch (err) {
    child?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
