import { environmentWithDotenv } from '../../shared/config';
import { ConfigError } from '../../shared/errors';
import { TopologyError } from '../../shared/nats';
import { SERVICE_NAMES, type ServiceName } from '../../services/index';
import { loadConfig, runServices } from '../../services/composition-root';

/**
 * Runs services until SIGTERM or SIGINT, then shuts down cleanly. Exit 2 on bad configuration, or when the NATS
 * topology differs from it and this NATS user may not fix it (the message names the setting and says to run `brain setup`).
 */
export async function serve(names: readonly ServiceName[]): Promise<void> {
  let config;
  try {
    config = loadConfig(environmentWithDotenv(process.env), names);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`brain: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  let running;
  try {
    running = await runServices(names, config);
  } catch (err) {
    // A topology that differs from the settings, or a setting the engine cannot meet (a swarm runner on an engine
    // that is not a swarm manager): the whole message, exit 2.
    if (err instanceof TopologyError || err instanceof ConfigError) {
      process.stderr.write(`brain: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  await new Promise<void>((resolve) => {
    const onSignal = () => resolve();
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
  await running.stop();
}

/** `brain up`: every service in one process. */
export function serveAll(): Promise<void> {
  return serve(SERVICE_NAMES);
}
