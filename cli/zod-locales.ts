/** What the CLI's bundle loads for zod's locales index: the stand-in of cli/startup.ts (see there). */
import { localesStandIn } from './startup';

export = localesStandIn();
