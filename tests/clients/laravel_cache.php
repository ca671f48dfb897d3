<?php
// Laravel's Redis cache store and its locks (Debian's Illuminate\Cache and
// Illuminate\Redis with phpredis), used standalone and unchanged against the server at
// HOST:PORT: put/get/add/increment/many/forget, then Cache::lock()->block(), whose release
// is an EVAL, and a lock held by another owner. Prints what each step saw (the test
// compares the transcript with redis-server's); exits non-zero on a wrong one.
// Usage: php laravel_cache.php HOST PORT
require '/usr/share/php/Illuminate/Cache/autoload.php';
require '/usr/share/php/Illuminate/Redis/autoload.php';
require '/usr/share/php/Illuminate/Container/autoload.php';

use Illuminate\Cache\RedisStore;
use Illuminate\Cache\Repository;
use Illuminate\Container\Container;
use Illuminate\Redis\RedisManager;

[$host, $port] = [$argv[1], (int)$argv[2]];

function check($ok, $what) {
    if (!$ok) { fwrite(STDERR, "failed: $what\n"); exit(1); }
}

$redis = new RedisManager(new Container(), 'phpredis', [
    'options' => ['prefix' => 'laravel_database_'],
    'default' => ['host' => $host, 'port' => $port, 'database' => 1],
]);
$redis->connection()->client()->flushDB();
$cache = new Repository(new RedisStore($redis, 'laravel_cache:', 'default'));

check($cache->put('user:1', ['name' => 'ada', 'visits' => 3], 600), 'put');
check($cache->get('user:1') === ['name' => 'ada', 'visits' => 3], 'get');
check($cache->add('user:1', 'other', 600) === false, 'add of an existing key');
check($cache->add('user:2', 'bob', 600) === true, 'add of a new key');
check($cache->increment('hits') === 1 && $cache->increment('hits', 4) === 5, 'increment');
check($cache->putMany(['a' => 1, 'b' => 2], 600), 'putMany');
check($cache->many(['a', 'b', 'none']) === ['a' => '1', 'b' => '2', 'none' => null], 'many (numbers are kept as text)');
check($cache->forget('a') && $cache->get('a') === null, 'forget');
$ttl = $redis->connection()->client()->ttl('laravel_cache::user:1');
check($ttl > 590 && $ttl <= 600, "ttl ($ttl)");
echo "cache: user:1 " . json_encode($cache->get('user:1')) . ", hits " . $cache->get('hits') . "\n";

// Cache::lock()->block(): acquired, the callback runs, released by the Lua script.
$ran = $cache->lock('report', 10)->block(2, function () {
    return 'generated';
});
check($ran === 'generated', 'block() ran the callback');
check($cache->lock('report', 10)->get(), 'the lock was released, so it can be had again');
check($cache->lock('report', 10)->get() === false, 'a held lock cannot be had');
$mine = $cache->lock('nightly', 10, 'owner-1');
check($mine->get(), 'owner-1 takes nightly');
check($cache->restoreLock('nightly', 'owner-2')->release() === false, 'another owner cannot release it');
check($mine->release() === true, 'its owner releases it');
check($cache->lock('nightly', 10)->get(), 'nightly is free again');
echo "locks: block " . $ran . ", release by its owner only\n";
echo "laravel cache: all checks passed\n";
