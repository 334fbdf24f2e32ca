-- wrk script for tests/bench/run: Event Grid schema deliveries of BATCH
-- Microsoft.Storage.BlobCreated events per request, every event id unique.
--
--   wrk -t1 -c32 -d10s --latency -s eventgrid.lua URL -- BATCH PREFIX [PACE_MS]
--
-- BATCH   events per request (1, 10, 100)
-- PREFIX  unique per wrk invocation (system, batch, phase, run nonce); each
--         thread adds its own index, each request a counter, each event its
--         position: ids never repeat within or across invocations.
-- PACE_MS optional: each connection waits this many ms before its next
--         request (wrk's delay()), to measure latency below the maximum rate.
--
-- At the end it prints one line "BENCHJSON {...}" with the exact counts and
-- latency percentiles (microseconds), which tests/bench/bench.py parses.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

local batch, prefix, pace = 1, "x", 0
local head, tail = "", ""

function init(args)
   batch = tonumber(args[1] or "1")
   prefix = (args[2] or "bench") .. "-t" .. tostring(tid or 0)
   pace = tonumber(args[3] or "0")
   if pace <= 0 then
      delay = nil -- wrk looks for delay() after init: no timer per request unless pacing
   end
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["aeg-event-type"] = "Notification"
   wrk.headers["aeg-subscription-name"] = "BENCH"
   wrk.headers["aeg-delivery-count"] = "0"
end

-- One event: everything but the id is fixed text (a real BlobCreated body,
-- ~800 bytes, like tests/vectors/eventgrid/StorageBlobCreatedEvent.json).
local part1 = '{"topic":"/subscriptions/319a9601-1ec0-0000-aebc-8fe82724c81e/resourceGroups/benchrg/providers/Microsoft.Storage/storageAccounts/benchaccount",' ..
   '"subject":"/blobServices/default/containers/uploads/blobs/'
local part2 = '.json","eventType":"Microsoft.Storage.BlobCreated","eventTime":"2025-11-21T09:57:26.005121Z","id":"'
local part3 = '","data":{"api":"PutBlockList","clientRequestId":"799304a4-bbc5-45b6-9849-ec2c66be800a",' ..
   '"requestId":"602a88ef-0001-00e6-1233-164607000000","eTag":"0x8D4E44A24ABE7F1","contentType":"application/json",' ..
   '"contentLength":524288,"blobType":"BlockBlob","url":"https://benchaccount.blob.core.windows.net/uploads/'
local part4 = '.json","sequencer":"00000000000000EB000000000000C65A","storageDiagnostics":{"batchId":"b68529f3-68cd-4744-baa4-3c0498ec19f0"}},' ..
   '"dataVersion":"","metadataVersion":"1"}'

function request()
   counter = counter + 1
   local parts = {}
   local n = 0
   for i = 1, batch do
      local id = prefix .. "-" .. counter .. "-" .. i
      n = n + 1; parts[n] = part1 .. id .. part2 .. id .. part3 .. id .. part4
   end
   return wrk.format(nil, nil, nil, "[" .. table.concat(parts, ",") .. "]")
end

function delay()
   return pace
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
      '"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
      summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
