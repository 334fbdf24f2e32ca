// Between gridfn's `handle` export and the handler's own `handle`: wraps the
// WIT records in Event and Delivery, and turns what the handler returns,
// throws or rejects with into an outcome. The component's entry point (made
// by `gridfn-js build`) and `@gridfn/sdk/testing` both go through here, so a
// test sees what gridfn would.
import { Delivery, Event, log, retry } from './index.js';

const KINDS = new Set(['success', 'retry', 'reject']);

function describe(value) {
  if (value === undefined || value === null) return String(value);
  if (typeof value === 'object') return `an object with keys [${Object.keys(value).join(', ')}]`;
  return `a ${typeof value}`;
}

/** An uncaught exception is a transient failure, like a Rust panic: retry, with the message. */
function thrown(error) {
  const message = error instanceof Error ? error.message : String(error);
  log.error(`handler threw: ${error instanceof Error && error.stack ? `${message}\n${error.stack}` : message}`);
  return retry(`handler threw: ${message}`);
}

function checked(outcome) {
  if (outcome !== null && typeof outcome === 'object' && KINDS.has(outcome.kind)) return outcome;
  return retry(`handle returned ${describe(outcome)}, not success(), retry(…) or reject(…)`);
}

/**
 * Calls `handle(event, delivery)` with the raw WIT records and settles on an
 * outcome: synchronously when the handler returned one, as a promise when it
 * returned a promise. Never throws.
 */
export function outcomeOf(handle, rawEvent, rawDelivery) {
  let result;
  try {
    result = handle(new Event(rawEvent), new Delivery(rawDelivery));
  } catch (error) {
    return thrown(error);
  }
  if (result !== null && typeof result === 'object' && typeof result.then === 'function') {
    return Promise.resolve(result).then(checked, thrown);
  }
  return checked(result);
}

/** An SDK outcome as the WIT `outcome` variant. */
export function toWit(outcome) {
  switch (outcome.kind) {
    case 'success':
      return { tag: 'success' };
    case 'reject':
      return { tag: 'reject', val: outcome.reason };
    default: {
      const ms = outcome.afterMs;
      const afterMs = typeof ms === 'number' && Number.isFinite(ms) ? BigInt(Math.max(0, Math.ceil(ms))) : undefined;
      return { tag: 'retry', val: { reason: outcome.reason, afterMs } };
    }
  }
}

/** The component's `handle` export, around the handler module's `handle`. */
export function exportHandle(handle) {
  if (typeof handle !== 'function') {
    throw new TypeError('a gridfn handler module must export function handle(event, delivery)');
  }
  return (rawEvent, rawDelivery) => {
    const outcome = outcomeOf(handle, rawEvent, rawDelivery);
    return outcome instanceof Promise ? outcome.then(toWit) : toWit(outcome);
  };
}
