import { connect, type NatsConnection } from '@nats-io/transport-node';
import { environmentWithDotenv, parseConfig, type Config } from '../shared/config';
import { ConfigError, describeError } from '../shared/errors';

/** A failure the CLI reports as one line on stderr, with its own exit code. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Exit codes beyond 0 (success) and 1 (error, failed run). */
export const EXIT = { config: 2, busy: 3, timeout: 4 } as const;

/**
 * The CLI needs only the NATS settings. They are checked by the services' own rules (`parseConfig`, needing
 * no service's settings), fed nothing else, so a service-only setting can never make a CLI command fail.
 * @throws CliError (exit 2) naming each problem on one line.
 */
export function loadClientConfig(env: NodeJS.ProcessEnv): Config['nats'] {
  const merged = environmentWithDotenv(env);
  try {
    return parseConfig({ NATS_URL: merged.NATS_URL, NATS_USER: merged.NATS_USER, NATS_PASS: merged.NATS_PASS }, []).nats;
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(`invalid configuration: ${err.problems.join('; ')}`, EXIT.config);
    throw err;
  }
}

/** Connects, runs the command, closes the connection; turns every failure into one line and an exit code. */
export async function withClient(run: (nc: NatsConnection) => Promise<void>): Promise<void> {
  let nc: NatsConnection | undefined;
  try {
    const nats = loadClientConfig(process.env);
    try {
      nc = await connect({
        servers: nats.servers,
        name: 'brain-cli',
        ...(nats.user !== undefined ? { user: nats.user, pass: nats.pass } : {}),
        maxReconnectAttempts: -1,
        reconnectTimeWait: 500,
      });
    } catch (err) {
      throw new CliError(`cannot connect to NATS at ${nats.servers.join(',')}: ${describeError(err)}`);
    }
    await run(nc);
  } catch (err) {
    process.stderr.write(`brain: ${describeError(err)}\n`);
    process.exitCode = err instanceof CliError ? err.exitCode : 1;
  } finally {
    await nc?.close().catch(() => undefined);
  }
}
