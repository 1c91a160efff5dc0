import pino, { type DestinationStream, type Logger } from 'pino';

export type { Logger };

/**
 * JSON logger for one service. Tests inject `destination` to capture lines.
 * Only event fields and error messages are logged: never env-file values or container configs.
 */
export function createLogger(service: string, level: string, destination?: DestinationStream): Logger {
  const options = { level, base: { service }, timestamp: pino.stdTimeFunctions.isoTime };
  return destination === undefined ? pino(options) : pino(options, destination);
}
