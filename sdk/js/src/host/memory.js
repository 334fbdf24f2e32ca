// In-memory stand-ins for the host's imports, so a handler's tests run under
// plain Node before it is built (`node --test`). `testing.js` sets up one
// call at a time with `begin` and reads what happened from the returned
// record. They follow gridfn's rules where a test could notice: what is not
// granted is denied, kv and publish limits, JSON checks on published data.
import { KvError, PublishError } from '../errors.js';

const MAX_KEY = 512;
const MAX_VALUE = 1 << 20;
const MAX_PUBLISHED = 100;
const MAX_PUBLISHED_BYTES = 1 << 20;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What the current call may use and what it did; null outside `run`. */
let call = null;

/**
 * Starts one call with these grants: `config` (Map or null), `kv` (Map or
 * null), `publish` and `log` (booleans). Returns the record the stand-ins
 * fill in: `logs` and `queued` (published, not yet sent).
 */
export function begin({ config, kv, publish, log }) {
  call = { config, kv, publish, log, logs: [], queued: [], queuedBytes: 0 };
  return call;
}

export function end() {
  call = null;
}

function current() {
  if (call === null) {
    throw new Error('@gridfn/sdk: a capability was used outside a handler call; in tests, call the handler through run() from @gridfn/sdk/testing');
  }
  return call;
}

export function log(level, message, fields) {
  const c = current();
  if (c.log) c.logs.push({ level, message, fields: Object.fromEntries(fields) });
}

export function configGet(key) {
  return current().config?.get(key);
}

function store(key) {
  const { kv } = current();
  if (!kv) throw new KvError('denied');
  if (encoder.encode(key).length > MAX_KEY) throw new KvError('too-large');
  return kv;
}

export function kvGet(key) {
  const value = store(key).get(key);
  return value === undefined ? undefined : new Uint8Array(value);
}

export function kvSet(key, value) {
  const kv = store(key);
  if (value.length > MAX_VALUE) throw new KvError('too-large');
  kv.set(key, new Uint8Array(value));
}

export function kvDelete(key) {
  store(key).delete(key);
}

export function kvIncrement(key, delta) {
  const kv = store(key);
  const old = kv.get(key);
  const text = old === undefined ? '0' : decoder.decode(old);
  if (!/^-?\d+$/.test(text)) throw new KvError('store', `the value at ${key} is not an integer`);
  const next = BigInt(text) + delta;
  kv.set(key, encoder.encode(next.toString()));
  return next;
}

export function publish(event) {
  const c = current();
  if (!c.publish) throw new PublishError('denied');
  if (!event.eventType) throw new PublishError('invalid', 'the event type is empty');
  const type = event.dataContentType ?? 'application/json';
  if (/[/+]json(;|$)/.test(type)) {
    try {
      JSON.parse(decoder.decode(event.data));
    } catch {
      throw new PublishError('invalid', `data is not JSON, but its content type is ${type}`);
    }
  }
  if (c.queued.length >= MAX_PUBLISHED || c.queuedBytes + event.data.length > MAX_PUBLISHED_BYTES) {
    throw new PublishError('too-large');
  }
  c.queuedBytes += event.data.length;
  c.queued.push(event);
}
