import type { NatsConnection } from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError, jetstream } from '@nats-io/jetstream';
import { headers } from '@nats-io/nats-core';
import { Subjects, PROBE_HEADER } from '../../shared/events';
import { describeError } from '../../shared/errors';
import { TopologyError, isPermissionDenied, openBucket } from '../../shared/nats';
import { PAUSE_KEY, SCHEDULE_BUCKET } from '../../shared/schedule';

/** What the person on a connection may do, as the NATS server decides it; `why` explains each `false`. */
export interface Abilities {
  trigger: boolean;
  pause: boolean;
  why: { trigger?: string; pause?: string };
}

/**
 * An expected last sequence no stream reaches (2^53 - 1): the server answers "wrong last sequence" and stores
 * nothing, but only after its permission check, which refuses the publish first for a user without the right.
 */
export const IMPOSSIBLE_SEQUENCE = Number.MAX_SAFE_INTEGER;

type Verdict = { allowed: true } | { allowed: false; why: string; final: boolean };

function verdictOf(err: unknown, refused: string): Verdict {
  if (err instanceof JetStreamApiError && (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)) {
    return { allowed: true };
  }
  if (isPermissionDenied(err)) return { allowed: false, why: refused, final: true };
  return { allowed: false, why: `could not be checked: ${describeError(err)}`, final: false };
}

/**
 * Asks the NATS server, on the person's own connection, whether it would take their trigger and their pause:
 * a JetStream publish to each trigger subject and a KV update of the schedule's `paused` key, each with an
 * expected last sequence that cannot match. A permitted publish is refused by JetStream ("wrong last sequence",
 * nothing stored); a forbidden one by the permissions (a permission violation). Core subscribers of the subject
 * do see the probe (empty body, header `Brain-Probe`); the services read only through JetStream and never do.
 * `final` is false when a check failed for another reason (the verdict should not be kept).
 */
export async function probeAbilities(nc: NatsConnection, user: string | undefined): Promise<Abilities & { final: boolean }> {
  const who = user !== undefined ? `NATS user ${JSON.stringify(user)}` : "The web service's NATS connection";
  const js = jetstream(nc);
  const probe = async (subject: string): Promise<Verdict> => {
    const h = headers();
    h.set(PROBE_HEADER, 'permission');
    try {
      const ack = await js.publish(subject, new Uint8Array(0), { expect: { lastSequence: IMPOSSIBLE_SEQUENCE }, headers: h });
      // Cannot happen while streams are shorter than 2^53 - 1 messages; say so rather than pretend.
      return { allowed: false, why: `the probe of ${subject} was stored (sequence ${ack.seq}): refusing to guess`, final: false };
    } catch (err) {
      return verdictOf(err, `${who} may not publish ${subject} (the NATS server's permissions refuse it): triggering needs an operator account`);
    }
  };
  const [transform, model] = await Promise.all([probe(Subjects.transformTrigger), probe(Subjects.modelTrigger)]);

  let pause: Verdict;
  try {
    const kv = await openBucket(nc, SCHEDULE_BUCKET);
    try {
      await kv.update(PAUSE_KEY, new Uint8Array(0), IMPOSSIBLE_SEQUENCE);
      pause = { allowed: false, why: 'the pause probe was stored: refusing to guess', final: false };
    } catch (err) {
      pause = verdictOf(err, `${who} may not write the schedule's pause (the NATS server's permissions refuse it): pausing needs an operator account`);
    }
  } catch (err) {
    if (!(err instanceof TopologyError)) throw err;
    pause = { allowed: false, why: 'the schedule bucket does not exist yet (`brain setup` creates it)', final: false };
  }

  const trigger: Verdict = !transform.allowed ? transform : model;
  const why: Abilities['why'] = {};
  if (!trigger.allowed) why.trigger = trigger.why;
  if (!pause.allowed) why.pause = pause.why;
  const final = [transform, model, pause].every((v) => v.allowed || v.final);
  return { trigger: trigger.allowed, pause: pause.allowed, why, final };
}

/** One probe per connection (a person's connection lives while they use it); a failed check is asked again. */
export function abilitiesCache(): (nc: NatsConnection, user: string | undefined) => Promise<Abilities> {
  const cache = new WeakMap<NatsConnection, Promise<Abilities & { final: boolean }>>();
  return async (nc, user) => {
    let found = cache.get(nc);
    if (found === undefined) {
      found = probeAbilities(nc, user);
      cache.set(nc, found);
      found.then(
        (v) => {
          if (!v.final) cache.delete(nc);
        },
        () => cache.delete(nc),
      );
    }
    const { trigger, pause, why } = await found;
    return { trigger, pause, why };
  };
}
