<?php
// phpredis' session handler with locking (redis.session.locking_enabled=1, Debian
// php-redis), unchanged, against the server at HOST:PORT: two requests in a row on one
// session must neither wait for the lock nor lose a write (the lock is released with
// EVAL), and a request while another holds the lock must wait for it. Prints what each
// request saw (the test compares the transcript with redis-server's).
// Usage: php phpredis_locking.php HOST PORT
[$host, $port] = [$argv[1], $argv[2]];
ini_set('session.save_handler', 'redis');
ini_set('session.save_path', "tcp://$host:$port?database=3");
ini_set('session.use_cookies', '0');
ini_set('session.use_strict_mode', '0');
ini_set('session.gc_maxlifetime', '600');
ini_set('session.cache_limiter', '');
ini_set('redis.session.locking_enabled', '1');
ini_set('redis.session.lock_retries', '50');
ini_set('redis.session.lock_wait_time', '20000');
ob_start();

function check($ok, $what) {
    if (!$ok) { fwrite(STDERR, "failed: $what\n"); exit(1); }
}

$redis = new Redis();
$redis->connect($host, (int)$port);
$redis->select(3);
$redis->flushDB();
$redis->script('flush');

$key = 'PHPREDIS_SESSION:lockedsession01';
for ($request = 1; $request <= 3; $request++) {
    $started = microtime(true);
    session_id('lockedsession01');
    session_start();
    $_SESSION['counter'] = ($_SESSION['counter'] ?? 0) + 1;
    session_write_close();
    $took = microtime(true) - $started;
    check($took < 0.5, "request $request waited for the lock ({$took}s)");
    check($redis->exists("{$key}_LOCK") === 0, "request $request released its lock");
    echo "request $request: counter {$_SESSION['counter']}\n";
}
check($_SESSION['counter'] === 3, 'no write lost');

// Another process holds the lock: the request waits for it and then gets it.
$redis->set("{$key}_LOCK", 'web01|4242', ['nx', 'px' => 300]);
$started = microtime(true);
session_id('lockedsession01');
session_start();
$waited = microtime(true) - $started;
$_SESSION['counter']++;
session_write_close();
check($waited >= 0.2, "the request waited for the held lock ({$waited}s)");
echo "after a held lock: counter {$_SESSION['counter']}\n";
check($_SESSION['counter'] === 4, 'the write after the wait kept');
ob_end_flush();
echo "phpredis locking: all checks passed\n";
