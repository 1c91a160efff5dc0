import { connect } from '@nats-io/transport-node';
import type { Config } from '../../shared/config';
import type { Logger } from '../../shared/logger';
import { inboxPrefixFor } from '../../shared/nats';
import type { Service } from '../../shared/service';
import type { ConnectNats } from './access';
import { createWeb } from './service';

/**
 * NATS connections for the web service: a person's (their Basic credentials, their own inbox prefix) or, without
 * credentials, the service's own configured identity (NATS_USER, if any; compose gives it the read-only `monitor`).
 */
export function natsConnector(nats: Config['nats']): ConnectNats {
  return ({ creds, name }) => {
    const identity = creds !== undefined ? { user: creds.user, pass: creds.pass } : nats.user !== undefined ? { user: nats.user, pass: nats.pass } : undefined;
    const inboxPrefix = creds !== undefined ? (/^[A-Za-z0-9_-]+$/.test(creds.user) ? `_INBOX_${creds.user}` : undefined) : inboxPrefixFor(nats);
    return connect({
      servers: nats.servers,
      name,
      ...(identity !== undefined ? identity : {}),
      ...(inboxPrefix !== undefined ? { inboxPrefix } : {}),
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
    });
  };
}

/** The web service as the composition root runs it: WEB_HOST/WEB_PORT, TRANSFORM_SCHEDULE, the NATS settings. */
export function webService(deps: { config: Config; logger: Logger }): Service {
  const { config, logger } = deps;
  const web = createWeb({
    connect: natsConnector(config.nats),
    logger,
    config: { host: config.web.host, port: config.web.port, transformSchedule: config.transformSchedule },
  });
  return { name: 'web', start: () => web.start(), stop: () => web.stop() };
}
