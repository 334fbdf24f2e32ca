// Types for @gridfn/sdk/testing: run a handler under Node with stand-ins for the host.
import type { BatchHandler, Handler, Outcome } from './index.js';

export interface EventDescription {
  id?: string;
  type?: string;
  source?: string;
  subject?: string;
  time?: string;
  dataContentType?: string;
  dataVersion?: string;
  /** Bytes and strings are passed as they are; anything else as JSON. */
  data?: unknown;
  extensions?: Record<string, string>;
}

export interface RunOptions {
  handler?: string;
  attempt?: number;
  subscription?: string;
  replay?: boolean;
  /** The `capabilities.config` values; absent: not granted. */
  config?: Record<string, string>;
  /** true for an empty store, or a Map kept between runs; absent: denied. */
  kv?: boolean | Map<string, Uint8Array>;
  publish?: boolean;
  /** false: the handler's log is dropped, as with `log = false`. */
  log?: boolean;
  /** `allowed_outbound_hosts` entries, e.g. `https://api.example.com`. */
  allowedHosts?: string[];
  /** Answers the handler's allowed `fetch` calls. */
  server?: (request: Request) => Response | Promise<Response>;
}

export interface LogEntry {
  level: 'trace' | 'debug' | 'info' | 'warn' | 'error';
  message: string;
  fields: Record<string, string>;
}

export interface PublishedEvent {
  id: string;
  type: string;
  source: string;
  subject: string | undefined;
  dataContentType: string | undefined;
  /** Parsed when the content type is JSON, else text. */
  data: unknown;
}

export interface RunResult {
  outcome: Outcome;
  logs: LogEntry[];
  /** What gridfn would send: nothing unless the outcome is success. */
  published: PublishedEvent[];
  kv: Map<string, Uint8Array> | null;
}

export function run(handle: Handler, event?: EventDescription, options?: RunOptions): Promise<RunResult>;

export interface BatchRunResult {
  /** One per event, as gridfn reads them (an array of the wrong length is kept as it is). */
  outcomes: Outcome[];
  logs: LogEntry[];
  kv: Map<string, Uint8Array> | null;
}

/** Runs a batch handler on `events` (ids default to evt-1, evt-2, …); `publish` is never granted. */
export function runBatch(handleBatch: BatchHandler, events?: EventDescription[], options?: Omit<RunOptions, 'publish'>): Promise<BatchRunResult>;
export function allowedBy(entry: string, url: string): boolean;
