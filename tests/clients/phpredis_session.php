<?php
// phpredis' native session handler (Debian php-redis), unchanged, against the server at
// HOST:PORT, database 2: a session written, read back by a second request, its id changed
// with session_regenerate_id(true), then destroyed. Prints what each step saw (the test
// compares the transcript with redis-server's) and exits non-zero on a wrong one.
// Usage: php phpredis_session.php HOST PORT
[$host, $port] = [$argv[1], $argv[2]];
ini_set('session.save_handler', 'redis');
ini_set('session.save_path', "tcp://$host:$port?database=2");
ini_set('session.use_cookies', '0');
ini_set('session.use_strict_mode', '0');
ini_set('session.gc_maxlifetime', '600');
ini_set('session.cache_limiter', '');
// Output waits until the end: none may come before a session starts.
ob_start();

function check($ok, $what) {
    if (!$ok) { fwrite(STDERR, "failed: $what\n"); exit(1); }
}

$redis = new Redis();
$redis->connect($host, (int)$port);
$redis->select(2);
$redis->flushDB();

// Request 1: a new session.
session_id('phpsession0001');
session_start();
$_SESSION['counter'] = 1;
$_SESSION['user'] = 'ada';
session_write_close();
$stored = $redis->get('PHPREDIS_SESSION:phpsession0001');
check($stored !== false, 'the session is stored under PHPREDIS_SESSION:<id>');
$ttl = $redis->ttl('PHPREDIS_SESSION:phpsession0001');
check($ttl > 590 && $ttl <= 600, "its TTL is gc_maxlifetime ($ttl)");
echo "stored: $stored\n";

// Request 2: the same id reads it back and writes it again.
session_id('phpsession0001');
session_start();
check($_SESSION['counter'] === 1 && $_SESSION['user'] === 'ada', 'read back');
$_SESSION['counter']++;
session_write_close();

// Request 3: login changes the id and deletes the old session.
session_id('phpsession0001');
session_start();
check($_SESSION['counter'] === 2, 'second write kept');
session_regenerate_id(true);
$new = session_id();
check($new !== 'phpsession0001', 'a new id');
session_write_close();
check($redis->exists('PHPREDIS_SESSION:phpsession0001') === 0, 'the old id is gone');
check($redis->exists("PHPREDIS_SESSION:$new") === 1, 'the new id holds the session');
echo "regenerated: " . $redis->get("PHPREDIS_SESSION:$new") . "\n";

// Request 4: logout destroys it.
session_id($new);
session_start();
check($_SESSION['user'] === 'ada', 'read under the new id');
session_destroy();
check($redis->exists("PHPREDIS_SESSION:$new") === 0, 'destroyed');
echo "phpredis: all checks passed\n";
