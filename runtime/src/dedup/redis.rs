//! A [`DedupStore`] in Redis, shared by every gridfn host behind one load balancer.
//!
//! # Layout
//!
//! One Redis string per (handler, event) pair, named `key_prefix + DedupKey::storage_key()`:
//!
//! * absent: never seen, or its record or lease has expired;
//! * `done`: the pair succeeded; it expires after the `ttl` given to `commit_all`;
//! * `rejected`: the pair was dead-lettered: done, except for a replay, which may run it again;
//! * `lease:<uuid>`: a host is running the pair right now. The value is the holder's lease token, a random
//!   one per [`RedisStore`] (so one per process; clones share it). It expires after the `lease_for` given
//!   to `begin`, so the lease of a host that crashed mid-run frees itself.
//! * `lease:<uuid>|R|<deadline>`: a replay is running a rejected pair. The rejection is kept in the
//!   value, and the key keeps the rejection's expiry: the lease ends at `<deadline>` (unix ms, Redis's
//!   clock) instead. For every delivery that is not a replay the pair is still rejected (done); when the
//!   replay is released, or its holder dies and the deadline passes, the pair is `rejected` again, so a
//!   replay that fails never turns a rejection into a free pair that a redelivery would run.
//!
//! The handlers' kv is in the same Redis, one string per key, named `key_prefix + "kv:" +`
//! [`crate::kv::scoped`]; `commit` writes a delivery's done records and its runs' kv writes in the same
//! script call, so they take effect together or not at all.
//!
//! Every operation is one round trip: one `EVALSHA` of a small Lua script, which Redis runs atomically.
//! After a Redis restart or failover has emptied the script cache, the first call of each script costs
//! one extra `SCRIPT LOAD`.
//!
//! # Durability
//!
//! `commit` returns once Redis has applied the write. Whether the record then survives a crash of Redis
//! depends on how Redis persists, which this store cannot change:
//!
//! * without persistence (or with RDB snapshots only) a Redis restart forgets every record, and events
//!   redelivered after that run again;
//! * with `appendonly yes` and `appendfsync everysec` (the usual setting) up to about one second of
//!   acknowledged commits can be lost when the Redis machine crashes;
//! * with `appendonly yes` and `appendfsync always`, Redis fsyncs the AOF before it replies, so a
//!   commit that returned `Ok` survives a crash of Redis. Use that where gridfn's 2xx must mean
//!   "never runs again".
//!
//! With replicas, a failover can also lose writes the old primary had not yet sent to the replica.
//!
//! # Failures
//!
//! Every Redis error, timeout or lost connection is a [`StoreError`] naming the (password-redacted) URL.
//! The connection is a `ConnectionManager`, which reconnects in the background after a lost connection;
//! calls made while Redis is unreachable fail within a few seconds instead of hanging.
//! A `begin` that timed out may still have taken the lease in Redis; since this store's own lease
//! counts as `Run` (see [`RedisStore::begin`]), the redelivery that follows still runs the pair
//! here, and otherwise the lease expires after `lease_for`.
//!
//! Only single Redis servers (with or without replicas) are supported: the scripts of `commit` and
//! `release` touch several keys, which Redis Cluster allows only within one hash slot.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, Script};

use super::{Begin, DedupKey, DedupStore, Done, StoreError};
use crate::kv::Write;

/// The value of a pair that is done. Lease tokens start with `lease:`, so never equal it.
const DONE: &str = "done";
/// The value of a pair done by a rejection.
const REJECTED: &str = "rejected";

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnection attempts after the first, per request that finds the connection lost.
const RECONNECT_RETRIES: usize = 2;
/// Longest expiry handed to Redis (about ten years); longer ones are cut to it.
const MAX_EXPIRY_MS: u64 = 10 * 365 * 24 * 60 * 60 * 1000;

/// KEYS[1] = the pair; ARGV = token, lease in ms, done marker, rejected
/// marker, "1" for a replay. Returns 0 (Done), 1 (Run) or 2 (Busy).
/// (`KEEPTTL` needs Redis 6.0.)
const BEGIN_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[3] then
  return 0
end
local replay = ARGV[5] == '1'
local lease_ms = tonumber(ARGV[2])
-- A replay leases a rejected pair: the rejection stays in the value and keeps its expiry.
local function lease_rejected()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('SET', KEYS[1], ARGV[1] .. '|R|' .. (now + lease_ms), 'KEEPTTL')
  local left = redis.call('PTTL', KEYS[1])
  if left >= 0 and left < lease_ms then
    redis.call('PEXPIRE', KEYS[1], lease_ms)
  end
  return 1
end
if v == ARGV[4] then
  if replay then
    return lease_rejected()
  end
  return 0
end
if v then
  local holder, deadline = string.match(v, '^(lease:[^|]*)|R|(%d+)$')
  if holder then
    if not replay then
      return 0
    end
    if holder == ARGV[1] then
      return lease_rejected()
    end
    local t = redis.call('TIME')
    if tonumber(deadline) <= tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) then
      return lease_rejected()
    end
    return 2
  end
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if v then
  return 2
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 2
";

/// KEYS = the n pairs, then each pair's kv keys in turn; ARGV = ttl in ms, done marker, rejected
/// marker, n, then per pair `d` (succeeded) or `r` (rejected), its number of kv writes, and each of
/// them as two values: `s` and the value, `x` and anything (delete), or `a` and the delta.
///
/// A pair already done or rejected keeps its record, and its writes are skipped (first record wins:
/// only a run whose lease ran out can find its pair recorded). The other pairs' writes are applied in
/// order, each remembered so that if an increment fails (no counter, overflow) every one is undone
/// and the call fails having changed nothing; then their records are written. Returns how many pairs
/// it recorded.
const COMMIT_LUA: &str = r"
local n = tonumber(ARGV[4])
local a, k = 5, n + 1
local fresh = {}
local undo = {}
local function fail(key, err)
  for u = #undo, 1, -1 do
    local key, old, delta = undo[u][1], undo[u][2], undo[u][3]
    if delta then
      redis.call('DECRBY', key, delta)
    elseif old then
      redis.call('SET', key, old)
    else
      redis.call('DEL', key)
    end
  end
  return redis.error_reply('kv key ' .. key .. ': ' .. tostring(err))
end
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  local writes = tonumber(ARGV[a + 1])
  local apply = v ~= ARGV[2] and v ~= ARGV[3]
  if apply then
    fresh[#fresh + 1] = { KEYS[i], ARGV[a] }
  end
  for j = 0, writes - 1 do
    local key, op, value = KEYS[k + j], ARGV[a + 2 + 2 * j], ARGV[a + 3 + 2 * j]
    if apply and op == 'a' then
      local added = redis.pcall('INCRBY', key, value)
      if type(added) == 'table' and added.err then
        return fail(key, added.err)
      end
      undo[#undo + 1] = { key, nil, value }
    elseif apply then
      undo[#undo + 1] = { key, redis.call('GET', key) }
      if op == 's' then
        redis.call('SET', key, value)
      else
        redis.call('DEL', key)
      end
    end
  end
  a = a + 2 + 2 * writes
  k = k + writes
end
for _, pair in ipairs(fresh) do
  local marker = ARGV[2]
  if pair[2] == 'r' then
    marker = ARGV[3]
  end
  redis.call('SET', pair[1], marker, 'PX', ARGV[1])
end
return #fresh
";

/// KEYS = the pairs; ARGV = token, rejected marker. Drops this store's
/// leases; a replay's lease on a rejected pair becomes the rejection again
/// (with the expiry it kept). Returns how many leases it ended.
const RELEASE_LUA: &str = r"
local n = 0
local replaying = ARGV[1] .. '|R|'
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v == ARGV[1] then
    redis.call('DEL', KEYS[i])
    n = n + 1
  elseif v and string.sub(v, 1, #replaying) == replaying then
    redis.call('SET', KEYS[i], ARGV[2], 'KEEPTTL')
    n = n + 1
  end
end
return n
";

static BEGIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(BEGIN_LUA));
static COMMIT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(COMMIT_LUA));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// The Redis dedup store. Cheap to clone; clones share the connection and the lease token.
#[derive(Clone)]
pub struct RedisStore {
    con: ConnectionManager,
    prefix: String,
    token: String,
    /// The URL for messages, without its password.
    shown_url: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown_url)
            .field("prefix", &self.prefix)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[user:password@]host[:port][/db]`, or `redis+unix://`),
    /// checks it answers `PING`, and loads the scripts. Every key this store writes starts with
    /// `key_prefix` (for example `gridfn:dedup:`); hosts that share records must use the same prefix.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, StoreError> {
        let (mut con, shown_url) = connection(url).await?;
        for script in [&*BEGIN_SCRIPT, &*COMMIT_SCRIPT, &*RELEASE_SCRIPT] {
            script
                .load_async(&mut con)
                .await
                .map_err(|e| StoreError(format!("redis at {shown_url}: cannot load script: {e}")))?;
        }
        let token = format!("lease:{}", uuid::Uuid::new_v4().simple());
        Ok(Self { con, prefix: key_prefix.to_owned(), token, shown_url })
    }

    /// This store's lease token: the value of the pairs it holds leases on.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Where the handlers' kv keys start: `key_prefix` + `kv:`.
    pub fn kv_prefix(&self) -> String {
        format!("{}kv:", self.prefix)
    }

    /// The Redis key of a pair: the prefix, then [`DedupKey::storage_key`].
    pub fn redis_key(&self, key: &DedupKey) -> String {
        let storage = key.storage_key();
        let mut out = String::with_capacity(self.prefix.len() + storage.len());
        out.push_str(&self.prefix);
        out.push_str(&storage);
        out
    }

    fn error(&self, what: &str, e: RedisError) -> StoreError {
        StoreError(format!("redis at {}: {what}: {e}", self.shown_url))
    }
}

#[async_trait::async_trait]
impl DedupStore for RedisStore {
    /// `Done` if the pair is done; `Run` if it was free (this store now holds a lease on it for
    /// `lease_for`) or already leased by this store (a local retry: the lease is renewed for
    /// `lease_for`); `Busy` if another store holds a live lease on it.
    async fn begin_as(&self, key: &DedupKey, lease_for: Duration, replay: bool) -> Result<Begin, StoreError> {
        let mut con = self.con.clone();
        let code: i64 = BEGIN_SCRIPT
            .key(self.redis_key(key))
            .arg(&self.token)
            .arg(expiry_ms(lease_for))
            .arg(DONE)
            .arg(REJECTED)
            .arg(if replay { "1" } else { "0" })
            .invoke_async(&mut con)
            .await
            .map_err(|e| self.error("begin", e))?;
        match code {
            0 => Ok(Begin::Done),
            1 => Ok(Begin::Run),
            2 => Ok(Begin::Busy),
            other => Err(StoreError(format!("redis at {}: begin: unexpected reply {other}", self.shown_url))),
        }
    }

    /// Side by side on the one multiplexed connection, which pipelines them.
    async fn begin_all(&self, keys: &[&DedupKey], lease_for: Duration, replay: bool) -> Vec<Result<Begin, StoreError>> {
        futures::future::join_all(keys.iter().map(|key| self.begin_as(key, lease_for, replay))).await
    }

    /// Marks every pair done (or rejected) for `ttl`, whoever holds its lease, with its kv writes, in
    /// one atomic script call; a pair already done or rejected is left as it is, its writes skipped.
    async fn record(&self, done: &[Done], ttl: Duration) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let mut invocation = COMMIT_SCRIPT.prepare_invoke();
        for pair in done {
            invocation.key(self.redis_key(&pair.key));
        }
        let kv_prefix = self.kv_prefix();
        for (key, _) in done.iter().flat_map(|pair| pair.writes.scoped()) {
            invocation.key(format!("{kv_prefix}{key}"));
        }
        invocation.arg(expiry_ms(ttl)).arg(DONE).arg(REJECTED).arg(done.len());
        for pair in done {
            invocation.arg(if pair.rejected { "r" } else { "d" }).arg(pair.writes.scoped().count());
            for (_, write) in pair.writes.scoped() {
                match write {
                    Write::Set(value) => invocation.arg("s").arg(value.as_slice()),
                    Write::Delete => invocation.arg("x").arg(""),
                    Write::Add(delta) => invocation.arg("a").arg(*delta),
                };
            }
        }
        let mut con = self.con.clone();
        let recorded: i64 = invocation.invoke_async(&mut con).await.map_err(|e| self.error("commit", e))?;
        if recorded < done.len() as i64 {
            tracing::info!(
                "{} of {} pairs were already recorded (by a run on another host after this one's lease ran out); their kv writes were dropped",
                done.len() as i64 - recorded,
                done.len()
            );
        }
        Ok(())
    }

    /// Drops the leases this store holds on the pairs (a replay's lease on a rejected pair turns back
    /// into the rejection); pairs that are done, free, or leased by another store are left as they are.
    async fn release(&self, keys: &[DedupKey]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut invocation = RELEASE_SCRIPT.prepare_invoke();
        for key in keys {
            invocation.key(self.redis_key(key));
        }
        invocation.arg(&self.token).arg(REJECTED);
        let mut con = self.con.clone();
        let _dropped: i64 = invocation.invoke_async(&mut con).await.map_err(|e| self.error("release", e))?;
        Ok(())
    }

    /// Nothing to do: Redis expires records and leases by itself.
    async fn sweep(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// `PING`, within the connection's response timeout.
    async fn ping(&self) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let _pong: String = ::redis::cmd("PING").query_async(&mut con).await.map_err(|e| self.error("PING", e))?;
        Ok(())
    }
}

/// A reconnecting connection to the Redis at `url` that has answered `PING`, with this store's timeouts
/// (so a lost Redis fails calls within seconds instead of hanging them), and the URL without its
/// password for messages. The kv capability's Redis store connects through it too.
pub(crate) async fn connection(url: &str) -> Result<(ConnectionManager, String), StoreError> {
    let shown_url = redact_url(url);
    let client = Client::open(url).map_err(|e| StoreError(format!("invalid redis URL {shown_url}: {e}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_max_delay(Duration::from_secs(1));
    let unreachable = |e: RedisError| StoreError(format!("cannot reach redis at {shown_url}: {e}"));
    let mut con = ConnectionManager::new_with_config(client, config).await.map_err(unreachable)?;
    let pong: String = ::redis::cmd("PING").query_async(&mut con).await.map_err(unreachable)?;
    if pong != "PONG" {
        return Err(StoreError(format!("redis at {shown_url} answered PING with {pong:?}")));
    }
    Ok((con, shown_url))
}

/// A duration as whole milliseconds for `PX`, rounded up, at least 1 (Redis refuses 0) and at most
/// [`MAX_EXPIRY_MS`] (Redis refuses expiries that overflow its clock).
fn expiry_ms(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).clamp(1, MAX_EXPIRY_MS)
}

/// The URL with its user info and any `pass=` query replaced by `***`, for messages and logs.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable URL>".to_owned();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) if query.contains("pass") => (rest, Some("***")),
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => format!("***@{}", &rest[at + 1..]),
        None => rest.to_owned(),
    };
    match query {
        Some(query) => format!("{scheme}://{rest}?{query}"),
        None => format!("{scheme}://{rest}"),
    }
}

/// A real Redis for tests, here and in [`crate::kv`]'s: the dedup store and the kv capability share it
/// in production, so they are tested against the same one.
#[cfg(test)]
pub(crate) mod test_server {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A Redis for one test: `GRIDFN_TEST_REDIS_URL` if set, else a `redis-server` of its own on a free
    /// loopback port, killed when this is dropped.
    pub(crate) struct TestRedis {
        pub url: String,
        child: Option<Child>,
    }

    impl Drop for TestRedis {
        fn drop(&mut self) {
            if let Some(child) = &mut self.child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    pub(crate) fn test_redis() -> TestRedis {
        if let Ok(url) = std::env::var("GRIDFN_TEST_REDIS_URL")
            && !url.is_empty()
        {
            return TestRedis { url, child: None };
        }
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let spawned = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) if e.kind() == ErrorKind::NotFound => panic!(
                    "these tests need a real Redis: `redis-server` is not on PATH \
                     (install it with `apt-get install redis-server`) or set GRIDFN_TEST_REDIS_URL"
                ),
                Err(e) => panic!("cannot start redis-server: {e}"),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken in between: try another
                }
                if answers_ping(port) {
                    return TestRedis { url: format!("redis://127.0.0.1:{port}"), child: Some(child) };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start on a loopback port in 5 tries");
    }

    fn answers_ping(port: u16) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::test_redis;
    use super::*;
    use crate::kv::{KvStore, KvWrites};
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    const LEASE: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(600);

    /// A fresh prefix, so tests sharing one Redis (GRIDFN_TEST_REDIS_URL) never see each other's keys.
    fn prefix(test: &str) -> String {
        format!("gridfn-test:{test}:{}:", uuid::Uuid::new_v4().simple())
    }

    fn key(handler: &str, source: &str, id: &str) -> DedupKey {
        DedupKey::new(handler, source, id)
    }

    async fn store(url: &str, prefix: &str) -> RedisStore {
        RedisStore::connect(url, prefix).await.unwrap()
    }

    async fn raw(url: &str) -> ::redis::aio::MultiplexedConnection {
        Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    async fn get(con: &mut ::redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
        ::redis::cmd("GET").arg(key).query_async(con).await.unwrap()
    }

    async fn pttl(con: &mut ::redis::aio::MultiplexedConnection, key: &str) -> i64 {
        ::redis::cmd("PTTL").arg(key).query_async(con).await.unwrap()
    }

    /// A TCP proxy in front of Redis that counts round trips (each time the client sends after the
    /// server has answered) and can cut every connection.
    struct Proxy {
        addr: SocketAddr,
        state: Arc<ProxyState>,
    }

    #[derive(Default)]
    struct ProxyState {
        turns: AtomicU64,
        down: AtomicBool,
        closed: AtomicBool,
        /// Both ends of every open connection, to cut them.
        conns: Mutex<Vec<(TcpStream, TcpStream)>>,
    }

    impl Proxy {
        fn start(upstream: SocketAddr) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let state = Arc::new(ProxyState::default());
            let st = state.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if st.closed.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if st.down.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(upstream) else { continue };
                    // Per connection: did the server speak last (or has nobody spoken yet)?
                    let server_spoke = Arc::new(Mutex::new(true));
                    st.conns.lock().unwrap().push((client.try_clone().unwrap(), server.try_clone().unwrap()));
                    Self::pump(
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        st.clone(),
                        server_spoke.clone(),
                        true,
                    );
                    Self::pump(server, client, st.clone(), server_spoke, false);
                }
            });
            Self { addr, state }
        }

        fn pump(mut from: TcpStream, mut to: TcpStream, st: Arc<ProxyState>, server_spoke: Arc<Mutex<bool>>, up: bool) {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    {
                        let mut spoke = server_spoke.lock().unwrap();
                        if up && *spoke {
                            st.turns.fetch_add(1, Ordering::SeqCst);
                        }
                        *spoke = !up;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
            });
        }

        fn turns(&self) -> u64 {
            self.state.turns.load(Ordering::SeqCst)
        }

        /// Down: cuts every open connection and refuses new ones. Up: proxies again.
        fn set_down(&self, down: bool) {
            self.state.down.store(down, Ordering::SeqCst);
            if down {
                for (c, s) in self.state.conns.lock().unwrap().drain(..) {
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }

        /// `url` with its host and port replaced by the proxy's.
        fn url_for(&self, url: &str) -> String {
            let (scheme, rest) = url.split_once("://").expect("redis URL");
            let end = rest.find('/').unwrap_or(rest.len());
            let at = rest[..end].rfind('@').map_or(0, |i| i + 1);
            format!("{scheme}://{}{}{}", &rest[..at], self.addr, &rest[end..])
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.state.closed.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
            self.set_down(true);
        }
    }

    /// The socket address of a `redis://` URL, for the proxy.
    fn upstream(url: &str) -> SocketAddr {
        let (_, rest) = url.split_once("://").expect("GRIDFN_TEST_REDIS_URL must be redis://host:port");
        let end = rest.find('/').unwrap_or(rest.len());
        let at = rest[..end].rfind('@').map_or(0, |i| i + 1);
        let host_port = &rest[at..end];
        let mut addrs = match host_port.to_socket_addrs() {
            Ok(addrs) => addrs,
            Err(_) => format!("{host_port}:6379").to_socket_addrs().expect("redis host"),
        };
        addrs.next().expect("redis host address")
    }

    #[tokio::test]
    async fn keeps_the_store_contract() {
        let redis = test_redis();
        let store = store(&redis.url, &prefix("contract")).await;
        crate::dedup::contract::check("redis", &store).await;
    }

    #[tokio::test]
    async fn done_is_remembered_and_other_pairs_are_other_pairs() {
        let redis = test_redis();
        let p = prefix("done");
        let s = store(&redis.url, &p).await;
        let k = key("h1", "/subscriptions/x", "evt-1");
        assert_eq!(s.begin(&k, LEASE).await.unwrap(), Begin::Run);
        s.commit(std::slice::from_ref(&k), TTL).await.unwrap();
        assert_eq!(s.begin(&k, LEASE).await.unwrap(), Begin::Done);
        assert_eq!(s.begin(&key("h2", "/subscriptions/x", "evt-1"), LEASE).await.unwrap(), Begin::Run);
        assert_eq!(s.begin(&key("h1", "/subscriptions/y", "evt-1"), LEASE).await.unwrap(), Begin::Run);
        assert_eq!(s.begin(&key("h1", "/subscriptions/x", "evt-2"), LEASE).await.unwrap(), Begin::Run);
        // Parts that would collide if simply joined are other pairs too.
        assert_eq!(s.begin(&key("h1", "/subscriptions/xevt", "-1"), LEASE).await.unwrap(), Begin::Run);
        // Another host sees the record.
        let other = store(&redis.url, &p).await;
        assert_eq!(other.begin(&k, LEASE).await.unwrap(), Begin::Done);
        // A release does not undo a commit.
        s.release(std::slice::from_ref(&k)).await.unwrap();
        assert_eq!(other.begin(&k, LEASE).await.unwrap(), Begin::Done);
        s.sweep().await.unwrap();
        assert_eq!(other.begin(&k, LEASE).await.unwrap(), Begin::Done);
    }

    #[tokio::test]
    async fn done_records_expire_after_their_ttl() {
        let redis = test_redis();
        let s = store(&redis.url, &prefix("ttl")).await;
        let k = key("h", "src", "1");
        assert_eq!(s.begin(&k, LEASE).await.unwrap(), Begin::Run);
        s.commit(std::slice::from_ref(&k), Duration::from_millis(1000)).await.unwrap();
        assert_eq!(s.begin(&k, LEASE).await.unwrap(), Begin::Done);
        let mut con = raw(&redis.url).await;
        let left = pttl(&mut con, &s.redis_key(&k)).await;
        assert!((1..=1000).contains(&left), "ttl left {left} ms");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(s.begin(&k, LEASE).await.unwrap(), Begin::Run);
    }

    /// The kv contract, and kv shared between hosts: a second host (its own connection, the same
    /// prefix) sees what the first recorded, and the values sit in Redis under `<prefix>kv:`.
    #[tokio::test]
    async fn kv_keeps_the_contract_and_is_shared_between_hosts() {
        let redis = test_redis();
        let p = prefix("kv");
        let (a, b) = (store(&redis.url, &p).await, store(&redis.url, &p).await);
        let kv_a = crate::kv::RedisKv::connect(&redis.url, &a.kv_prefix()).await.unwrap();
        crate::dedup::contract::check_kv("redis", &a, &kv_a).await;
        let kv_b = crate::kv::RedisKv::connect(&redis.url, &b.kv_prefix()).await.unwrap();
        let mut writes = KvWrites::new(Arc::from("h"));
        writes.set("k", b"from a".to_vec()).unwrap();
        assert_eq!(writes.increment(&kv_a, "n", 7).await.unwrap(), 7);
        a.record(&[Done { key: key("h", "src", "kv"), rejected: false, writes }], TTL).await.unwrap();
        assert_eq!(kv_b.get("h", "k").await.unwrap().as_deref(), Some(&b"from a"[..]));
        let mut con = raw(&redis.url).await;
        assert_eq!(get(&mut con, &format!("{p}kv:1:hn")).await.as_deref(), Some("7"));
        // b recording the same pair late adds nothing.
        let mut late = KvWrites::new(Arc::from("h"));
        late.increment(&kv_b, "n", 1).await.unwrap();
        b.record(&[Done { key: key("h", "src", "kv"), rejected: false, writes: late }], TTL).await.unwrap();
        assert_eq!(get(&mut con, &format!("{p}kv:1:hn")).await.as_deref(), Some("7"));
    }

    #[tokio::test]
    async fn two_hosts_busy_until_release_then_run() {
        let redis = test_redis();
        let p = prefix("release");
        let (a, b) = (store(&redis.url, &p).await, store(&redis.url, &p).await);
        assert_ne!(a.token(), b.token());
        let k = key("h", "src", "1");
        assert_eq!(a.begin(&k, LEASE).await.unwrap(), Begin::Run);
        for _ in 0..3 {
            assert_eq!(b.begin(&k, LEASE).await.unwrap(), Begin::Busy);
        }
        // The holder itself may begin again (a local retry), and that renews its lease.
        assert_eq!(a.begin(&k, Duration::from_secs(120)).await.unwrap(), Begin::Run);
        let mut con = raw(&redis.url).await;
        assert!(pttl(&mut con, &a.redis_key(&k)).await > 60_000);
        a.release(std::slice::from_ref(&k)).await.unwrap();
        assert_eq!(get(&mut con, &a.redis_key(&k)).await, None);
        assert_eq!(b.begin(&k, LEASE).await.unwrap(), Begin::Run);
        assert_eq!(a.begin(&k, LEASE).await.unwrap(), Begin::Busy);
    }

    #[tokio::test]
    async fn two_hosts_busy_until_commit_then_done() {
        let redis = test_redis();
        let p = prefix("commit");
        let (a, b) = (store(&redis.url, &p).await, store(&redis.url, &p).await);
        let k = key("h", "src", "1");
        assert_eq!(a.begin(&k, LEASE).await.unwrap(), Begin::Run);
        assert_eq!(b.begin(&k, LEASE).await.unwrap(), Begin::Busy);
        a.commit(std::slice::from_ref(&k), TTL).await.unwrap();
        assert_eq!(b.begin(&k, LEASE).await.unwrap(), Begin::Done);
        assert_eq!(a.begin(&k, LEASE).await.unwrap(), Begin::Done);
    }

    #[tokio::test]
    async fn a_crashed_holders_lease_expires() {
        let redis = test_redis();
        let p = prefix("crash");
        let k = key("h", "src", "1");
        let b = store(&redis.url, &p).await;
        let crashed = store(&redis.url, &p).await;
        assert_eq!(crashed.begin(&k, Duration::from_millis(1000)).await.unwrap(), Begin::Run);
        drop(crashed); // no release: the host died mid-run
        assert_eq!(b.begin(&k, LEASE).await.unwrap(), Begin::Busy);
        // gridfn polls while Busy; the lease frees itself after lease_for.
        let started = Instant::now();
        let outcome = loop {
            match b.begin(&k, LEASE).await.unwrap() {
                Begin::Busy if started.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other,
            }
        };
        assert_eq!(outcome, Begin::Run);
        assert!(started.elapsed() >= Duration::from_millis(500), "lease freed too early: {:?}", started.elapsed());
    }

    /// A replay's lease on a rejected pair keeps the rejection's expiry, is
    /// Busy for another host's replay while it lives, and turns back into
    /// the rejection when released.
    #[tokio::test]
    async fn a_replay_lease_keeps_the_rejection_for_other_hosts_and_after_release() {
        let redis = test_redis();
        let prefix = prefix("replay-lease");
        let (a, b) = (store(&redis.url, &prefix).await, store(&redis.url, &prefix).await);
        let pair = key("h", "/s", "rejected");
        assert_eq!(a.begin(&pair, LEASE).await.unwrap(), Begin::Run);
        a.commit_all(&[], std::slice::from_ref(&pair), Duration::from_secs(600)).await.unwrap();
        let mut con = raw(&redis.url).await;
        let name = a.redis_key(&pair);
        let ttl_before = pttl(&mut con, &name).await;

        assert_eq!(a.begin_as(&pair, LEASE, true).await.unwrap(), Begin::Run);
        let leased = get(&mut con, &name).await.unwrap();
        assert!(leased.starts_with(&format!("{}|R|", a.token())), "{leased}");
        assert!(pttl(&mut con, &name).await > LEASE.as_millis() as i64, "the rejection's expiry, not the lease's");
        assert_eq!(b.begin_as(&pair, LEASE, true).await.unwrap(), Begin::Busy, "another host's replay waits");
        assert_eq!(b.begin(&pair, LEASE).await.unwrap(), Begin::Done, "a redelivery elsewhere: still rejected");
        b.release(std::slice::from_ref(&pair)).await.unwrap();
        assert!(get(&mut con, &name).await.unwrap().starts_with("lease:"), "a non-holder's release changes nothing");

        a.release(std::slice::from_ref(&pair)).await.unwrap();
        assert_eq!(get(&mut con, &name).await.as_deref(), Some(REJECTED));
        let ttl_after = pttl(&mut con, &name).await;
        assert!(ttl_after <= ttl_before && ttl_after > ttl_before - 60_000, "{ttl_before} then {ttl_after}");
        assert_eq!(b.begin_as(&pair, LEASE, true).await.unwrap(), Begin::Run, "then another host may replay it");
        b.commit(std::slice::from_ref(&pair), Duration::from_secs(600)).await.unwrap();
        assert_eq!(a.begin_as(&pair, LEASE, true).await.unwrap(), Begin::Done, "a replay's success is for good");
    }

    #[tokio::test]
    async fn release_by_a_non_holder_keeps_the_lease() {
        let redis = test_redis();
        let p = prefix("nonholder");
        let (a, b) = (store(&redis.url, &p).await, store(&redis.url, &p).await);
        let (k1, k2) = (key("h", "src", "1"), key("h", "src", "2"));
        assert_eq!(a.begin(&k1, LEASE).await.unwrap(), Begin::Run);
        assert_eq!(b.begin(&k2, LEASE).await.unwrap(), Begin::Run);
        // b releases both: only its own lease goes.
        b.release(&[k1.clone(), k2.clone(), key("h", "src", "never-seen")]).await.unwrap();
        let mut con = raw(&redis.url).await;
        assert_eq!(get(&mut con, &a.redis_key(&k1)).await.as_deref(), Some(a.token()));
        assert_eq!(get(&mut con, &a.redis_key(&k2)).await, None);
        assert_eq!(b.begin(&k1, LEASE).await.unwrap(), Begin::Busy);
        assert_eq!(a.begin(&k2, LEASE).await.unwrap(), Begin::Run);
    }

    #[tokio::test]
    async fn keys_use_the_prefix_and_prefixes_do_not_share() {
        let redis = test_redis();
        let p = prefix("layout");
        let s = store(&redis.url, &p).await;
        let k = key("handler", "source", "id");
        assert_eq!(s.redis_key(&k), format!("{p}{}", k.storage_key()));
        assert_eq!(s.begin(&k, LEASE).await.unwrap(), Begin::Run);
        let mut con = raw(&redis.url).await;
        let keys: Vec<String> = ::redis::cmd("KEYS").arg(format!("{p}*")).query_async(&mut con).await.unwrap();
        assert_eq!(keys, vec![format!("{p}{}", k.storage_key())]);
        assert_eq!(get(&mut con, &keys[0]).await.as_deref(), Some(s.token()));
        assert!(s.token().starts_with("lease:"));
        let left = pttl(&mut con, &keys[0]).await;
        assert!(left > 20_000 && left <= 30_000, "lease ttl {left} ms");
        s.commit(std::slice::from_ref(&k), TTL).await.unwrap();
        assert_eq!(get(&mut con, &keys[0]).await.as_deref(), Some(DONE));
        // A store with another prefix keeps other records.
        let elsewhere = store(&redis.url, &prefix("layout-other")).await;
        assert_eq!(elsewhere.begin(&k, LEASE).await.unwrap(), Begin::Run);
    }

    #[tokio::test]
    async fn commit_of_100_keys_is_one_round_trip() {
        let redis = test_redis();
        let proxy = Proxy::start(upstream(&redis.url));
        let p = prefix("roundtrip");
        let s = store(&proxy.url_for(&redis.url), &p).await;
        let keys: Vec<DedupKey> = (0..100).map(|i| key("h", "src", &format!("evt-{i}"))).collect();
        for k in &keys {
            assert_eq!(s.begin(k, LEASE).await.unwrap(), Begin::Run);
        }
        let before = proxy.turns();
        let started = Instant::now();
        s.commit(&keys, TTL).await.unwrap();
        let took = started.elapsed();
        assert_eq!(proxy.turns() - before, 1, "commit took more than one round trip");
        assert!(took < Duration::from_secs(1), "commit of 100 keys took {took:?}");
        let before = proxy.turns();
        s.release(&keys).await.unwrap();
        assert_eq!(proxy.turns() - before, 1, "release took more than one round trip");
        let before = proxy.turns();
        s.commit(&[], TTL).await.unwrap();
        s.release(&[]).await.unwrap();
        assert_eq!(proxy.turns() - before, 0, "empty batches need no round trip");
        let mut con = raw(&redis.url).await;
        for k in &keys {
            assert_eq!(get(&mut con, &s.redis_key(k)).await.as_deref(), Some(DONE));
            assert!(pttl(&mut con, &s.redis_key(k)).await > 500_000);
        }
    }

    #[tokio::test]
    async fn connection_errors_are_store_errors() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("redis://:hunter2@127.0.0.1:{port}");
        let started = Instant::now();
        let err = RedisStore::connect(&url, "p:").await.unwrap_err().0;
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(!err.contains("hunter2"), "password leaked: {err}");
        assert!(started.elapsed() < Duration::from_secs(10), "connect took {:?}", started.elapsed());
        let err = RedisStore::connect("not a url", "p:").await.unwrap_err().0;
        assert!(err.contains("invalid redis URL"), "{err}");
    }

    #[tokio::test]
    async fn a_lost_connection_is_an_error_then_reconnects() {
        let redis = test_redis();
        let proxy = Proxy::start(upstream(&redis.url));
        let s = store(&proxy.url_for(&redis.url), &prefix("lost")).await;
        let k = key("h", "src", "1");
        assert_eq!(s.begin(&k, LEASE).await.unwrap(), Begin::Run);
        proxy.set_down(true);
        let started = Instant::now();
        let err = s.begin(&k, LEASE).await.unwrap_err().0;
        assert!(err.contains(&proxy.addr.to_string()), "{err}");
        assert!(s.commit(std::slice::from_ref(&k), TTL).await.is_err());
        assert!(s.release(std::slice::from_ref(&k)).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(15), "errors took {:?}", started.elapsed());
        proxy.set_down(false);
        let deadline = Instant::now() + Duration::from_secs(15);
        let outcome = loop {
            match s.begin(&k, LEASE).await {
                Ok(outcome) => break outcome,
                Err(e) if Instant::now() > deadline => panic!("never reconnected: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        assert_eq!(outcome, Begin::Run, "its own lease is still its own");
    }

    /// Many hosts race `begin` on the same keys: each key runs once in total.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_hosts_run_each_key_once() {
        let redis = test_redis();
        let p = prefix("race-hosts");
        let keys: Arc<Vec<DedupKey>> = Arc::new((0..200).map(|i| key("h", "src", &format!("evt-{i}"))).collect());
        let mut tasks = Vec::new();
        for host in 0..16 {
            let s = store(&redis.url, &p).await;
            let keys = keys.clone();
            tasks.push(tokio::spawn(async move {
                let mut runs = Vec::new();
                for i in 0..keys.len() {
                    let k = &keys[(i + host * 13) % keys.len()];
                    if s.begin(k, LEASE).await.unwrap() == Begin::Run {
                        runs.push(k.id.to_string());
                    }
                }
                runs
            }));
        }
        let mut count: HashMap<String, usize> = HashMap::new();
        for task in tasks {
            for id in task.await.unwrap() {
                *count.entry(id).or_default() += 1;
            }
        }
        assert_eq!(count.len(), 200);
        assert!(count.values().all(|&n| n == 1), "{count:?}");
    }

    /// Two hosts with many tasks each, as gridfn runs them: copies on one host are serialised in-process
    /// (modelled by a per-key local lock), each Run is committed, and Busy is polled until Done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hosts_with_many_tasks_run_each_key_once() {
        let redis = test_redis();
        let p = prefix("race-tasks");
        let keys: Arc<Vec<DedupKey>> = Arc::new((0..200).map(|i| key("h", "src", &format!("evt-{i}"))).collect());
        let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let mut tasks = Vec::new();
        for host in 0..2 {
            let s = store(&redis.url, &p).await;
            let local: Arc<Vec<tokio::sync::Mutex<()>>> =
                Arc::new((0..keys.len()).map(|_| tokio::sync::Mutex::new(())).collect());
            for task in 0..8 {
                let (s, keys, local, runs) = (s.clone(), keys.clone(), local.clone(), runs.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..keys.len() {
                        let at = (i + task * 25 + host * 7) % keys.len();
                        let k = &keys[at];
                        let _serialised = local[at].lock().await;
                        let deadline = Instant::now() + Duration::from_secs(20);
                        loop {
                            match s.begin(k, LEASE).await.unwrap() {
                                Begin::Run => {
                                    *runs.lock().unwrap().entry(k.id.to_string()).or_default() += 1;
                                    tokio::task::yield_now().await;
                                    s.commit(std::slice::from_ref(k), TTL).await.unwrap();
                                    break;
                                }
                                Begin::Done => break,
                                Begin::Busy => {
                                    assert!(Instant::now() < deadline, "{} stayed busy", k.id);
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                            }
                        }
                    }
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        let runs = runs.lock().unwrap();
        assert_eq!(runs.len(), 200);
        assert!(runs.values().all(|&n| n == 1), "{runs:?}");
    }

    #[test]
    fn expiries_round_up_and_stay_in_range() {
        assert_eq!(expiry_ms(Duration::ZERO), 1);
        assert_eq!(expiry_ms(Duration::from_micros(1500)), 2);
        assert_eq!(expiry_ms(Duration::from_secs(30)), 30_000);
        assert_eq!(expiry_ms(Duration::MAX), MAX_EXPIRY_MS);
    }

    #[test]
    fn urls_lose_their_passwords_in_messages() {
        assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact_url("redis://user:secret@host:6380/1"), "redis://***@host:6380/1");
        assert_eq!(redact_url("rediss://:p%40ss@host"), "rediss://***@host");
        assert_eq!(redact_url("redis+unix:///run/redis.sock?db=1&pass=secret"), "redis+unix:///run/redis.sock?***");
        assert_eq!(redact_url("nonsense"), "<unparsable URL>");
    }
}
