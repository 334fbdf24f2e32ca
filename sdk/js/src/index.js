// @gridfn/sdk: write gridfn event handlers in JavaScript.
//
// A handler module exports `handle(event, delivery)` and returns one of
// `success()`, `retry(reason, { afterMs })` or `reject(reason)` (or a
// promise of one: `await fetch(...)` works). `gridfn-js build` turns the
// module into a WebAssembly component for gridfn's `gridfn:handler@0.1.1`
// world (sdk/wit/handler.wit); `@gridfn/sdk/testing` runs it under Node
// with in-memory stand-ins for the host.
//
// A module may also (or instead) export `handleBatch(events, delivery)`,
// answering one outcome per event in the same order (or a promise of that
// array): gridfn calls it with a delivery's events when the handler's
// manifest entry sets `batch`, and the component is built for the
// `batch-handler` world. Without `handle`, a single event is a batch of one.
import * as host from '#host';

export { KvError, PublishError } from './errors.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ---- Outcomes ---------------------------------------------------------------

/** Done: Event Grid may forget the event; redeliveries do not run it again. */
export function success() {
  return { kind: 'success' };
}

/** Transient failure: try again later, no sooner than `afterMs` if given. */
export function retry(reason, { afterMs } = {}) {
  return afterMs === undefined ? { kind: 'retry', reason: String(reason) } : { kind: 'retry', reason: String(reason), afterMs };
}

/** Never going to work: dead-letter the event with this reason. */
export function reject(reason) {
  return { kind: 'reject', reason: String(reason) };
}

// ---- What the handler is given ----------------------------------------------

/** One event, whatever schema it arrived in (Event Grid or CloudEvents 1.0). */
export class Event {
  #raw;

  /** `raw` is the WIT `event` record as componentize-js passes it. */
  constructor(raw) {
    this.#raw = raw;
  }

  /** Unique per source; gridfn deduplicates on it. */
  get id() { return this.#raw.id; }
  /** `eventType` (Event Grid) or `type` (CloudEvents). */
  get type() { return this.#raw.eventType; }
  /** `topic` (Event Grid) or `source` (CloudEvents). */
  get source() { return this.#raw.source; }
  get subject() { return this.#raw.subject ?? undefined; }
  /** When it happened, as sent (RFC 3339 text). */
  get time() { return this.#raw.time ?? undefined; }
  get dataContentType() { return this.#raw.dataContentType ?? undefined; }
  get dataVersion() { return this.#raw.dataVersion ?? undefined; }
  /** The payload exactly as received (JSON text for JSON data). */
  get data() { return this.#raw.data; }

  /** The payload as UTF-8 text. */
  text() {
    return decoder.decode(this.#raw.data);
  }

  /** The payload parsed as JSON; throws a SyntaxError when it is not JSON. */
  json() {
    return JSON.parse(this.text());
  }

  /** A CloudEvents extension attribute, by name. */
  extension(name) {
    return this.#raw.extensions.find(([n]) => n === name)?.[1];
  }

  /** All CloudEvents extension attributes, as an object. */
  get extensions() {
    return Object.fromEntries(this.#raw.extensions);
  }
}

/** How the event reached the handler. */
export class Delivery {
  #raw;

  constructor(raw) {
    this.#raw = raw;
  }

  /** 0 on the first attempt; Event Grid's delivery count plus local retries. */
  get attempt() { return this.#raw.attempt; }
  /** The handler's name in gridfn.toml. */
  get handler() { return this.#raw.handler; }
  /** The Event Grid subscription that delivered the event, when known. */
  get subscription() { return this.#raw.subscription ?? undefined; }
  /** True when the event is replayed from a dead-letter store. */
  get replay() { return this.#raw.replay; }
}

// ---- Capabilities -------------------------------------------------------------

function fieldList(fields) {
  return Object.entries(fields ?? {}).map(([name, value]) => [name, String(value)]);
}

/**
 * The host's log, tagged with the handler and event id; `fields` become
 * `name=value` after the message. Always granted unless the manifest says
 * `log = false`. (`console.log` also reaches the host log, untagged by level.)
 */
export const log = Object.freeze({
  trace: (message, fields) => host.log('trace', String(message), fieldList(fields)),
  debug: (message, fields) => host.log('debug', String(message), fieldList(fields)),
  info: (message, fields) => host.log('info', String(message), fieldList(fields)),
  warn: (message, fields) => host.log('warn', String(message), fieldList(fields)),
  error: (message, fields) => host.log('error', String(message), fieldList(fields)),
});

/** Values the manifest sets for this handler (`capabilities.config`). */
export const config = Object.freeze({
  /** The value, or undefined when the manifest does not set it (or grant config). */
  get: (key) => host.configGet(key) ?? undefined,
});

function bytes(value) {
  return typeof value === 'string' ? encoder.encode(value) : value;
}

/**
 * This handler's own key-value store (`capabilities.kv = true`). Every call
 * throws a KvError when it fails: `kind` is `denied`, `too-large` or `store`.
 */
export const kv = Object.freeze({
  /** The value as bytes, or undefined when absent. */
  get: (key) => host.kvGet(key) ?? undefined,
  /** The value as UTF-8 text, or undefined when absent. */
  getText(key) {
    const value = host.kvGet(key);
    return value == null ? undefined : decoder.decode(value);
  },
  /** Stores a string (as UTF-8) or bytes. */
  set: (key, value) => host.kvSet(key, bytes(value)),
  delete: (key) => host.kvDelete(key),
  /** Adds `delta` (default 1) to the integer at `key`, atomically; the new value. */
  increment: (key, delta = 1) => Number(host.kvIncrement(key, BigInt(delta))),
});

/**
 * Queues a CloudEvent for the topic the manifest names
 * (`capabilities.publish`); it is sent only if this call ends in success.
 * `data` may be bytes, a string, or any other value (sent as JSON). Throws a
 * PublishError: `kind` is `denied`, `too-large` or `invalid`.
 */
export function publish({ type, data, subject, source, id, dataContentType }) {
  const payload = data instanceof Uint8Array ? data : encoder.encode(typeof data === 'string' ? data : JSON.stringify(data ?? null));
  host.publish({ id, eventType: type, source, subject, dataContentType, data: payload });
}
