// Between gridfn's `handle` (and `handle-batch`) export and the handler's own
// `handle` (`handleBatch`): wraps the WIT records in Event and Delivery, and
// turns what the handler returns, throws or rejects with into outcomes. The component's entry point (made
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

function isOutcome(value) {
  return value !== null && typeof value === 'object' && KINDS.has(value.kind);
}

function checked(outcome) {
  if (isOutcome(outcome)) return outcome;
  return retry(`handle returned ${describe(outcome)}, not success(), retry(…) or reject(…)`);
}

function isPromise(value) {
  return value !== null && typeof value === 'object' && typeof value.then === 'function';
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
  if (isPromise(result)) {
    return Promise.resolve(result).then(checked, thrown);
  }
  return checked(result);
}

/**
 * Checks `handleBatch`'s answer for `count` events: anything but an array
 * retries every event; an item that is not an outcome retries its own. An
 * array of the wrong length is passed on as it is: gridfn retries the whole
 * call and logs why.
 */
function checkedList(outcomes, count) {
  if (!Array.isArray(outcomes)) {
    return Array.from({ length: count }, () => retry(`handleBatch returned ${describe(outcomes)}, not an array of outcomes`));
  }
  return outcomes.map((outcome, n) =>
    isOutcome(outcome) ? outcome : retry(`handleBatch answered ${describe(outcome)} for event ${n}, not success(), retry(…) or reject(…)`),
  );
}

/**
 * Calls `handleBatch(events, delivery)` with the raw WIT records and settles
 * on one outcome per event (or a promise of them), as gridfn reads them: a
 * throw or a rejected promise retries every event of the call. Never throws.
 */
export function outcomesOf(handleBatch, rawEvents, rawDelivery) {
  const count = rawEvents.length;
  const all = (outcome) => Array.from({ length: count }, () => outcome);
  let result;
  try {
    result = handleBatch(rawEvents.map((raw) => new Event(raw)), new Delivery(rawDelivery));
  } catch (error) {
    return all(thrown(error));
  }
  if (isPromise(result)) {
    return Promise.resolve(result).then((outcomes) => checkedList(outcomes, count), (error) => all(thrown(error)));
  }
  return checkedList(result, count);
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

/** The component's `handle-batch` export, around the handler module's `handleBatch`. */
export function exportHandleBatch(handleBatch) {
  if (typeof handleBatch !== 'function') {
    throw new TypeError('handleBatch must be a function(events, delivery) returning one outcome per event');
  }
  return (rawEvents, rawDelivery) => {
    const outcomes = outcomesOf(handleBatch, rawEvents, rawDelivery);
    return outcomes instanceof Promise ? outcomes.then((list) => list.map(toWit)) : outcomes.map(toWit);
  };
}

/** One outcome from a batch of one, or a retry when the batch handler answered another number. */
function single(outcomes) {
  if (outcomes.length === 1) return outcomes[0];
  return retry(`the batch handler answered ${outcomes.length} outcomes for one event`);
}

/**
 * The component's `handle` export for a module with `handleBatch` but no
 * `handle`: the one event as a batch of one, so the component also runs
 * where the manifest does not set `batch`.
 */
export function exportBatchOfOne(handleBatch) {
  return (rawEvent, rawDelivery) => {
    const outcomes = outcomesOf(handleBatch, [rawEvent], rawDelivery);
    return outcomes instanceof Promise ? outcomes.then((list) => toWit(single(list))) : toWit(single(outcomes));
  };
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
