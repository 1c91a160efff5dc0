/**
 * The server-side deploy (deploy/deploy.sh) driven over a real sshd on loopback, logging in as a
 * dedicated user created by deploy/install-deploy-user.sh whose only key has a forced command.
 * Compose and docker are fakes that record their arguments, so nothing is pulled or started.
 * These tests need root (they create users and run sshd): where they cannot run, they fail.
 */
import t from 'tap';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
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
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parse as parseDotenv } from 'dotenv';
import { SSHD_BIN, sshArgs, sshRun, startSshd, type Sshd, type SshResult } from './helpers/sshd';

const repo = resolve(__dirname, '..', '..');
const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
/** Why these tests cannot run here, if they cannot: reported as a failure, never as a skip. */
const cannotRun = !isRoot
  ? 'the deploy tests need root (they create users and run sshd); CI runs them as root'
  : !existsSync(SSHD_BIN)
    ? `${SSHD_BIN} missing (apt-get install openssh-server)`
    : undefined;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `fn` on every item, at most `limit` at a time (well under sshd's MaxStartups of 10), and gives the results in
 * the items' order. For independent ssh calls: deploy.sh's flock still runs the locked actions one at a time.
 */
async function pooled<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = [];
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

t.test('deploy over ssh with a forced-command key', { timeout: 180_000 }, async (t) => {
  if (cannotRun !== undefined) {
    t.fail(cannotRun);
    return;
  }
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
      '--user',
      user,
      '--prefix',
      prefix,
      '--home',
      home,
      '--key',
      `${key}.pub`,
      '--image-repo',
      'registry.test/acme/brain-pipeline',
      '--no-docker-group',
    ],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.match(install, /can now run only/);
  const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());

  const authorizedKeys = readFileSync(join(home, '.ssh', 'authorized_keys'), 'utf8');
  t.match(
    authorizedKeys,
    new RegExp(
      `^command="/usr/bin/env -i SSH_ORIGINAL_COMMAND=\\\\"\\$SSH_ORIGINAL_COMMAND\\\\" \\S*/bash ${prefix}/deploy\\.sh",restrict,no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty`,
    ),
    'the forced command runs deploy.sh under an empty environment',
  );
  t.equal(statSync(join(home, '.ssh', 'authorized_keys')).uid, 0, 'authorized_keys is root-owned: the user cannot add keys');
  t.equal(statSync(join(prefix, 'deploy.sh')).uid, 0, 'deploy.sh is root-owned');
  t.equal(statSync(join(prefix, 'env')).mode & 0o777, 0o700, 'env dir is 700');
  t.equal(statSync(prefix).mode & 0o7777, 0o1775, 'prefix is sticky and group-writable');

  mkdirSync(bin);
  mkdirSync(rec);
  chownSync(rec, uid, gid);
  // Fake compose: records "BRAIN_IMAGE|args"; `ps -a -q` prints one container id per tag; `up`
  // sleeps for the seconds in rec/up-sleep-<tag> and then writes to stdout and stderr.
  writeFileSync(
    join(bin, 'fake-compose'),
    `#!/bin/sh
printf '%s|%s\\n' "$BRAIN_IMAGE" "$*" >>${rec}/compose.log
tag=\${BRAIN_IMAGE##*:}
for a in "$@"; do
  case "$a" in
    pull) if [ -e ${rec}/pull-fail ]; then echo "fake pull failed" >&2; exit 1; fi ;;
    up)
      if [ -e ${rec}/up-sleep-$tag ]; then
        sleep "$(cat ${rec}/up-sleep-$tag)"
        echo "fake up: $tag started"
        echo "fake up: $tag done" >&2
      fi
      exit 0 ;;
    ps) echo "brain-$tag"; exit 0 ;;
  esac
done
exit 0
`,
    { mode: 0o755 },
  );
  // Fake docker: `inspect` reports a container unhealthy when rec/unhealthy-<id> exists, fails
  // without a word on it for rec/inspect-fail-<id>, and leaves it out for rec/vanish-<id>.
  writeFileSync(
    join(bin, 'fake-docker'),
    `#!/bin/sh
[ "$1" = inspect ] || exit 1
shift 3
rc=0
for id in "$@"; do
  if [ -e ${rec}/inspect-fail-$id ]; then rc=1; continue; fi
  [ -e ${rec}/vanish-$id ] && continue
  if [ -e ${rec}/unhealthy-$id ]; then echo "/$id running 0 unhealthy"; else echo "/$id running 0 healthy"; fi
done
exit $rc
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
HEALTH_TIMEOUT=1
${extra}
`,
      { mode: 0o644 },
    );
  writeConf();

  // A careless sshd that lets the client set these: the forced command must not care.
  sshd = await startSshd({ dir: root, allowUser: user, acceptEnv: ['BASH_ENV', 'BRAIN_DEPLOY_CONF'] });
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
  const history = () => readFileSync(join(prefix, 'state', 'history'), 'utf8');
  const ups = (since: number) =>
    composeLog()
      .slice(since)
      .filter((l) => l.endsWith(' up -d --remove-orphans'))
      .map((l) => l.split('|')[0]);

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

  // The services parse env files with dotenv (shared/envfile.ts): what deploy.sh accepts must read
  // back exactly as meant, and what dotenv would cut or drop must be refused.
  const pem = ['-----BEGIN PRIVATE KEY-----', `MIIEvQIBADANBgkqhkiG9w0BAQEFAASC${randomBytes(8).toString('hex')}`, 'abc+/=def', '-----END PRIVATE KEY-----'].join('\n');
  const roundTrip = [
    '# every kind of value',
    'HASH_DQ="ab#c"',
    "HASH_SQ='x#y#z'",
    'EQUALS=a=b==c',
    'EQUALS_Q="k=v"',
    `QUOTES_SQ='he said "hi"'`,
    `QUOTES_DQ="it's"`,
    'BACKTICK=`both \' and "`',
    'DOLLAR=$HOME$(id)${X}',
    "DOLLAR_SQ='$(id) ${HOME}'",
    'SPACED = spaced value   # a comment',
    'export EXPORTED=yes',
    'CRLF=crlf\r',
    `PEM="${pem}"`,
    `PEM_SQ='${pem}'`,
    'PEM_ESCAPED="line1\\nline2"',
    'EMPTY=',
    'DOT.KEY=1',
    'COLON: form',
    '',
  ].join('\n');
  const roundTripValues: Record<string, string> = {
    HASH_DQ: 'ab#c',
    HASH_SQ: 'x#y#z',
    EQUALS: 'a=b==c',
    EQUALS_Q: 'k=v',
    QUOTES_SQ: 'he said "hi"',
    QUOTES_DQ: "it's",
    BACKTICK: `both ' and "`,
    DOLLAR: '$HOME$(id)${X}',
    DOLLAR_SQ: '$(id) ${HOME}',
    SPACED: 'spaced value',
    EXPORTED: 'yes',
    CRLF: 'crlf',
    PEM: pem,
    PEM_SQ: pem,
    PEM_ESCAPED: 'line1\nline2',
    EMPTY: '',
    'DOT.KEY': '1',
    COLON: 'form',
  };
  await t.test('secrets: every value dotenv reads whole is accepted and lands byte for byte', async (t) => {
    t.same(parseDotenv(roundTrip), roundTripValues, 'the test data means what dotenv reads');
    const r = await ssh('secrets roundtrip.env', roundTrip);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stderr, /wrote env\/roundtrip\.env \(18 variables, mode 600\)/);
    const written = readFileSync(join(prefix, 'env', 'roundtrip.env'));
    t.equal(written.toString('utf8'), roundTrip, 'byte for byte');
    t.same(parseDotenv(written), roundTripValues, 'dotenv reads the written file as meant');
    t.notOk((r.stdout + r.stderr).includes('PRIVATE KEY'), 'no value echoed');
  });

  await t.test('secrets: what dotenv would cut, drop or misread is refused', async (t) => {
    const file = join(prefix, 'env', 'refused.env');
    t.equal((await ssh('secrets refused.env', 'KEEP=1\n')).code, 0);
    const refused: [string, RegExp][] = [
      [`P=${secret}#c\n`, /line 1: a # in an unquoted value cuts it there/],
      [`P=#${secret}\n`, /line 1: a # in an unquoted value cuts it there/],
      [`A=1\nP="${secret}\nB=2\n`, /line 2: the quoted value is never closed/],
      [`P="${secret}" trailing\n`, /line 1: only a comment may follow a quoted value/],
      [`P='${secret}'x\n`, /line 1: only a comment may follow a quoted value/],
      [`this line leaks ${secret}\n`, /line 1 is not KEY=VALUE/],
      [`P:${secret}\n`, /line 1 is not KEY=VALUE/],
      [`export\nP=${secret}\n`, /line 1 is not KEY=VALUE/],
      [`P=${secret}\0\n`, /contains a NUL byte/],
      [`P=\x1b[31m${secret}\n`, /contains a control character/],
      [`P=${secret}\u2028Q=1\n`, /U\+2028/],
    ];
    const answers = await pooled(refused, 4, ([text]) => ssh('secrets refused.env', text));
    for (const [i, [text, message]] of refused.entries()) {
      const r = answers[i] as SshResult;
      t.equal(r.code, 1, `refused: ${JSON.stringify(text).replace(/[\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16)}`)}`);
      t.match(r.stderr, message);
      t.notOk((r.stdout + r.stderr).includes(secret), 'the value is not echoed');
    }
    t.equal(readFileSync(file, 'utf8'), 'KEEP=1\n', 'every refused upload left the staged file alone');
  });

  await t.test("secrets: compose's .env is held to what compose reads the same way, and never a placeholder", async (t) => {
    const r = await ssh('secrets .env', `NATS_OPERATOR_PASS=${token}-op\nSINGLE='$dollar #hash "q"'\nSPACED="a b c"\n`);
    t.equal(r.code, 0, r.stderr);
    const refused: [string, RegExp][] = [
      [`NATS_OPERATOR_PASS=p$(id)${secret}\n`, /compose reads \$, backslashes and quotes in an unquoted value differently/],
      [`NATS_OPERATOR_PASS="\${HOME}${secret}"\n`, /compose interpolates \$ in double quotes/],
      [`NATS_OPERATOR_PASS="a\\\\b${secret}"\n`, /backslash/],
      [`A.B=${secret}\n`, /not a shell variable name/],
      [`A: ${secret}\n`, /not KEY=VALUE/],
      ['A=`' + secret + '`\n', /backquoted/],
      [`NATS_SCHEDULER_PASS=scheduler-change-me\nNATS_OPERATOR_PASS=${secret}\n`, /line 1 \(NATS_SCHEDULER_PASS\) still holds a placeholder from \.env\.example/],
      [`NATS_SCHEDULER_PASS='CHANGE-ME'\n`, /placeholder/],
    ];
    const answers = await pooled(refused, 4, ([text]) => ssh('secrets .env', text));
    for (const [i, [text, message]] of refused.entries()) {
      const bad = answers[i] as SshResult;
      t.equal(bad.code, 1, `refused: ${JSON.stringify(text)}`);
      t.match(bad.stderr, message);
      t.notOk((bad.stdout + bad.stderr).includes(secret), 'the value is not echoed');
    }
    const dotenv = await ssh('secrets .env', `NATS_OPERATOR_PASS=${token}-op\n`);
    t.equal(dotenv.code, 0, dotenv.stderr);
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

  await t.test('a failed first deploy is marked failed and never becomes a rollback target', async (t) => {
    writeFileSync(join(rec, 'unhealthy-brain-shafirst'), '');
    const r = await ssh('deploy shafirst', rel1);
    t.equal(r.code, 1);
    t.match(r.stderr, /no previous release to roll back to/);
    t.equal(currentTag(), 'shafirst', 'nothing else to run');
    t.ok(existsSync(join(prefix, 'current', '.failed')), 'marked failed');
    const s = await ssh('status');
    t.match(s.stdout, /current: \S+ shafirst \(failed\)/);
    unlinkSync(join(rec, 'unhealthy-brain-shafirst'));
  });

  await t.test('a deploy lands the files and runs compose with the new tag', async (t) => {
    const before = composeLog().length;
    const r = await ssh('deploy sha1111', rel1);
    t.equal(r.code, 0, r.stderr);
    t.equal(currentTag(), 'sha1111');
    t.equal(readFileSync(join(prefix, 'current', 'nats', 'nats.conf'), 'utf8'), 'port: 4222 # v1\n');
    t.ok(existsSync(join(prefix, 'current', 'obsolete.txt')));
    t.equal(readFileSync(join(prefix, 'current', 'env', 'brain.env'), 'utf8').includes(secret), true, 'uploaded env files override the templates');
    t.equal(readFileSync(join(prefix, 'current', 'env', 'transform.env'), 'utf8'), '# template\n', 'templates fill in the rest');
    t.equal(statSync(join(prefix, 'current', 'env', 'transform.env')).mode & 0o777, 0o600, 'templates get mode 600 too');
    t.equal(readFileSync(join(prefix, 'current', '.env'), 'utf8'), `NATS_OPERATOR_PASS=${token}-op\n`, '.env lands beside the compose file');
    t.equal(statSync(join(prefix, 'current', '.env')).mode & 0o777, 0o600);
    t.notOk(existsSync(join(prefix, 'current', 'env', '.env')), '.env is not in the env/ that containers mount');
    t.equal(statSync(join(prefix, 'current', 'env')).mode & 0o777, 0o700, 'release env dir is 700');
    t.equal(statSync(join(prefix, 'current', 'env', 'brain.env')).mode & 0o777, 0o600, 'release env file is 600');
    const dir = realpathSync(join(prefix, 'current'));
    t.same(
      composeLog()
        .slice(before)
        .filter((l) => !l.endsWith(' ps -a -q')),
      [
        `${image('sha1111')}|-p brain --project-directory ${dir} -f ${dir}/docker-compose.yml pull`,
        `${image('sha1111')}|-p brain --project-directory ${dir} -f ${dir}/docker-compose.yml up -d --remove-orphans`,
      ],
    );
    t.equal(readFileSync(join(prefix, 'state', 'current_tag'), 'utf8'), 'sha1111\n');
    t.same(parseDotenv(readFileSync(join(prefix, 'current', 'env', 'roundtrip.env'))), roundTripValues, "dotenv reads the release's copy as meant");
    t.equal(statSync(join(prefix, 'current', 'env', 'roundtrip.env')).mode & 0o777, 0o600);
    t.notOk(existsSync(join(prefix, 'state', 'previous')), 'the failed first release was not recorded as previous');
    const back = await ssh('rollback');
    t.equal(back.code, 1, 'so there is nothing to roll back to');
    t.match(back.stderr, /no previous release/);
    t.equal(currentTag(), 'sha1111');
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
    t.notOk(
      composeLog()
        .slice(before)
        .some((l) => l.includes(' up ')),
      'no up',
    );
    t.equal(currentTag(), 'sha2222');
    unlinkSync(join(rec, 'pull-fail'));
  });

  await t.test('the default health check fails closed', async (t) => {
    writeConf(`DOCKER_CMD=/bin/false\nHEALTH_TIMEOUT=0`);
    let before = composeLog().length;
    const asFalse = await ssh('deploy shafalse', rel1);
    t.not(asFalse.code, 0, 'DOCKER_CMD=/bin/false does not deploy "successfully"');
    t.match(asFalse.stderr, /health: docker inspect failed/);
    t.notMatch(history(), /shafalse deployed/);
    t.same(ups(before), [image('shafalse'), image('sha2222')], 'and it rolled back');
    t.equal(currentTag(), 'sha2222');

    writeConf('HEALTH_TIMEOUT=0');
    writeFileSync(join(rec, 'inspect-fail-brain-shainsp'), '');
    before = composeLog().length;
    const failed = await ssh('deploy shainsp', rel1);
    t.equal(failed.code, 1, 'a failed docker inspect is not healthy');
    t.match(failed.stderr, /health: docker inspect failed/);
    t.match(failed.stderr, /rolled back to sha2222/);
    t.same(ups(before), [image('shainsp'), image('sha2222')]);

    writeFileSync(join(rec, 'vanish-brain-shavanish'), '');
    const vanished = await ssh('deploy shavanish', rel1);
    t.equal(vanished.code, 1, 'a container that disappeared between ps and inspect is not healthy');
    t.match(vanished.stderr, /health: 1 containers, docker inspect described 0/);
    t.equal(currentTag(), 'sha2222');
    t.notMatch(history(), /(shainsp|shavanish) deployed/);
    writeConf();
  });

  await t.test('a staged .env that still holds a placeholder is refused at deploy', async (t) => {
    const staged = join(prefix, 'env', '.env');
    const good = readFileSync(staged);
    writeFileSync(staged, 'NATS_SCHEDULER_PASS=scheduler-change-me\n', { mode: 0o600 });
    const r = await ssh('deploy shaplace', rel1);
    t.equal(r.code, 1);
    t.match(r.stderr, /env\/\.env: line 1 \(NATS_SCHEDULER_PASS\) still holds a placeholder from \.env\.example/);
    t.equal(currentTag(), 'sha2222', 'nothing changed');
    writeFileSync(staged, good);
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

  await t.test('a client that disconnects mid-deploy does not stop it: it rolls back all the same', async (t) => {
    // `current` is sha1111 now. The new release hangs in `up`, then writes to the client (gone by
    // then) and fails its health check: the deploy must still roll back to sha1111.
    writeFileSync(join(rec, 'up-sleep-shagone'), '3');
    writeFileSync(join(rec, 'unhealthy-brain-shagone'), '');
    const child = spawn('ssh', sshArgs(server, user, key, { command: 'deploy shagone' }), { stdio: ['pipe', 'ignore', 'ignore'] });
    const closed = new Promise<void>((r) => child.once('close', () => r()));
    child.stdin.end(rel2);
    const deadline = Date.now() + 20_000;
    while (!composeLog().some((l) => l.startsWith(`${image('shagone')}|`) && l.endsWith(' up -d --remove-orphans'))) {
      if (Date.now() > deadline) throw new Error('the deploy never reached up');
      await sleep(100);
    }
    t.equal(currentTag(), 'shagone', 'killed while the new release is current and in `up`');
    child.kill('SIGKILL');
    await closed;
    while (!/shagone failed/.test(history())) {
      if (Date.now() > deadline + 20_000) throw new Error(`the deploy never finished:\n${history()}`);
      await sleep(200);
    }
    t.match(history(), /shagone failed, rolled back to sha1111/);
    t.equal(currentTag(), 'sha1111', 'current ends on the previous release');
    const log = readFileSync(join(prefix, 'state', 'deploy.log'), 'utf8');
    t.match(log, /fake up: shagone done/, 'what the client missed is in state/deploy.log');
    t.match(log, /rolled back to sha1111/);
    // The lock is free again once the deploy is done.
    t.equal((await ssh('status')).code, 0);
  });

  await t.test('the release tarball is checked', async (t) => {
    const link = join(root, 'src', 'evil');
    mkdirSync(link, { recursive: true });
    writeFileSync(join(link, 'docker-compose.yml'), 'services: {}\n');
    execFileSync('ln', ['-s', '/etc/passwd', join(link, 'passwd')]);
    const withLink = execFileSync('tar', ['-cf', '-', '-C', link, '.']);
    // Independent refusals, their ssh connections at once (deploy.sh's lock runs the deploys one at a time).
    const [linked, dotenv, nocompose, garbage] = await pooled(
      [withLink, makeRelease('nodotenv', { 'docker-compose.yml': 'x', '.env': 'A=1' }), makeRelease('nocompose', { 'x.txt': 'x' }), 'not a tarball'],
      4,
      (body) => ssh('deploy shaevil', body),
    );
    t.not(linked?.code, 0, 'symlinks refused');
    t.not(dotenv?.code, 0, '.env refused');
    t.not(nocompose?.code, 0, 'compose file required');
    t.not(garbage?.code, 0, 'garbage refused');

    // Member names tar writes to .env or .brain-release all the same.
    const src = join(root, 'src', 'sneaky');
    mkdirSync(src, { recursive: true });
    writeFileSync(join(src, 'docker-compose.yml'), 'services: {}\n');
    writeFileSync(join(src, '.env'), 'NATS_OPERATOR_PASS=planted\n', { mode: 0o644 });
    writeFileSync(join(src, '.brain-release'), 'TAG=planted\n');
    const sneaky = (
      [
        ['.env', '././'],
        ['.env', './/'],
        ['.env', './././/'],
        ['.brain-release', '././'],
      ] as const
    ).map(([member, prefixed]) => {
      const tarball = execFileSync('tar', ['-cf', '-', '-C', src, '--transform', `s,^\\.,${prefixed}.,`, 'docker-compose.yml', member]);
      t.ok(execFileSync('tar', ['-tf', '-'], { input: tarball }).toString().includes(`${prefixed}${member}`), `the tar holds ${prefixed}${member}`);
      return { name: `${prefixed}${member}`, tarball };
    });
    const sneakyAnswers = await pooled(sneaky, 4, ({ tarball }) => ssh('deploy shaevil', tarball));
    for (const [i, { name }] of sneaky.entries()) {
      const r = sneakyAnswers[i] as SshResult;
      t.equal(r.code, 1, `${name} refused`);
      t.match(r.stderr, /must not contain \.env, \.brain-release or \.failed/);
    }

    // A compressed upload is refused: its size would not bound what it unpacks to.
    const big = join(root, 'src', 'big');
    mkdirSync(big, { recursive: true });
    writeFileSync(join(big, 'docker-compose.yml'), 'services: {}\n');
    writeFileSync(join(big, 'zeros'), Buffer.alloc(20 * 1024 * 1024));
    const gz = execFileSync('tar', ['-czf', '-', '-C', big, '.'], { maxBuffer: 64 * 1024 * 1024 });
    t.ok(gz.length < 1024 * 1024, 'a small gzip of 20 MB');
    const zipped = await ssh('deploy shaevil', gz);
    t.equal(zipped.code, 1, 'gzip refused');
    t.match(zipped.stderr, /not an uncompressed tar archive/);
    unlinkSync(join(big, 'zeros'));
    // A sparse member: 100 MB listed in a 10 KB tar.
    execFileSync('truncate', ['-s', '100M', join(big, 'sparse')]);
    const sparse = execFileSync('tar', ['-S', '-cf', '-', '-C', big, '.']);
    t.ok(sparse.length < 1024 * 1024);
    const unpacked = await ssh('deploy shaevil', sparse);
    t.equal(unpacked.code, 1, 'the sum of the listed sizes is capped');
    t.match(unpacked.stderr, /unpacks to more than 52428800 bytes/);
    // Too many members.
    writeConf('MAX_RELEASE_FILES=5');
    const many: Record<string, string> = { 'docker-compose.yml': 'services: {}\n' };
    for (let i = 0; i < 8; i++) many[`f${i}`] = 'x';
    const crowd = await ssh('deploy shaevil', makeRelease('many', many));
    t.equal(crowd.code, 1);
    t.match(crowd.stderr, /more than 5 members/);
    writeConf();
    t.notOk(existsSync(join(prefix, 'current', 'zeros')));
    t.equal(currentTag(), 'sha1111', 'nothing changed');
  });

  await t.test('old releases with read-only directories are pruned, and pruning never fails a deploy', async (t) => {
    writeConf('KEEP_RELEASES=1');
    const ro = join(root, 'src', 'readonly');
    mkdirSync(join(ro, 'locked'), { recursive: true });
    writeFileSync(join(ro, 'docker-compose.yml'), 'services: {}\n');
    writeFileSync(join(ro, 'locked', 'file'), 'x\n');
    chmodSync(join(ro, 'locked'), 0o555);
    const tarball = execFileSync('tar', ['-cf', '-', '-C', ro, '.']);
    const first = await ssh('deploy sharo1', tarball);
    t.equal(first.code, 0, first.stderr);
    const roRelease = realpathSync(join(prefix, 'current'));
    t.equal(statSync(join(roRelease, 'locked')).mode & 0o777, 0o555, 'the release holds a read-only directory');
    for (const tag of ['sharo2', 'sharo3']) {
      const r = await ssh(`deploy ${tag}`, rel2);
      t.equal(r.code, 0, `${tag}: a successful deploy exits 0 (${r.stderr})`);
    }
    t.notOk(existsSync(roRelease), 'the read-only release was pruned');
    t.equal(currentTag(), 'sharo3');
    writeConf();
  });

  await t.test('the forced command trusts neither its environment nor a config file others could write', async (t) => {
    const planted = join(rec, 'planted-bash-env');
    const plantedConf = join(rec, 'planted-conf');
    const plant = join(root, 'plant.sh');
    writeFileSync(plant, `touch ${planted}\n`, { mode: 0o644 });
    const evilConf = join(root, 'evil.conf');
    writeFileSync(evilConf, `BRAIN_IMAGE_REPO=evil.test/x\ntouch ${plantedConf}\n`, { mode: 0o644 });
    const setEnv = ['-o', `SetEnv=BASH_ENV=${plant} BRAIN_DEPLOY_CONF=${evilConf}`];

    // Control: with the forced command of old (no `env -i`), this sshd hands BASH_ENV to bash.
    const authorized = join(home, '.ssh', 'authorized_keys');
    const safe = readFileSync(authorized, 'utf8');
    writeFileSync(authorized, safe.replace(/^command="[^"\\]*(?:\\.[^"\\]*)*"/, `command="${prefix}/deploy.sh"`));
    t.equal((await ssh('status', '', setEnv)).code, 0);
    t.ok(existsSync(planted), 'control: sshd passes BASH_ENV and bash runs it');
    unlinkSync(planted);
    writeFileSync(authorized, safe);

    const r = await ssh('status', '', setEnv);
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /current: \S+ sharo3/, 'the real config was read');
    t.notOk(existsSync(planted), 'BASH_ENV did not run');
    t.notOk(existsSync(plantedConf), 'BRAIN_DEPLOY_CONF was not read');

    const conf = join(prefix, 'deploy.conf');
    chownSync(conf, uid, gid);
    const owned = await ssh('status');
    t.equal(owned.code, 2, 'a config the deploy user owns is refused');
    t.match(owned.stderr, /deploy\.conf is not owned by root/);
    chownSync(conf, 0, 0);
    chmodSync(conf, 0o664);
    const writable = await ssh('status');
    t.equal(writable.code, 2, 'a group-writable config is refused');
    t.match(writable.stderr, /writable by group or others/);
    chmodSync(conf, 0o644);
    const real = readFileSync(conf);
    unlinkSync(conf);
    symlinkSync(evilConf, conf);
    const linked = await ssh('status');
    t.equal(linked.code, 2, 'a symlinked config is refused');
    t.notOk(existsSync(plantedConf));
    unlinkSync(conf);
    writeFileSync(conf, real, { mode: 0o644 });
    t.equal((await ssh('status')).code, 0);
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
    const answers = await pooled(refused, 4, (command) => ssh(command, ''));
    for (const [i, command] of refused.entries()) {
      const r = answers[i] as SshResult;
      t.equal(r.code, 2, `refused: ${command}`);
      t.notMatch(r.stdout + r.stderr, /uid=\d+|root:x:0:0/, `no command output for: ${command}`);
    }
    // Each on its own connection, all at once.
    const [login, sftp, pty, stdio, remote] = await Promise.all([
      ssh(undefined, ''),
      ssh('sftp', '', ['-s']),
      ssh('status', '', ['-tt']),
      ssh(undefined, '', ['-W', `127.0.0.1:${server.port}`]),
      ssh(undefined, '', ['-N', '-o', 'ExitOnForwardFailure=yes', '-R', `127.0.0.1:0:127.0.0.1:${server.port}`]),
    ]);
    t.not(login.code, 0, 'no interactive login');
    t.match(login.stderr, /interactive logins are not allowed/);

    t.not(sftp.code, 0, 'no sftp subsystem');

    t.match(pty.stderr, /PTY allocation request failed/, 'no pty');

    t.not(stdio.code, 0, 'no direct-tcpip (-W) forwarding');
    t.match(stdio.stderr, /stdio forwarding failed|administratively prohibited|open failed/);
    t.match(server.log(), /refused local port forward/, 'sshd refused it because of the key restrictions');

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
    const log = readFileSync(join(prefix, 'state', 'deploy.log'), 'utf8');
    for (const value of [secret, token, ciSecret, 'PRIVATE KEY']) t.notOk(log.includes(value), 'state/deploy.log holds no secret');
  });
});

t.test('the installer never takes over or damages an account that is not its own', { timeout: 60_000 }, async (t) => {
  if (cannotRun !== undefined) {
    t.fail(cannotRun);
    return;
  }
  const root = mkdtempSync(join(tmpdir(), 'brain-install-'));
  chmodSync(root, 0o755);
  const key = join(root, 'id_ed25519');
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ci-deploy', '-f', key]);
  const users: string[] = [];
  t.teardown(() => {
    for (const u of users) {
      spawnSync('userdel', [u], { stdio: 'ignore' });
      spawnSync('groupdel', [u], { stdio: 'ignore' });
    }
    rmSync(root, { recursive: true, force: true });
  });
  const newUser = (tag: string, args: string[]) => {
    const name = `bd${tag}${randomBytes(3).toString('hex')}`;
    execFileSync('useradd', [...args, name]);
    users.push(name);
    return name;
  };
  const shadow = (name: string) => execFileSync('getent', ['shadow', name], { encoding: 'utf8' });
  const groups = (name: string) => execFileSync('id', ['-nG', name], { encoding: 'utf8' }).trim().split(' ');
  const install = (name: string, ...extra: string[]) =>
    spawnSync(
      'bash',
      [
        join(repo, 'deploy', 'install-deploy-user.sh'),
        '--user',
        name,
        '--prefix',
        join(root, `opt-${name}`),
        '--key',
        `${key}.pub`,
        '--image-repo',
        'registry.test/acme/brain',
        ...extra,
      ],
      { encoding: 'utf8' },
    );

  await t.test('a regular login account is refused and left as it was', async (t) => {
    const name = newUser('reg', ['--create-home', '--home-dir', join(root, 'home-reg'), '--shell', '/bin/bash', '--password', '$6$saltsalt$notarealhash']);
    const before = [shadow(name), groups(name)];
    const r = install(name);
    t.not(r.status, 0);
    t.match(r.stderr, /exists and is not a system user/);
    t.same([shadow(name), groups(name)], before, 'password and groups untouched');
    t.notOk(existsSync(join(root, 'home-reg', '.ssh', 'authorized_keys')));
    t.notOk(existsSync(join(root, `opt-${name}`)), 'nothing was installed');
  });

  await t.test('a system account in the sudo group is refused before anything changes', async (t) => {
    const name = newUser('sudo', ['--system', '--no-create-home', '--home-dir', join(root, 'home-sudo'), '--groups', 'sudo']);
    const before = [shadow(name), groups(name)];
    t.notOk(before[1]?.includes('docker'));
    const r = install(name); // with the docker group: the old installer added it before checking sudo
    t.not(r.status, 0);
    t.match(r.stderr, /is in the sudo group/);
    t.same([shadow(name), groups(name)], before, 'password untouched, not added to docker');
  });

  await t.test('a system account with a password is refused', async (t) => {
    const name = newUser('pw', ['--system', '--no-create-home', '--home-dir', join(root, 'home-pw'), '--password', '$6$saltsalt$notarealhash']);
    const before = shadow(name);
    const r = install(name, '--no-docker-group');
    t.not(r.status, 0);
    t.match(r.stderr, /has a password/);
    t.equal(shadow(name), before);
  });

  await t.test('an existing system account is set up in the home the passwd database names', async (t) => {
    const home = join(root, 'var', 'lib', 'brain-deploy');
    mkdirSync(join(root, 'var', 'lib'), { recursive: true });
    const name = newUser('sys', ['--system', '--create-home', '--home-dir', home, '--shell', '/bin/sh']);
    const r = install(name, '--no-docker-group');
    t.equal(r.status, 0, r.stderr);
    t.ok(existsSync(join(home, '.ssh', 'authorized_keys')), 'authorized_keys in its own home');
    t.notOk(existsSync(join('/home', name)), 'not in an assumed /home/<user>');
    const other = install(name, '--no-docker-group', '--home', join(root, 'elsewhere'));
    t.not(other.status, 0, 'a --home that contradicts the account is refused');
    t.match(other.stderr, /exists with home/);
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
