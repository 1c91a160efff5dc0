/**
 * The server-side deploy (deploy/deploy.sh) driven over a real sshd on loopback, logging in as a
 * dedicated user created by deploy/install-deploy-user.sh whose only key has a forced command.
 * Compose and docker are fakes that record their arguments, so nothing is pulled or started.
 */
import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { SSHD_BIN, sshRun, startSshd, type Sshd, type SshResult } from './helpers/sshd';

const repo = resolve(__dirname, '..', '..');
const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
const haveSshd = existsSync(SSHD_BIN);
const skip = !isRoot
  ? 'needs root (creates a user and runs sshd)'
  : !haveSshd && process.env.CI === undefined
    ? `${SSHD_BIN} missing (apt-get install openssh-server)`
    : false;

t.test('deploy over ssh with a forced-command key', { skip, timeout: 90_000 }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'brain-deploy-'));
  chmodSync(root, 0o755); // the deploy user must traverse it to reach its home and prefix
  const user = `bdtest${randomBytes(4).toString('hex')}`;
  const prefix = join(root, 'opt', 'brain');
  const home = join(root, 'home', user);
  const bin = join(root, 'bin');
  const rec = join(root, 'rec'); // written by the fakes, as the deploy user
  const key = join(root, 'id_ed25519');
  let sshd: Sshd | undefined;

  t.teardown(async () => {
    await sshd?.stop();
    try {
      execFileSync('userdel', [user], { stdio: 'ignore' });
    } catch {
      /* not created */
    }
    try {
      execFileSync('groupdel', [user], { stdio: 'ignore' });
    } catch {
      /* removed with the user */
    }
    rmSync(root, { recursive: true, force: true });
  });

  // --- the server: user, layout, config, fakes ---------------------------------------------------
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ci-deploy', '-f', key]);
  const install = execFileSync(
    'bash',
    [
      join(repo, 'deploy', 'install-deploy-user.sh'),
      '--user', user,
      '--prefix', prefix,
      '--home', home,
      '--key', `${key}.pub`,
      '--image-repo', 'registry.test/acme/brain-pipeline',
      '--no-docker-group',
    ],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.match(install, /can now run only/);
  const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());

  const authorizedKeys = readFileSync(join(home, '.ssh', 'authorized_keys'), 'utf8');
  t.match(authorizedKeys, new RegExp(`^command="${prefix}/deploy\\.sh",restrict,no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty`));
  t.equal(statSync(join(home, '.ssh', 'authorized_keys')).uid, 0, 'authorized_keys is root-owned: the user cannot add keys');
  t.equal(statSync(join(prefix, 'deploy.sh')).uid, 0, 'deploy.sh is root-owned');
  t.equal(statSync(join(prefix, 'env')).mode & 0o777, 0o700, 'env dir is 700');
  t.equal(statSync(prefix).mode & 0o7777, 0o1775, 'prefix is sticky and group-writable');

  mkdirSync(bin);
  mkdirSync(rec);
  chownSync(rec, uid, gid);
  // Fake compose: records "BRAIN_IMAGE|args"; `ps -a -q` prints one container id per tag.
  writeFileSync(
    join(bin, 'fake-compose'),
    `#!/bin/sh
printf '%s|%s\\n' "$BRAIN_IMAGE" "$*" >>${rec}/compose.log
for a in "$@"; do
  case "$a" in
    pull) if [ -e ${rec}/pull-fail ]; then echo "fake pull failed" >&2; exit 1; fi ;;
    ps) echo "brain-\${BRAIN_IMAGE##*:}"; exit 0 ;;
  esac
done
exit 0
`,
    { mode: 0o755 },
  );
  // Fake docker: `inspect` reports a container unhealthy when rec/unhealthy-<id> exists.
  writeFileSync(
    join(bin, 'fake-docker'),
    `#!/bin/sh
[ "$1" = inspect ] || exit 1
shift 3
for id in "$@"; do
  if [ -e ${rec}/unhealthy-$id ]; then echo "/$id running 0 unhealthy"; else echo "/$id running 0 healthy"; fi
done
`,
    { mode: 0o755 },
  );
  const writeConf = (extra = '') =>
    writeFileSync(
      join(prefix, 'deploy.conf'),
      `BRAIN_ROOT=${prefix}
BRAIN_IMAGE_REPO=registry.test/acme/brain-pipeline
COMPOSE_PROJECT=brain
COMPOSE_CMD=${bin}/fake-compose
DOCKER_CMD=${bin}/fake-docker
HEALTH_TIMEOUT=5
${extra}
`,
      { mode: 0o644 },
    );
  writeConf();

  sshd = await startSshd({ dir: root, allowUser: user });
  const server = sshd;
  const outputs: string[] = [];
  const ssh = async (command: string | undefined, input?: Buffer | string, options?: string[]): Promise<SshResult> => {
    const r = await sshRun(server, user, key, { command, input, options });
    outputs.push(r.stdout, r.stderr);
    return r;
  };
  const composeLog = () => {
    const file = join(rec, 'compose.log');
    return existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n') : [];
  };
  const makeRelease = (name: string, files: Record<string, string>): Buffer => {
    const dir = join(root, 'src', name);
    for (const [rel, content] of Object.entries(files)) {
      mkdirSync(join(dir, rel, '..'), { recursive: true });
      writeFileSync(join(dir, rel), content);
    }
    return execFileSync('tar', ['-cf', '-', '-C', dir, '.']);
  };
  const currentTag = () => /^TAG=(.*)$/m.exec(readFileSync(join(prefix, 'current', '.brain-release'), 'utf8'))?.[1];
  const image = (tag: string) => `registry.test/acme/brain-pipeline:${tag}`;

  // --- secrets -------------------------------------------------------------------------------------
  const secret = `s3cret-${randomBytes(12).toString('hex')}`;
  const token = `tok-${randomBytes(12).toString('hex')}`;
  await t.test('secrets land in env/ with mode 600 and are never echoed', async (t) => {
    const r = await ssh('secrets brain.env', `# brain\nNATS_PASSWORD=${secret}\nexport API_TOKEN="${token}"\n`);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stderr, /wrote env\/brain\.env \(2 variables, mode 600\)/);
    const file = join(prefix, 'env', 'brain.env');
    const st = statSync(file);
    t.equal(st.mode & 0o777, 0o600);
    t.equal(st.uid, uid);
    t.equal(readFileSync(file, 'utf8'), `# brain\nNATS_PASSWORD=${secret}\nexport API_TOKEN="${token}"\n`);

    const bad = await ssh('secrets brain.env', `NATS_PASSWORD=${secret}\nthis line leaks ${secret}\n`);
    t.not(bad.code, 0, 'a malformed env file is refused');
    t.match(bad.stderr, /line 2 is not KEY=VALUE/);
    t.equal(readFileSync(file, 'utf8').includes(token), true, 'the refused upload left the old file alone');
    t.not((await ssh('secrets ../../etc/x.env', 'A=1\n')).code, 0, 'secrets name is validated');
    t.not((await ssh('secrets x.conf', 'A=1\n')).code, 0, 'secrets name must end in .env');

    const dotenv = await ssh('secrets .env', `NATS_OPERATOR_PASS=${token}-op\n`);
    t.equal(dotenv.code, 0, dotenv.stderr);
    t.equal(statSync(join(prefix, 'env', '.env')).mode & 0o777, 0o600, "compose's .env is staged with mode 600");
  });

  // --- deploys -------------------------------------------------------------------------------------
  const rel1 = makeRelease('r1', {
    'docker-compose.yml': 'services:\n  brain:\n    image: ${BRAIN_IMAGE:-brain-pipeline:latest}\n',
    'nats/nats.conf': 'port: 4222 # v1\n',
    'obsolete.txt': 'removed in the next release\n',
    'env/brain.env': 'NATS_PASSWORD=template\n',
    'env/transform.env': '# template\n',
  });
  const rel2 = makeRelease('r2', {
    'docker-compose.yml': 'services:\n  brain:\n    image: ${BRAIN_IMAGE:-brain-pipeline:latest}\n',
    'nats/nats.conf': 'port: 4222 # v2\n',
  });

  await t.test('a deploy lands the files and runs compose with the new tag', async (t) => {
    const r = await ssh('deploy sha1111', rel1);
    t.equal(r.code, 0, r.stderr);
    t.equal(currentTag(), 'sha1111');
    t.equal(readFileSync(join(prefix, 'current', 'nats', 'nats.conf'), 'utf8'), 'port: 4222 # v1\n');
    t.ok(existsSync(join(prefix, 'current', 'obsolete.txt')));
    t.equal(readFileSync(join(prefix, 'current', 'env', 'brain.env'), 'utf8').includes(secret), true, 'uploaded env files override the templates');
    t.equal(readFileSync(join(prefix, 'current', 'env', 'transform.env'), 'utf8'), '# template\n', 'templates fill in the rest');
    t.equal(statSync(join(prefix, 'current', 'env', 'transform.env')).mode & 0o777, 0o600, 'templates get mode 600 too');
    t.equal(readFileSync(join(prefix, 'current', '.env'), 'utf8'), `NATS_OPERATOR_PASS=${token}-op\n`, ".env lands beside the compose file");
    t.equal(statSync(join(prefix, 'current', '.env')).mode & 0o777, 0o600);
    t.notOk(existsSync(join(prefix, 'current', 'env', '.env')), ".env is not in the env/ that containers mount");
    t.equal(statSync(join(prefix, 'current', 'env')).mode & 0o777, 0o700, 'release env dir is 700');
    t.equal(statSync(join(prefix, 'current', 'env', 'brain.env')).mode & 0o777, 0o600, 'release env file is 600');
    const dir = realpathSync(join(prefix, 'current'));
    t.same(
      composeLog().filter((l) => !l.endsWith(' ps -a -q')),
      [
        `${image('sha1111')}|-p brain --project-directory ${dir} -f ${dir}/docker-compose.yml pull`,
        `${image('sha1111')}|-p brain --project-directory ${dir} -f ${dir}/docker-compose.yml up -d --remove-orphans`,
      ],
    );
    t.equal(readFileSync(join(prefix, 'state', 'current_tag'), 'utf8'), 'sha1111\n');
  });

  await t.test('files removed from the release disappear from the server', async (t) => {
    const r = await ssh('deploy sha2222', rel2);
    t.equal(r.code, 0, r.stderr);
    t.equal(currentTag(), 'sha2222');
    t.notOk(existsSync(join(prefix, 'current', 'obsolete.txt')), 'obsolete.txt is gone');
    t.equal(readFileSync(join(prefix, 'current', 'nats', 'nats.conf'), 'utf8'), 'port: 4222 # v2\n');
    t.match(readlinkSync(join(prefix, 'current')), /^releases\//, 'current is a relative symlink into releases/');
    t.match(readFileSync(join(prefix, 'state', 'previous', '.brain-release'), 'utf8'), /^TAG=sha1111$/m, 'previous tag recorded');
    t.equal(readFileSync(join(prefix, 'state', 'previous_tag'), 'utf8'), 'sha1111\n');
    t.match(composeLog().at(-2) ?? '', new RegExp(`^${image('sha2222')}\\|.* up -d --remove-orphans$`));
  });

  await t.test('a failed health check rolls back to the previous release and tag', async (t) => {
    writeFileSync(join(rec, 'unhealthy-brain-shabad1'), '');
    const newSecrets = `NATS_PASSWORD=${secret}-rotated\n`;
    t.equal((await ssh('secrets brain.env', newSecrets)).code, 0);
    const before = composeLog().length;
    const r = await ssh('deploy shabad1', makeRelease('rbad', { 'compose.yaml': 'services: {}\n', 'new.txt': 'x\n' }));
    t.equal(r.code, 1, 'deploy fails');
    t.match(r.stderr, /brain-shabad1 is unhealthy/);
    t.match(r.stderr, /rolled back to sha2222/);
    const ups = composeLog()
      .slice(before)
      .filter((l) => l.endsWith(' up -d --remove-orphans'))
      .map((l) => l.split('|')[0]);
    t.same(ups, [image('shabad1'), image('sha2222')], 'the new tag went up, then the previous one');
    t.equal(currentTag(), 'sha2222');
    t.notOk(existsSync(join(prefix, 'current', 'new.txt')), 'the failed release files are no longer current');
    t.ok(existsSync(join(prefix, 'current', 'docker-compose.yml')));
    t.equal(readFileSync(join(prefix, 'state', 'current_tag'), 'utf8'), 'sha2222\n');
    t.ok(readFileSync(join(prefix, 'current', 'env', 'brain.env'), 'utf8').includes(`"${token}"`), 'the previous secrets are back');
    t.equal(readFileSync(join(prefix, 'env', 'brain.env'), 'utf8'), newSecrets, 'the uploaded secrets stay staged for the next deploy');
  });

  await t.test('the health check can be overridden (HEALTH_CMD) and its failure rolls back too', async (t) => {
    writeConf(`HEALTH_CMD='test "$BRAIN_TAG" != sha3333'\nHEALTH_TIMEOUT=0`);
    const before = composeLog().length;
    const r = await ssh('deploy sha3333', rel1);
    t.equal(r.code, 1);
    const ups = composeLog()
      .slice(before)
      .filter((l) => l.endsWith(' up -d --remove-orphans'))
      .map((l) => l.split('|')[0]);
    t.same(ups, [image('sha3333'), image('sha2222')]);
    t.equal(currentTag(), 'sha2222');
    writeConf();
  });

  await t.test('a failed pull changes nothing', async (t) => {
    writeFileSync(join(rec, 'pull-fail'), '');
    const before = composeLog().length;
    const r = await ssh('deploy sha4444', rel1);
    t.equal(r.code, 1);
    t.match(r.stderr, /pull failed; nothing was changed/);
    t.notOk(composeLog().slice(before).some((l) => l.includes(' up ')), 'no up');
    t.equal(currentTag(), 'sha2222');
    unlinkSync(join(rec, 'pull-fail'));
  });

  await t.test('status and manual rollback', async (t) => {
    const s = await ssh('status');
    t.equal(s.code, 0, s.stderr);
    t.match(s.stdout, /current: \S+ sha2222/);
    t.match(s.stdout, /previous: \S+ sha1111/);
    const r = await ssh('rollback');
    t.equal(r.code, 0, r.stderr);
    t.equal(currentTag(), 'sha1111');
    t.ok(existsSync(join(prefix, 'current', 'obsolete.txt')));
    t.match(composeLog().at(-2) ?? '', new RegExp(`^${image('sha1111')}\\|.* up -d --remove-orphans$`));
  });

  await t.test('the release tarball is checked', async (t) => {
    const link = join(root, 'src', 'evil');
    mkdirSync(link, { recursive: true });
    writeFileSync(join(link, 'docker-compose.yml'), 'services: {}\n');
    execFileSync('ln', ['-s', '/etc/passwd', join(link, 'passwd')]);
    const withLink = execFileSync('tar', ['-cf', '-', '-C', link, '.']);
    t.not((await ssh('deploy shaevil', withLink)).code, 0, 'symlinks refused');
    t.not((await ssh('deploy shaevil', makeRelease('nodotenv', { 'docker-compose.yml': 'x', '.env': 'A=1' }))).code, 0, '.env refused');
    t.not((await ssh('deploy shaevil', makeRelease('nocompose', { 'x.txt': 'x' }))).code, 0, 'compose file required');
    t.not((await ssh('deploy shaevil', 'not a tarball')).code, 0, 'garbage refused');
    t.equal(currentTag(), 'sha1111', 'nothing changed');
  });

  // --- the key can do nothing else ---------------------------------------------------------------
  await t.test('the deploy key can run nothing but the deploy command', async (t) => {
    const refused = [
      'id',
      'cat /etc/passwd',
      'sh',
      'bash -i',
      'deploy',
      'deploy ../../../etc',
      'deploy a;id',
      'deploy $(id)',
      'deploy `id`',
      'deploy sha1 extra',
      'deploy -x',
      'secrets brain.env; id',
      'rollback now',
      'scp -t /tmp',
      'DEPLOY sha1',
    ];
    for (const command of refused) {
      const r = await ssh(command, '');
      t.equal(r.code, 2, `refused: ${command}`);
      t.notMatch(r.stdout + r.stderr, /uid=\d+|root:x:0:0/, `no command output for: ${command}`);
    }
    const login = await ssh(undefined, '');
    t.not(login.code, 0, 'no interactive login');
    t.match(login.stderr, /interactive logins are not allowed/);

    const sftp = await ssh('sftp', '', ['-s']);
    t.not(sftp.code, 0, 'no sftp subsystem');

    const pty = await ssh('status', '', ['-tt']);
    t.match(pty.stderr, /PTY allocation request failed/, 'no pty');

    const stdio = await ssh(undefined, '', ['-W', `127.0.0.1:${server.port}`]);
    t.not(stdio.code, 0, 'no direct-tcpip (-W) forwarding');
    t.match(stdio.stderr, /stdio forwarding failed|administratively prohibited|open failed/);
    t.match(server.log(), /refused local port forward/, 'sshd refused it because of the key restrictions');

    const remote = await ssh(undefined, '', ['-N', '-o', 'ExitOnForwardFailure=yes', '-R', `127.0.0.1:0:127.0.0.1:${server.port}`]);
    t.not(remote.code, 0, 'no remote port forwarding');
    t.match(remote.stderr, /remote port forwarding failed/);

  });

  // --- the CI clients: the deploy-client blocks of .gitlab-ci.yml and .github/workflows/deploy.yml ---
  const ciRepo = join(root, 'ci-repo');
  mkdirSync(join(ciRepo, 'deploy', 'nats'), { recursive: true });
  writeFileSync(join(ciRepo, 'docker-compose.yml'), 'services:\n  brain:\n    image: ${BRAIN_IMAGE:-brain-pipeline:latest}\n');
  writeFileSync(join(ciRepo, 'deploy', 'nats', 'nats.conf'), 'port: 4222 # ci\n');
  writeFileSync(join(ciRepo, 'deploy', 'deploy.sh'), '# not part of a release\n');
  writeFileSync(join(ciRepo, 'README.md'), 'not in RELEASE_PATHS\n');
  mkdirSync(join(ciRepo, 'env'));
  writeFileSync(join(ciRepo, 'env', 'transform.env'), '# transform template\n');
  writeFileSync(join(ciRepo, 'env', 'model.env'), '# model template\n');
  const git = (...args: string[]) =>
    execFileSync('git', ['-c', 'user.name=ci', '-c', 'user.email=ci@example.invalid', '-c', 'init.defaultBranch=main', ...args], { cwd: ciRepo, stdio: 'ignore' });
  git('init', '-q');
  git('add', '.');
  git('commit', '-q', '-m', 'release');
  writeFileSync(join(ciRepo, 'deploy', 'nats', 'untracked.conf'), 'not committed\n');
  const ciSecret = `ci-secret-${randomBytes(12).toString('hex')}`;

  for (const [file, style] of [
    ['.gitlab-ci.yml', 'file'],
    ['.github/workflows/deploy.yml', 'value'],
  ] as const) {
    await t.test(`${file}: the deploy client ships tracked release files and secrets`, async (t) => {
      const text = readFileSync(join(repo, file), 'utf8');
      const script = extractBlock(text, '# deploy-client');
      const setting = (name: string) => {
        const value = new RegExp(`^ *${name}: "(.*)"$`, 'm').exec(text)?.[1];
        if (value === undefined) throw new Error(`${file} has no ${name}`);
        return value;
      };
      const tag = `ci${style}${randomBytes(3).toString('hex')}`;
      const asFile = (name: string, content: string) => {
        const path = join(root, `${style}-${name}`);
        writeFileSync(path, content, { mode: 0o600 });
        return path;
      };
      const keyText = readFileSync(key, 'utf8').trimEnd(); // GitLab File variables may lack the newline
      const knownHostsText = readFileSync(server.knownHosts, 'utf8');
      const composeEnv = `NATS_OPERATOR_PASS=${ciSecret}\n`;
      const transformEnv = `AWS_SECRET_ACCESS_KEY=${ciSecret}-aws\n`;
      const env: NodeJS.ProcessEnv = {
        PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        HOME: root,
        DEPLOY_HOST: '127.0.0.1',
        DEPLOY_PORT: String(server.port),
        DEPLOY_USER: user,
        DEPLOY_TAG: tag,
        DEPLOY_ENV_FILES: setting('DEPLOY_ENV_FILES'),
        RELEASE_PATHS: setting('RELEASE_PATHS'),
        DEPLOY_SSH_KEY: style === 'file' ? asFile('key', keyText) : keyText,
        DEPLOY_KNOWN_HOSTS: style === 'file' ? asFile('known_hosts', knownHostsText) : knownHostsText,
        COMPOSE_ENV: style === 'file' ? asFile('compose.env', composeEnv) : composeEnv,
        TRANSFORM_ENV: style === 'file' ? asFile('transform.env', transformEnv) : transformEnv,
      };
      const r = await new Promise<SshResult>((resolvePromise, reject) => {
        const child = spawn('sh', ['-c', script], { cwd: ciRepo, env, stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
        child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
        child.once('error', reject);
        child.once('close', (code) => resolvePromise({ code, stdout, stderr }));
      });
      outputs.push(r.stdout, r.stderr);
      t.equal(r.code, 0, r.stderr);
      t.equal(currentTag(), tag);
      t.equal(readFileSync(join(prefix, 'current', 'deploy', 'nats', 'nats.conf'), 'utf8'), 'port: 4222 # ci\n');
      t.ok(existsSync(join(prefix, 'current', 'docker-compose.yml')));
      t.notOk(existsSync(join(prefix, 'current', 'deploy', 'deploy.sh')), 'deploy.sh is not shipped');
      t.notOk(existsSync(join(prefix, 'current', 'deploy', 'nats', 'untracked.conf')), 'untracked files are not shipped');
      t.notOk(existsSync(join(prefix, 'current', 'README.md')), 'only RELEASE_PATHS are shipped');
      t.notOk(existsSync(join(prefix, 'current', 'obsolete.txt')), 'files of older releases are gone');
      t.equal(readFileSync(join(prefix, 'current', '.env'), 'utf8').trimEnd(), composeEnv.trimEnd(), '.env from COMPOSE_ENV');
      t.equal(statSync(join(prefix, 'current', '.env')).mode & 0o777, 0o600);
      t.equal(readFileSync(join(prefix, 'current', 'env', 'transform.env'), 'utf8').trimEnd(), transformEnv.trimEnd(), 'env/transform.env from TRANSFORM_ENV');
      t.equal(statSync(join(prefix, 'current', 'env', 'transform.env')).mode & 0o777, 0o600);
      t.equal(readFileSync(join(prefix, 'current', 'env', 'model.env'), 'utf8'), '# model template\n', 'unset secrets leave the template');
      t.match(r.stdout, /env\/model\.env: MODEL_ENV is not set/);
      t.notOk((r.stdout + r.stderr).includes(ciSecret), 'the secret is not in the job log');
      t.notOk((r.stdout + r.stderr).includes('PRIVATE KEY'), 'the key is not in the job log');
      t.match(composeLog().at(-2) ?? '', new RegExp(`^${image(tag)}\\|.* up -d --remove-orphans$`));
    });
  }

  await t.test('no secret value ever appears in the deploy output', async (t) => {
    const all = outputs.join('\n');
    t.ok(all.length > 0);
    t.notOk(all.includes(secret), 'NATS_PASSWORD value not echoed');
    t.notOk(all.includes('-rotated'), 'rotated value not echoed');
    t.notOk(all.includes(token), 'API_TOKEN value not echoed');
    t.notOk(all.includes(ciSecret), 'CI secret not echoed');
    t.notOk(readFileSync(join(rec, 'compose.log'), 'utf8').includes(secret));
  });
});

/** The lines of the indented block that starts with `marker` (a YAML `run: |` / `- |` body), dedented. */
function extractBlock(text: string, marker: string): string {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.trimStart().startsWith(marker));
  const first = lines[start];
  if (start < 0 || first === undefined) throw new Error(`no "${marker}" block`);
  const indent = first.length - first.trimStart().length;
  const out: string[] = [];
  for (const line of lines.slice(start)) {
    if (line.trim() !== '' && line.length - line.trimStart().length < indent) break;
    out.push(line.slice(indent));
  }
  return out.join('\n');
}
