import t from 'tap';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { ConfigError } from '../shared/errors';
import { loadConfig } from '../services/composition-root';
import { inboxPrefixFor } from '../shared/nats';
import { startNatsServer } from '../kit/nats-server';

const BRAIN = join(__dirname, '..', '..', 'bin', 'brain.js');

function runBrain(args: string[], env: Record<string, string>, opts: { waitFor?: RegExp; signal?: NodeJS.Signals } = {}) {
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [BRAIN, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, cwd: __dirname });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (opts.waitFor?.test(stdout)) child.kill(opts.signal ?? 'SIGTERM');
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

t.test('loadConfig reports every problem at once', async (t) => {
  const err = t.throws(() =>
    loadConfig({ NATS_URL: 'http://x', PULL_POLICY: 'sometimes', TRANSFORM_SCHEDULE: 'every hour', IS_DEVELOPMENT: 'yes', TRAIN_TIMEOUT: '-5', HOST_AWS_DIR: 'relative/path' }, [
      'transformer',
      'trainer',
    ]),
  ) as ConfigError;
  t.type(err, ConfigError);
  t.equal(err.code, 'CONFIG_INVALID');
  for (const key of ['NATS_URL', 'PULL_POLICY', 'TRANSFORM_SCHEDULE', 'IS_DEVELOPMENT', 'TRAIN_TIMEOUT', 'HOST_AWS_DIR']) {
    t.ok(
      err.problems.some((p) => p.startsWith(`${key}:`)),
      `${key} reported`,
    );
  }
});

t.test('loadConfig names what a service requires and applies the seed defaults', async (t) => {
  const err = t.throws(() => loadConfig({}, ['loader'])) as ConfigError;
  t.same(err.problems.sort(), [
    'HOST_AWS_DIR: is required by the loader service',
    'HOST_PROCESSED_DIR: is required by the loader service',
    'HOST_VIZ_DIR: is required by the loader service',
  ]);
  const config = loadConfig({ DEV_FORCE_TRAINING: '1', DEV_SKIP_MODEL: 'false' }, ['scheduler', 'model-gate']);
  t.equal(config.transformSchedule, '0 * * * *');
  t.same(config.nats.servers, ['nats://127.0.0.1:4222']);
  t.equal(config.phrases.newData, 'New data was transformed');
  t.equal(config.phrases.mismatch, 'File counts differ between the dataset commit and master.');
  t.equal(config.flags.devForceTraining, true);
  t.equal(config.flags.devSkipModel, false);
  t.equal(config.lockTtlMs, 90_000, 'LOCK_TTL defaults to 3 x ACK_WAIT');
});

t.test('topology and connection settings: an empty LOCK_TTL/ACK_WAIT is the default (compose passes them empty), the inbox prefix follows the NATS user', async (t) => {
  const empty = loadConfig({ LOCK_TTL: '', ACK_WAIT: ' ' }, []);
  t.same([empty.lockTtlMs, empty.ackWaitMs], [90_000, 30_000], 'empty means the default');
  t.equal(loadConfig({ LOCK_TTL: '60' }, []).lockTtlMs, 60_000, 'a value is taken');
  t.equal(inboxPrefixFor(loadConfig({}, []).nats), undefined, "no user: the client's default inbox");
  t.equal(inboxPrefixFor(loadConfig({ NATS_USER: 'transformer', NATS_PASS: 'x' }, []).nats), '_INBOX_transformer', 'a user: _INBOX_<user>');
  t.equal(inboxPrefixFor(loadConfig({ NATS_USER: 'transformer', NATS_PASS: 'x', NATS_INBOX_PREFIX: '_INBOX_stage.a' }, []).nats), '_INBOX_stage.a', 'NATS_INBOX_PREFIX wins');
  const err = t.throws(() => loadConfig({ NATS_INBOX_PREFIX: '_INBOX.>' }, [])) as ConfigError;
  t.match(err.problems.join('\n'), /NATS_INBOX_PREFIX: must be subject tokens/, 'a wildcard prefix is refused');
});

t.test('brain service with a bad configuration lists every problem and exits 2', async (t) => {
  const { code, stderr } = await runBrain(['service', 'transformer'], { NATS_URL: 'nope', PULL_POLICY: 'maybe' });
  t.equal(code, 2);
  t.match(stderr, /NATS_URL/);
  t.match(stderr, /PULL_POLICY/);
  t.match(stderr, /HOST_AWS_DIR: is required by the transformer service/);
  t.notMatch(stderr, /at .*\.js:\d+/, 'no stack trace');
});

t.test('brain service rejects an unknown service name', async (t) => {
  const { code, stderr } = await runBrain(['service', 'nope'], {});
  t.not(code, 0);
  t.match(stderr, /must be one of scheduler, transformer, loader, model-gate, trainer, web/);
});

t.test('brain up and brain service exit cleanly on SIGTERM and SIGINT', async (t) => {
  const server = await startNatsServer();
  t.teardown(async () => {
    await server.stop();
    await server.cleanup();
  });
  const env = {
    NATS_URL: server.url,
    HOST_AWS_DIR: '/tmp',
    HOST_PROCESSED_DIR: '/tmp',
    HOST_VIZ_DIR: '/tmp',
    HEALTH_PORT: '0',
    HEALTH_HOST: '127.0.0.1',
    WEB_PORT: '0',
    WEB_HOST: '127.0.0.1',
  };
  const up = await runBrain(['up'], env, { waitFor: /services started/ });
  t.equal(up.code, 0, 'brain up exit code');
  t.match(up.stdout, /"services":\["scheduler","transformer","loader","model-gate","trainer","web"\]/, 'brain up runs every service, the web one included');
  t.match(up.stdout, /"msg":"web service listening"/);
  t.match(up.stdout, /"msg":"services stopped"/);
  const web = await runBrain(['service', 'web'], env, { waitFor: /services started/ });
  t.equal(web.code, 0, 'brain service web exit code');
  t.match(web.stdout, /"services":\["web"\]/, 'brain service web runs it alone');
  const one = await runBrain(['service', 'scheduler'], env, { waitFor: /services started/ });
  t.equal(one.code, 0, 'brain service exit code');
  t.match(one.stdout, /"service":"scheduler"/);
  const interrupted = await runBrain(['service', 'transformer'], env, { waitFor: /services started/, signal: 'SIGINT' });
  t.equal(interrupted.code, 0, 'SIGINT exit code');
  t.match(interrupted.stdout, /"msg":"services stopped"/);
});
