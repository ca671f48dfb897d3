// node-redis 4 (Debian node-redis), unchanged, against the server at HOST:PORT, doing what
// express-session's connect-redis store does: SET with EX, GET, EXPIRE (touch), SCAN and
// MGET (all sessions), DEL (destroy); then a MULTI/EXEC, and pub/sub. Prints what each step saw (the
// test compares the transcript with redis-server's); exits non-zero on a wrong one.
// Usage: node node_redis.js HOST PORT
const { createClient } = require("redis");
const assert = require("assert");

async function main(host, port) {
  const client = createClient({ url: `redis://${host}:${port}/5` });
  client.on("error", (err) => { console.error(err); process.exit(1); });
  await client.connect();
  await client.flushDb();
  const prefix = "sess:";
  const session = (n) => JSON.stringify({ cookie: { maxAge: 86400000 }, user: `user${n}` });
  for (let n = 0; n < 25; n++) {
    assert.strictEqual(await client.set(prefix + n, session(n), { EX: 86400 }), "OK");
  }
  assert.strictEqual(await client.get(prefix + 7), session(7));
  assert.strictEqual(await client.expire(prefix + 7, 3600), true);
  const ttl = await client.ttl(prefix + 7);
  assert.ok(ttl > 3590 && ttl <= 3600, `ttl ${ttl}`);
  const keys = [];
  for await (const key of client.scanIterator({ MATCH: prefix + "*", COUNT: 10 })) {
    keys.push(key);
  }
  keys.sort();
  assert.strictEqual(keys.length, 25);
  const all = await client.mGet(keys);
  assert.ok(all.every((value, i) => value === session(Number(keys[i].slice(prefix.length)))));
  assert.strictEqual(await client.del(prefix + 3), 1);
  assert.strictEqual(await client.get(prefix + 3), null);
  const [set, incr, got] = await client.multi().set("m", "1").incr("m").get("m").exec();
  assert.deepStrictEqual([set, incr, got], ["OK", 2, "2"]);
  console.log(`sessions ${keys.length}, mget ${all.length}, multi ${JSON.stringify([set, incr, got])}`);
  // Pub/sub on a second connection, as socket.io's Redis adapter and session-change
  // broadcasts use it: a channel and a pattern, then unsubscribing.
  const subscriber = client.duplicate();
  subscriber.on("error", (err) => { console.error(err); process.exit(1); });
  await subscriber.connect();
  const heard = [];
  await subscriber.subscribe("session-events", (message, channel) => heard.push(`${channel}:${message}`));
  await subscriber.pSubscribe("user:*", (message, channel) => heard.push(`${channel}:${message}`));
  assert.strictEqual(await client.publish("session-events", "created"), 1);
  assert.strictEqual(await client.publish("user:7", "login"), 1);
  assert.strictEqual(await client.publish("nobody", "x"), 0);
  for (let i = 0; i < 50 && heard.length < 2; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.deepStrictEqual(heard, ["session-events:created", "user:7:login"]);
  await subscriber.unsubscribe("session-events");
  await subscriber.pUnsubscribe("user:*");
  assert.strictEqual(await client.publish("session-events", "again"), 0);
  console.log(`pubsub ${JSON.stringify(heard)}`);
  await subscriber.quit();
  console.log("node-redis: all checks passed");
  await client.quit();
}

main(process.argv[2], process.argv[3]).catch((err) => { console.error(err); process.exit(1); });
