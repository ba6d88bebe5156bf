// Paced loopback load, one scenario: node paced.mjs SPEC_FILE (a JSON file)
// SPEC: {url, method, seconds, connections, rate, headers?}
// Sends `rate` requests per second at even intervals over at most `connections` keep-alive
// connections, whatever the server's answers do (an open loop, like wrk2). autocannon keeps
// each connection busy back to back (a closed loop): at saturation that measures the queue its
// own connections build (mean latency = connections / throughput), and its rate option sends
// each second's quota in a burst. Here latency counts from when a request was due, not from
// when a connection was free to send it, so a server falling behind shows as latency (no
// coordinated omission).
import fs from 'node:fs';
import http from 'node:http';

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const target = new URL(spec.url);
const agent = new http.Agent({ keepAlive: true, maxSockets: spec.connections });
const interval = 1000 / spec.rate;
const latencies = [];
let ok = 0;
let bad = 0;
let sent = 0;

function send(due) {
  const req = http.request(
    { agent, host: target.hostname, port: target.port, path: target.pathname + target.search,
      method: spec.method, headers: spec.headers || {} },
    (res) => {
      res.resume();
      res.on('end', () => {
        latencies.push(performance.now() - due);
        if (res.statusCode >= 200 && res.statusCode < 300) ok++; else bad++;
      });
    },
  );
  req.on('error', () => { bad++; });
  req.end();
}

const start = performance.now();
const end = start + spec.seconds * 1000;
await new Promise((resolve) => {
  const tick = () => {
    const now = performance.now();
    // Every request due by now goes out now, stamped with when it was due.
    while (start + sent * interval <= Math.min(now, end)) {
      send(start + sent * interval);
      sent++;
    }
    if (now < end) setTimeout(tick, Math.max(0, Math.min(1, start + sent * interval - now)));
    else resolve();
  };
  tick();
});
// Let the last answers arrive (bounded).
const deadline = performance.now() + 5000;
while (ok + bad < sent && performance.now() < deadline) await new Promise((r) => setTimeout(r, 5));
agent.destroy();
latencies.sort((a, b) => a - b);
const pick = (q) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] : null);
const round = (x) => (x === null ? null : Math.round(x * 100) / 100);
console.log(JSON.stringify({
  rate: spec.rate, connections: spec.connections, rps: ok / spec.seconds,
  p50: round(pick(0.5)), p90: round(pick(0.9)), p99: round(pick(0.99)), max: round(latencies.at(-1) ?? null),
  ok, bad: sent - ok, total: sent, // bad: every request sent that got no 2xx, answered or not
}));
