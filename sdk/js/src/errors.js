// The errors a capability call throws. A handler tells them apart by `kind`
// (the WIT variant's case), e.g. to ignore `denied` and retry on `store`.

/** A `kv` call failed: `denied` (not granted), `too-large` or `store` (worth a retry). */
export class KvError extends Error {
  constructor(kind, detail) {
    super(detail ? `kv ${kind}: ${detail}` : `kv ${kind}`);
    this.name = 'KvError';
    this.kind = kind;
  }
}

/** A `publish` call failed: `denied` (not granted), `too-large` or `invalid`. */
export class PublishError extends Error {
  constructor(kind, detail) {
    super(detail ? `publish ${kind}: ${detail}` : `publish ${kind}`);
    this.name = 'PublishError';
    this.kind = kind;
  }
}
