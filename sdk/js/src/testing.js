// @gridfn/sdk/testing: run a handler under Node, as gridfn would run it,
// with in-memory stand-ins for the host (log, config, kv, publish, and
// `fetch` limited to the hosts a test allows).
//
//   const result = await run(handle, { type: 'Contoso.Thing', data: { id: 1 } }, { kv: true });
//   assert.deepEqual(result.outcome, success());
//
// `runBatch(handleBatch, [event, …], grants)` does the same for a batch
// handler, and resolves to its `outcomes`, one per event.
import { outcomeOf, outcomesOf } from './adapter.js';
import { begin, end } from '#host';

const encoder = new TextEncoder();

function dataBytes(data) {
  if (data === undefined) return new Uint8Array();
  if (data instanceof Uint8Array) return data;
  return encoder.encode(typeof data === 'string' ? data : JSON.stringify(data));
}

/**
 * The WIT `event` record gridfn would pass for this description: `data`
 * may be bytes, a string (sent as is) or any other value (sent as JSON).
 */
function rawEvent({
  id = 'evt-1',
  type = 'Test.Event',
  source = '/test',
  subject,
  time,
  dataContentType,
  dataVersion,
  data,
  extensions = {},
} = {}) {
  return {
    id,
    eventType: type,
    source,
    subject,
    time,
    dataContentType,
    dataVersion,
    data: dataBytes(data),
    extensions: Object.entries(extensions).map(([name, value]) => [name, String(value)]),
  };
}

/** Does `url` fall under one `allowed_outbound_hosts` entry (gridfn's rules)? */
export function allowedBy(entry, url) {
  const [scheme, rest] = entry.split('://');
  const hostPort = rest.replace(/\/$/, '');
  const colon = hostPort.lastIndexOf(':');
  const hasPort = colon > hostPort.lastIndexOf(']');
  const host = (hasPort ? hostPort.slice(0, colon) : hostPort).toLowerCase();
  const port = hasPort ? hostPort.slice(colon + 1) : { http: '80', https: '443' }[scheme];
  const target = new URL(url);
  const targetScheme = target.protocol.slice(0, -1);
  const targetPort = target.port || { http: '80', https: '443' }[targetScheme];
  return (
    (scheme === '*' || scheme === targetScheme) &&
    (port === '*' || port === targetPort) &&
    (host.startsWith('*.') ? target.hostname.endsWith(host.slice(1)) : host === target.hostname)
  );
}

/**
 * A `fetch` that refuses what `allowedHosts` does not list (as gridfn does,
 * with the TypeError a component's fetch throws) and sends the rest to the
 * test's `server(request)`, which returns a Response.
 */
function sandboxedFetch(allowedHosts, server) {
  return async (input, init) => {
    const request = new Request(input, init);
    if (!allowedHosts.some((entry) => allowedBy(entry, request.url))) {
      throw new TypeError('NetworkError when attempting to fetch resource.');
    }
    if (!server) throw new Error(`run(): ${request.url} is allowed, but the test gave no server to answer it`);
    return server(request);
  };
}

/**
 * Runs `handle` on one event with these grants, as gridfn would:
 * - `event`: a description for rawEvent(), e.g. `{ type, subject, data }`;
 * - `handler` (default 'handler'), `attempt`, `subscription`, `replay`: the delivery;
 * - `config`: an object of values (absent: the capability is not granted);
 * - `kv`: true for an empty store, or a Map kept between runs (absent: denied);
 * - `publish`: true to grant it;
 * - `log`: false to deny it;
 * - `allowedHosts` and `server(request) => Response`: outbound HTTP.
 *
 * Resolves to `{ outcome, logs, published, kv }`: `published` holds what
 * gridfn would send, which is nothing unless the outcome is success.
 */
export async function run(handle, event = {}, options = {}) {
  const {
    handler = 'handler',
    attempt = 0,
    subscription,
    replay = false,
    config,
    kv,
    publish = false,
    log = true,
    allowedHosts = [],
    server,
  } = options;
  const store = kv === true ? new Map() : kv instanceof Map ? kv : null;
  const call = begin({
    config: config === undefined ? null : new Map(Object.entries(config)),
    kv: store,
    publish,
    log,
  });
  const realFetch = globalThis.fetch;
  globalThis.fetch = sandboxedFetch(allowedHosts, server);
  try {
    const raw = rawEvent(event);
    const recorded = store && new Map(store);
    const outcome = await outcomeOf(handle, raw, { attempt, handler, subscription, replay });
    // gridfn applies a run's kv writes only with its record (success or
    // rejection): a retried run leaves none.
    if (outcome.kind === 'retry') restore(store, recorded);
    const published =
      outcome.kind === 'success' ? call.queued.map((queued, n) => outgoing(queued, `${raw.id}:${handler}:${n}`, handler)) : [];
    return { outcome, logs: call.logs, published, kv: store };
  } finally {
    globalThis.fetch = realFetch;
    end();
  }
}

/**
 * Runs `handleBatch` on these events (descriptions for rawEvent(); ids
 * default to `evt-1`, `evt-2`, …) as gridfn's `handle-batch` would, with the
 * grants `run` takes except `publish` (gridfn refuses it with `batch`, so
 * publishing throws `denied`). A throw retries every event. Resolves to
 * `{ outcomes, logs, kv }`; `outcomes` is the answer as gridfn reads it, so a
 * test sees an array of the wrong length (gridfn retries all of its events).
 */
export async function runBatch(handleBatch, events = [{}], options = {}) {
  const { handler = 'handler', attempt = 0, subscription, replay = false, config, kv, log = true, allowedHosts = [], server } = options;
  const store = kv === true ? new Map() : kv instanceof Map ? kv : null;
  const call = begin({ config: config === undefined ? null : new Map(Object.entries(config)), kv: store, publish: false, log });
  const realFetch = globalThis.fetch;
  globalThis.fetch = sandboxedFetch(allowedHosts, server);
  try {
    const raw = events.map((event, n) => rawEvent({ id: `evt-${n + 1}`, ...event }));
    const recorded = store && new Map(store);
    const outcomes = await outcomesOf(handleBatch, raw, { attempt, handler, subscription, replay });
    // As gridfn: the call's kv writes go with the first of its events recorded
    // (succeeded or rejected); a call whose events all retry (an answer of the
    // wrong length retries them all) leaves none.
    if (outcomes.length !== raw.length || outcomes.every((outcome) => outcome.kind === 'retry')) restore(store, recorded);
    return { outcomes, logs: call.logs, kv: store };
  } finally {
    globalThis.fetch = realFetch;
    end();
  }
}

const decoder = new TextDecoder();

/** A published event as gridfn would send it (its default id and source), JSON data parsed. */
function outgoing(event, defaultId, handler) {
  const type = event.dataContentType ?? 'application/json';
  const text = decoder.decode(event.data);
  return {
    id: event.id ?? defaultId,
    type: event.eventType,
    source: event.source ?? `/gridfn/handlers/${handler}`,
    subject: event.subject,
    dataContentType: event.dataContentType,
    data: /[/+]json(;|$)/.test(type) ? JSON.parse(text) : text,
  };
}

/** Puts `store` (the Map a test passed, kept between runs) back to `recorded`. */
function restore(store, recorded) {
  if (!store) return;
  store.clear();
  for (const [key, value] of recorded) store.set(key, value);
}
