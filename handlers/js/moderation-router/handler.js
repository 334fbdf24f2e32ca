// The moderation router in JavaScript: the same behaviour as the Rust
// handlers/moderation-router, from one contract (the classic Event Grid
// lab's content-moderation results; its log lines are part of the contract,
// so change them in all three languages or not at all).
//
// The action is the config key `action` (quarantine | publish | escalate)
// when the manifest sets it, else the one the event type names. A result
// that is not a moderation result, an unknown type or an unknown action can
// never succeed: rejected (dead-lettered), not retried.
import { KvError, PublishError, config, kv, log, publish, reject, retry, success } from '@gridfn/sdk';

export const FLAGGED = 'com.contoso.ai.ContentFlagged';
export const APPROVED = 'com.contoso.ai.ContentApproved';
export const ESCALATED = 'com.contoso.ai.ReviewEscalated';
/** The source of the ReviewEscalated events this handler publishes. */
export const SOURCE = '/gridfn/moderation';

const ACTIONS = new Set(['quarantine', 'publish', 'escalate']);
const ACTION_OF_TYPE = { [FLAGGED]: 'quarantine', [APPROVED]: 'publish', [ESCALATED]: 'escalate' };

/** The moderation result in `data`, or why it is not one. */
function parseResult(event) {
  let data;
  try {
    data = event.json();
  } catch (error) {
    return { why: `data is not JSON: ${error.message}` };
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return { why: 'data is not a JSON object' };
  if (!('contentId' in data)) return { why: 'contentId is missing' };
  if (typeof data.contentId !== 'string') return { why: 'contentId is not a string' };
  if (!('confidence' in data)) return { why: 'confidence is missing' };
  if (typeof data.confidence !== 'number') return { why: 'confidence is not a number' };
  const text = (key) => (typeof data[key] === 'string' ? data[key] : undefined);
  return {
    result: {
      contentId: data.contentId,
      confidence: data.confidence,
      category: text('category') ?? 'unknown',
      severity: text('severity') ?? 'unknown',
      escalationReason: text('escalationReason'),
      data,
    },
  };
}

/**
 * `x` with two decimals, as Rust's `{:.2}` writes it: an exact tie (0.125)
 * rounds to even, where `toFixed` rounds up.
 */
export function twoDecimals(x) {
  const up = x.toFixed(2);
  const exact = Math.abs(x).toFixed(100);
  if (!/^\d+\.\d\d50*$/.test(exact)) return up;
  const down = (x < 0 ? '-' : '') + exact.slice(0, exact.indexOf('.') + 3);
  return Number(down.at(-1)) % 2 === 0 ? down : up;
}

/** Why a person should look at it: the sender's reason when it gave one. */
function escalationReason(result) {
  return result.escalationReason ?? `confidence ${twoDecimals(result.confidence)}, severity ${result.severity}`;
}

export function handle(event, delivery) {
  const { result, why } = parseResult(event);
  if (!result) return reject(`not a moderation result: ${why}`);

  const configured = config.get('action');
  let action;
  if (configured !== undefined) {
    if (!ACTIONS.has(configured)) return reject(`unknown action ${configured}`);
    action = configured;
  } else {
    action = ACTION_OF_TYPE[event.type];
    if (!action) return reject(`unexpected event type ${event.type}`);
  }

  // Queued before counting, so a publish failure retries before the count moves.
  if (action === 'escalate' && event.type !== ESCALATED) {
    try {
      publish({
        type: ESCALATED,
        source: SOURCE,
        subject: event.subject,
        data: { ...result.data, escalationReason: escalationReason(result) },
      });
    } catch (error) {
      if (!(error instanceof PublishError && error.kind === 'denied')) {
        return retry(`cannot publish the escalation: ${error.message}`);
      }
    }
  }
  try {
    kv.increment(`count/${action}`);
  } catch (error) {
    if (!(error instanceof KvError && error.kind === 'denied')) return retry(`counting failed: ${error.message}`);
  }

  const { handler } = delivery;
  const content = result.contentId;
  if (action === 'quarantine') {
    log.warn(`${handler}: quarantine ${content} (${result.category}, ${result.severity}; confidence ${twoDecimals(result.confidence)})`);
  } else if (action === 'publish') {
    log.info(`${handler}: publish ${content}`);
  } else {
    log.warn(`${handler}: escalate ${content} for human review (${escalationReason(result)})`);
  }
  return success();
}
