package redisstore

// Kill stops s as if its process were killed (kill -9): queued writes are
// lost and its leases are no longer renewed, so they run out.
func Kill(s *Store) { s.kill() }
