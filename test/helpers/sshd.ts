import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freeLoopbackPort } from '../../kit/ports';

export const SSHD_BIN = '/usr/sbin/sshd';

export interface Sshd {
  readonly port: number;
  readonly knownHosts: string;
  /** Everything sshd wrote to stderr (it runs with -D -e). */
  log(): string;
  stop(): Promise<void>;
}

/**
 * Starts a private sshd (must run as root) on 127.0.0.1 with its own host key and config in `dir`,
 * accepting only public-key logins by `allowUser` (whose authorized_keys does the restricting).
 * `acceptEnv` names variables the client may pass (`AcceptEnv`): a careless server config, for the
 * tests that prove the forced command does not trust its environment.
 */
export async function startSshd(opts: { dir: string; allowUser: string; acceptEnv?: readonly string[] }): Promise<Sshd> {
  const { dir, allowUser, acceptEnv = [] } = opts;
  const hostKey = join(dir, 'ssh_host_ed25519_key');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'brain-test-host', '-f', hostKey]);
  // sshd's privilege-separation directory; Debian creates it at boot, containers may lack it.
  if (!existsSync('/run/sshd')) mkdirSync('/run/sshd', { mode: 0o755, recursive: true });

  const config = join(dir, 'sshd_config');
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freeLoopbackPort();
    writeFileSync(
      config,
      [
        `ListenAddress 127.0.0.1:${port}`,
        `HostKey ${hostKey}`,
        'PidFile none',
        'UsePAM no',
        'PubkeyAuthentication yes',
        'AuthenticationMethods publickey',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'PermitRootLogin no',
        `AllowUsers ${allowUser}`,
        'StrictModes yes',
        'AuthorizedKeysFile .ssh/authorized_keys',
        // Left on server-wide so that the test proves the key's own restrictions block forwarding.
        'AllowTcpForwarding yes',
        'AllowAgentForwarding yes',
        'PermitTTY yes',
        'X11Forwarding no',
        'PrintMotd no',
        'PermitUserEnvironment no',
        ...(acceptEnv.length > 0 ? [`AcceptEnv ${acceptEnv.join(' ')}`] : []),
        'Subsystem sftp internal-sftp',
        'LogLevel VERBOSE',
        '',
      ].join('\n'),
    );
    const child: ChildProcess = spawn(SSHD_BIN, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    let seen = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      seen += chunk.toString();
    });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`sshd did not start:\n${seen}`)), 10_000);
        const onExit = (code: number | null) => {
          clearTimeout(timer);
          reject(new Error(`sshd exited with ${code}:\n${seen}`));
        };
        child.once('exit', onExit);
        const poll = setInterval(() => {
          if (/Server listening on 127\.0\.0\.1 port \d+/.test(seen)) {
            clearInterval(poll);
            clearTimeout(timer);
            child.off('exit', onExit);
            resolve();
          }
        }, 20);
        timer.unref();
        child.once('exit', () => clearInterval(poll));
      });
    } catch (err) {
      lastError = err as Error;
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      continue;
    }
    const knownHosts = join(dir, 'known_hosts');
    const hostPub = readFileSync(`${hostKey}.pub`, 'utf8').trim().split(' ');
    writeFileSync(knownHosts, `[127.0.0.1]:${port} ${hostPub[0] ?? ''} ${hostPub[1] ?? ''}\n`);
    return {
      port,
      knownHosts,
      log: () => seen,
      async stop() {
        if (child.exitCode !== null || child.signalCode !== null) return;
        await new Promise<void>((resolve) => {
          child.once('exit', () => resolve());
          child.kill('SIGTERM');
        });
      },
    };
  }
  throw lastError ?? new Error('sshd did not start');
}

export interface SshResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The OpenSSH client's arguments for `sshd` as `user` with `identity`, ignoring every user/system ssh config. */
export function sshArgs(sshd: Pick<Sshd, 'port' | 'knownHosts'>, user: string, identity: string, run: { command?: string; options?: readonly string[] }): string[] {
  return [
    '-F',
    '/dev/null',
    '-i',
    identity,
    '-p',
    String(sshd.port),
    '-o',
    'IdentitiesOnly=yes',
    '-o',
    'IdentityAgent=none',
    '-o',
    'BatchMode=yes',
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    `UserKnownHostsFile=${sshd.knownHosts}`,
    '-o',
    'GlobalKnownHostsFile=/dev/null',
    '-o',
    'ConnectTimeout=5',
    '-o',
    'LogLevel=ERROR',
    '-l',
    user,
    ...(run.options ?? []),
    '127.0.0.1',
    ...(run.command === undefined ? [] : [run.command]),
  ];
}

/** Runs the OpenSSH client against `sshd` as `user` with `identity` (see `sshArgs`). */
export function sshRun(
  sshd: Pick<Sshd, 'port' | 'knownHosts'>,
  user: string,
  identity: string,
  run: { command?: string; options?: readonly string[]; input?: Buffer | string; timeoutMs?: number },
): Promise<SshResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('ssh', sshArgs(sshd, user, identity, run), { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), run.timeoutMs ?? 20_000);
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.stdin.on('error', () => undefined); // the server may refuse before reading stdin
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(run.input ?? '');
  });
}
