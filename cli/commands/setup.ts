import type { NatsConnection } from '@nats-io/transport-node';
import { environmentWithDotenv, parseConfig, type Config } from '../../shared/config';
import { ConfigError, describeError } from '../../shared/errors';
import { TopologyError, connectNats, convergeTopology, describeChange, topologyOptions } from '../../shared/nats';
import { wantedTopology } from '../../services/composition-root';

/** Exit codes of `brain setup`: 0 the topology matches the configuration, 2 a configuration or topology problem, 1 anything else. */
export const SETUP_EXIT = { ok: 0, failed: 1, config: 2 } as const;

/**
 * Creates or updates the whole NATS topology (both streams, the four durable consumers, the locks and runs buckets) to
 * match the configuration, as a NATS user with topology rights (`admin` in deploy/nats/auth.conf). Prints one line per
 * change. Returns the exit code.
 */
export async function runSetup(env: NodeJS.ProcessEnv, out: (line: string) => void, err: (line: string) => void): Promise<number> {
  let config: Config;
  try {
    config = parseConfig(environmentWithDotenv(env), []);
  } catch (e) {
    if (e instanceof ConfigError) {
      err(`brain setup: ${e.message}`);
      return SETUP_EXIT.config;
    }
    throw e;
  }
  let nc: NatsConnection | undefined;
  try {
    nc = await connectNats(config, 'brain-setup');
    const changes = await convergeTopology(nc, wantedTopology(topologyOptions(config)), config.nats.user !== undefined ? { user: config.nats.user } : {});
    for (const change of changes) out(describeChange(change));
    out(changes.length === 0 ? 'the NATS topology already matches the configuration' : 'the NATS topology matches the configuration');
    return SETUP_EXIT.ok;
  } catch (e) {
    err(`brain setup: ${e instanceof TopologyError ? e.message : describeError(e)}`);
    return e instanceof TopologyError ? SETUP_EXIT.config : SETUP_EXIT.failed;
  } finally {
    await nc?.close().catch(() => undefined);
  }
}

/** `brain setup`, on the process's environment and streams. */
export async function run(): Promise<void> {
  process.exitCode = await runSetup(
    process.env,
    (line) => process.stdout.write(`${line}\n`),
    (line) => process.stderr.write(`${line}\n`),
  );
}
