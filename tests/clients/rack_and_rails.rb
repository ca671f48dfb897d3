# Rack::Session::Redis (Debian ruby-redis-rack) and Rails' ActiveSupport::Cache::RedisCacheStore
# (Debian ruby-activesupport), unchanged, against the server at HOST:PORT. Prints what each
# step saw (the test compares the transcript with redis-server's); fails on a wrong one.
# Usage: ruby rack_and_rails.rb HOST PORT
require "rack"
require "rack/mock"
require "rack/session/redis"
require "active_support"
require "active_support/cache"
require "active_support/cache/redis_cache_store"

host, port = ARGV[0], ARGV[1]

def check(ok, what)
  abort("failed: #{what}") unless ok
end

# A Rack app that counts a user's requests in the session, behind the Redis session store
# in database 3.
counter = lambda do |env|
  session = env["rack.session"]
  session["count"] = (session["count"] || 0) + 1
  [200, { "content-type" => "text/plain" }, [session["count"].to_s]]
end
app = Rack::Session::Redis.new(counter, redis_server: "redis://#{host}:#{port}/3/rack:session", expire_after: 600)
request = Rack::MockRequest.new(app)
first = request.get("/")
cookie = first["Set-Cookie"].split(";").first
check(first.body == "1", "a new session counts 1")
second = request.get("/", "HTTP_COOKIE" => cookie)
third = request.get("/", "HTTP_COOKIE" => cookie)
check(second.body == "2" && third.body == "3", "the session carries on (#{second.body}, #{third.body})")
stranger = request.get("/")
check(stranger.body == "1", "another user starts anew")
puts "rack: counts #{first.body} #{second.body} #{third.body}, another user #{stranger.body}"

# Rails' cache store in database 4.
cache = ActiveSupport::Cache::RedisCacheStore.new(url: "redis://#{host}:#{port}/4", namespace: "app")
cache.clear
check(cache.write("user:1", { "name" => "ada" }, expires_in: 60), "write")
check(cache.read("user:1") == { "name" => "ada" }, "read")
check(cache.fetch("computed") { "made" } == "made", "fetch computes")
check(cache.fetch("computed") { "again" } == "made", "fetch reads")
cache.write_multi({ "a" => 1, "b" => 2 }, expires_in: 120)
many = cache.read_multi("a", "b", "missing")
check(many == { "a" => 1, "b" => 2 }, "read_multi #{many}")
check(cache.increment("hits") == 1 && cache.increment("hits", 5) == 6, "increment")
check(cache.decrement("hits", 2) == 4, "decrement")
check(cache.exist?("a") && !cache.exist?("missing"), "exist?")
check(cache.delete("a") && !cache.exist?("a"), "delete")
cache.delete_matched("b*")
check(!cache.exist?("b"), "delete_matched")
puts "rails cache: read_multi #{many.sort.to_h}, hits #{cache.read("hits", raw: true)}"
cache.clear
check(cache.read("user:1").nil?, "clear")
puts "ruby: all checks passed"
