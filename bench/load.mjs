// Bounded loopback load, one scenario: node load.mjs SPEC_FILE (a JSON file)
// SPEC: {url, method, seconds, connections, headers?, body?, bodies?: [..]}; with `bodies`, each
// request takes the next one (single-use tokens). The run lasts `seconds` either way, so its
// req/s compares with the other scenarios'; were the bodies used up, the requests after them
// go without a body and count as errors.
// SPEC.settle (seconds, default 0): load that long first and count req/s only over the `seconds`
// after it. For slow requests at high concurrency (logins: 8 argon2id hashes share 2 cores, so
// the first answers come after ~0.7 s) the filling of the pipeline is not the server's rate.
import autocannon from 'autocannon';

import fs from 'node:fs';

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const options = {
  url: spec.url,
  method: spec.method,
  duration: (spec.settle || 0) + spec.seconds,
  connections: spec.connections,
  headers: spec.headers || {},
  body: spec.body,
};
if (spec.bodies) {
  let next = 0;
  options.requests = [{ setupRequest: (req) => ({ ...req, body: spec.bodies[next++] ?? '' }) }];
}
const settledAt = Date.now() + (spec.settle || 0) * 1000;
let settledOk = 0;
const run = autocannon(options);
run.on('response', (client, status) => {
  if (status >= 200 && status < 300 && Date.now() >= settledAt) settledOk++;
});
const r = await run;
console.log(JSON.stringify({
  rps: spec.settle ? settledOk / spec.seconds : r.requests.average, p50: r.latency.p50, p99: r.latency.p99,
  ok: r['2xx'], bad: r.non2xx + r.errors + r.timeouts, total: r.requests.total,
}));
