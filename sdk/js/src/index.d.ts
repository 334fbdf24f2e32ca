// Types for @gridfn/sdk: a gridfn handler in TypeScript.
//
//   import { type Event, type Delivery, type Outcome, success, reject } from '@gridfn/sdk';
//   export function handle(event: Event, delivery: Delivery): Outcome { ... }

/** Done: Event Grid may forget the event; redeliveries do not run it again. */
export interface Success {
  kind: 'success';
}
/** Transient failure: try again later, no sooner than `afterMs`. */
export interface Retry {
  kind: 'retry';
  reason: string;
  afterMs?: number;
}
/** Never going to work: dead-letter the event with this reason. */
export interface Reject {
  kind: 'reject';
  reason: string;
}
export type Outcome = Success | Retry | Reject;

/** What a handler module exports as `handle`. Throwing counts as `retry`. */
export type Handler = (event: Event, delivery: Delivery) => Outcome | Promise<Outcome>;

/**
 * What a handler module exports as `handleBatch`: one outcome per event, in
 * the order given. Throwing retries every event of the call.
 */
export type BatchHandler = (events: Event[], delivery: Delivery) => Outcome[] | Promise<Outcome[]>;

export function success(): Success;
export function retry(reason: string, options?: { afterMs?: number }): Retry;
export function reject(reason: string): Reject;

/** One event, whatever schema it arrived in (Event Grid or CloudEvents 1.0). */
export class Event {
  /** Unique per source; gridfn deduplicates on it. */
  readonly id: string;
  /** `eventType` (Event Grid) or `type` (CloudEvents). */
  readonly type: string;
  /** `topic` (Event Grid) or `source` (CloudEvents). */
  readonly source: string;
  readonly subject: string | undefined;
  /** When it happened, as sent (RFC 3339 text). */
  readonly time: string | undefined;
  readonly dataContentType: string | undefined;
  readonly dataVersion: string | undefined;
  /** The payload exactly as received (JSON text for JSON data). */
  readonly data: Uint8Array;
  /** CloudEvents extension attributes. */
  readonly extensions: Record<string, string>;
  /** The payload as UTF-8 text. */
  text(): string;
  /** The payload parsed as JSON; throws a SyntaxError when it is not JSON. */
  json<T = unknown>(): T;
  /** A CloudEvents extension attribute, by name. */
  extension(name: string): string | undefined;
}

/** How the event reached the handler. */
export class Delivery {
  /** 0 on the first attempt; Event Grid's delivery count plus local retries. */
  readonly attempt: number;
  /** The handler's name in gridfn.toml. */
  readonly handler: string;
  /** The Event Grid subscription that delivered the event, when known. */
  readonly subscription: string | undefined;
  /** True when the event is replayed from a dead-letter store. */
  readonly replay: boolean;
}

export type Fields = Record<string, string | number | boolean>;

/** The host's log, tagged with the handler and event id; fields follow as `name=value`. */
export const log: {
  trace(message: string, fields?: Fields): void;
  debug(message: string, fields?: Fields): void;
  info(message: string, fields?: Fields): void;
  warn(message: string, fields?: Fields): void;
  error(message: string, fields?: Fields): void;
};

/** Values the manifest sets for this handler (`capabilities.config`). */
export const config: {
  get(key: string): string | undefined;
};

/** A failed `kv` call: `store` is worth a retry, the others are not. */
export class KvError extends Error {
  readonly kind: 'denied' | 'too-large' | 'store';
}

/** This handler's own key-value store (`capabilities.kv = true`); calls throw KvError. */
export const kv: {
  get(key: string): Uint8Array | undefined;
  getText(key: string): string | undefined;
  set(key: string, value: string | Uint8Array): void;
  delete(key: string): void;
  /** Adds `delta` (default 1) to the integer at `key`, atomically; the new value. */
  increment(key: string, delta?: number): number;
};

/** A failed `publish` call. */
export class PublishError extends Error {
  readonly kind: 'denied' | 'too-large' | 'invalid';
}

export interface OutgoingEvent {
  /** CloudEvents `type`. */
  type: string;
  /** Bytes and strings are sent as they are; anything else as JSON. */
  data?: unknown;
  subject?: string;
  /** Default `/gridfn/handlers/<handler>`. */
  source?: string;
  /** Default `<event id>:<handler>:<n>`, the same on every retry. */
  id?: string;
  /** Default `application/json`. */
  dataContentType?: string;
}

/** Queues a CloudEvent; sent only if this call ends in success. Throws PublishError. */
export function publish(event: OutgoingEvent): void;
