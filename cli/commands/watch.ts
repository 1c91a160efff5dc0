import { PROBE_HEADER } from '../../shared/events';
import { EVENT_SUBJECTS } from '../../shared/nats';
import { withClient } from '../client';
import { eventJson, formatEventLine, painter, parseMessage, useColour } from '../view';

/** `brain watch`: every pipeline event as it happens, until SIGINT or SIGTERM. */
export function run(opts: { json?: boolean }): Promise<void> {
  return withClient(async (nc) => {
    const paint = painter(useColour(process.stdout));
    const subs = EVENT_SUBJECTS.map((subject) =>
      nc.subscribe(subject, {
        callback: (err, msg) => {
          if (err !== null || msg.headers?.has(PROBE_HEADER) === true) return;
          const m = parseMessage(msg.subject, msg.data);
          process.stdout.write(`${opts.json === true ? eventJson(m) : formatEventLine(m, new Date(), paint)}\n`);
        },
      }),
    );
    await nc.flush();
    if (process.stderr.isTTY === true && opts.json !== true) process.stderr.write(paint('dim', 'watching pipeline events (Ctrl-C to stop)\n'));
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
      void nc.closed().then(() => resolve());
    });
    for (const sub of subs) sub.unsubscribe();
  });
}
